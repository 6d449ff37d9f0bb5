"""A DICOM file's header elements read straight from its bytes, for the common case.

``read_header`` walks the top-level elements of a Part 10 file in Implicit or Explicit VR
Little Endian and keeps the raw elements of the wanted tags, as pydicom's ``dcmread`` with
``specific_tags`` and ``defer_size="64 KB"`` would; values are converted by pydicom's own
converters when asked for, so a ``RawHeader`` answers as that dataset does, several times
faster. Anything less plain (no preamble, another transfer syntax, a command set, an element
of unknown VR, a wanted element deferred, missing or of undefined length, elements after the
pixel data, an unreadable sequence) gives None, and the caller reads the file with pydicom.
Undefined-length sequences are skipped with pydicom's own ``read_sequence``.
"""

from __future__ import annotations

import os
import struct
import warnings
from collections.abc import Collection
from typing import Any

import pydicom
from pydicom import config
from pydicom.charset import convert_encodings, default_encoding
from pydicom.datadict import _dictionary_vr_fast, tag_for_keyword
from pydicom.dataelem import RawDataElement, convert_raw_data_element, empty_value_for_VR
from pydicom.filereader import read_sequence
from pydicom.tag import BaseTag
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32, VR
from pydicom.values import convert_string

#: Values longer than this are deferred by the pydicom read this stands in for ("64 KB").
DEFER_SIZE = 64 * 1024
#: Bytes read at a time: the whole header of most files.
CHUNK = 16 * 1024

_VALID_VR = frozenset(vr.encode() for vr in VR)
_LONG_VR = frozenset(vr.encode() for vr in EXPLICIT_VR_LENGTH_32)
_SYNTAXES = {pydicom.uid.ImplicitVRLittleEndian: True, pydicom.uid.ExplicitVRLittleEndian: False}
_CHARSET = 0x00080005
_PIXEL_DATA = 0x7FE00010
_ITEM = 0xFFFEE000
_ITEM_DELIMITER = 0xFFFEE00D
_UNDEFINED = 0xFFFFFFFF
_TAG = struct.Struct("<HH")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<L")


class _Unusual(Exception):
    """The file needs pydicom's general reader."""


class RawHeader:
    """The wanted elements of one file, with the part of the ``Dataset`` interface the
    header code uses: ``in``, ``get``, keyword attributes, ``get_item``, ``file_meta``,
    ``filename``. Values are converted (once) by pydicom's ``convert_raw_data_element``."""

    def __init__(self, elements: dict[int, RawDataElement], transfer_syntax: str,
                 encoding: str | list[str], filename: str) -> None:
        self._raw = elements
        self._values: dict[int, Any] = {}
        self._encoding = encoding
        self.file_meta = {"TransferSyntaxUID": transfer_syntax}
        self.filename = filename

    def _value(self, tag: int) -> Any:
        if tag not in self._values:
            self._values[tag] = convert_raw_data_element(self._raw[tag],
                                                         encoding=self._encoding).value
        return self._values[tag]

    def __contains__(self, keyword: str) -> bool:
        return tag_for_keyword(keyword) in self._raw

    def get(self, keyword: str, default: Any = None) -> Any:
        tag = tag_for_keyword(keyword)
        return self._value(tag) if tag in self._raw else default

    def __getattr__(self, keyword: str) -> Any:
        if keyword.startswith("_"):
            raise AttributeError(keyword)
        tag = tag_for_keyword(keyword)
        if tag not in self._raw:
            raise AttributeError(keyword)
        return self._value(tag)

    def get_item(self, keyword: str, *, keep_deferred: bool = False) -> RawDataElement | None:
        """The raw element (unconverted), as ``Dataset.get_item`` gives it."""
        element = self._raw.get(tag_for_keyword(keyword))
        if element is not None and element.value is None and not keep_deferred:
            raise _Unusual("a deferred value was asked for")
        return element


class _Window:
    """Reads a file through a window of CHUNK bytes, so skipped values are never read."""

    def __init__(self, fh) -> None:
        self.fh = fh
        self.start = 0
        self.data = b""

    def at(self, pos: int, n: int) -> bytes:
        """Up to ``n`` bytes from ``pos`` (fewer at the end of the file)."""
        offset = pos - self.start
        if offset < 0 or offset + n > len(self.data):
            self.fh.seek(pos)
            self.data = self.fh.read(max(n, CHUNK))
            self.start, offset = pos, 0
        return self.data[offset:offset + n]


def _defaults() -> bool:
    """Whether pydicom's parsing settings are those the reading here mirrors (value
    conversion is pydicom's own, so its settings apply alike)."""
    return (config.settings.reading_validation_mode != config.RAISE
            and config.settings.infer_sq_for_un_vr)


def read_header(path: str | os.PathLike, wanted: Collection[int]) -> RawHeader | None:
    """The wanted elements (tags as ints) of a plain little-endian file, or None (read it
    with pydicom) for anything else."""
    if not _defaults():
        return None
    try:
        with open(path, "rb") as fh, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _read(fh, os.fstat(fh.fileno()).st_size, wanted, os.fspath(path))
    except Exception:  # _Unusual, or anything malformed: pydicom decides what it is
        return None


def _element_head(head: bytes, win: _Window, pos: int,
                  implicit: bool) -> tuple[int, str | None, int, int]:
    """(tag, VR or None, length, value position) of the element at ``pos``, whose first
    8 (or more) bytes are ``head``."""
    group, elem = _TAG.unpack_from(head)
    if implicit:
        return group << 16 | elem, None, _U32.unpack_from(head, 4)[0], pos + 8
    vr = head[4:6]
    if vr not in _VALID_VR:
        raise _Unusual("unknown VR")  # pydicom may switch to implicit VR here
    if vr in _LONG_VR:
        ext = head[8:12] if len(head) >= 12 else win.at(pos + 8, 4)
        return group << 16 | elem, vr.decode(), _U32.unpack(ext)[0], pos + 12
    return group << 16 | elem, vr.decode(), _U16.unpack_from(head, 6)[0], pos + 8


def _read(fh, size: int, wanted: Collection[int], filename: str) -> RawHeader:
    win = _Window(fh)
    if win.at(128, 4) != b"DICM":
        raise _Unusual("no preamble")
    # File Meta Information: explicit VR little endian, up to the first tag of another group
    pos, meta = 132, {}
    while len(head := win.at(pos, 12)) >= 8 and _TAG.unpack_from(head)[0] == 0x0002:
        tag, vr, length, pos = _element_head(head, win, pos, implicit=False)
        if length == _UNDEFINED:
            raise _Unusual("undefined length in the file meta")
        meta[tag] = (vr, length, pos)
        pos += length
    if 0x00020010 not in meta:
        raise _Unusual("no transfer syntax")

    def meta_value(tag: int) -> Any:
        vr, length, at = meta[tag]
        value = win.at(at, length) if length else empty_value_for_VR(vr, raw=True)
        raw = RawDataElement(BaseTag(tag), vr, length, value, at, False, True)
        return convert_raw_data_element(raw).value

    # pydicom converts these while reading (a failure there means "not DICOM")
    for tag in sorted({min(meta), 0x00020000} & meta.keys()):
        meta_value(tag)
    syntax = meta_value(0x00020010)
    if not isinstance(syntax, str) or syntax not in _SYNTAXES:
        raise _Unusual("another transfer syntax")
    implicit = _SYNTAXES[syntax]
    first = win.at(pos, 8)
    if len(first) < 8 or _TAG.unpack_from(first)[0] == 0x0000:
        raise _Unusual("empty dataset, or a command set")
    if (not (0x40 < first[4] < 0x5B and 0x40 < first[5] < 0x5B)) != implicit:
        raise _Unusual("the encoding is not the transfer syntax's")  # pydicom switches
    elements: dict[int, RawDataElement] = {}
    encoding: str | list[str] = default_encoding
    while True:
        if len(head := win.at(pos, 12)) < 8:
            raise _Unusual("no pixel data")
        tag, vr, length, value_pos = _element_head(head, win, pos, implicit)
        if tag == _ITEM_DELIMITER:
            raise _Unusual("an item delimiter at the top level")
        if length == _UNDEFINED:
            if tag in wanted:
                raise _Unusual("a wanted element of undefined length")
            if vr == VR.UN:
                vr = VR.SQ
            if vr is None:
                try:
                    vr = _dictionary_vr_fast(tag)
                except KeyError:
                    vr = VR.SQ if _U32.unpack(win.at(value_pos, 4))[0] == 0xE000FFFE else None
            if vr != VR.SQ:
                raise _Unusual("an undefined-length value that is not a sequence")
            fh.seek(value_pos)
            read_sequence(fh, implicit, True, _UNDEFINED, encoding)
            pos = fh.tell()
            continue
        pos = value_pos + length
        if tag not in wanted and tag != _CHARSET:
            continue
        if tag == _PIXEL_DATA:
            if pos < size:
                raise _Unusual("elements after the pixel data")
            elements[tag] = RawDataElement(BaseTag(tag), vr, length, None, value_pos,
                                           implicit, True)
            break
        if length > DEFER_SIZE and tag != _CHARSET:
            raise _Unusual("a deferred value")
        value = win.at(value_pos, length) if length else empty_value_for_VR(vr, raw=True)
        if tag == _CHARSET:
            encoding = convert_encodings(convert_string(value or b"", True))
        elements[tag] = RawDataElement(BaseTag(tag), vr, length, value, value_pos, implicit,
                                       True)
    if _CHARSET in elements:  # as read_dataset sets the dataset's character set
        encoding = convert_encodings(convert_raw_data_element(elements[_CHARSET]).value)
    return RawHeader(elements, syntax, encoding, filename)
