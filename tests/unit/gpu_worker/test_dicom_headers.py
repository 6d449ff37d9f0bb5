"""Which files hold images, and what their headers say: non-DICOM files and objects without
an image are counted, files without a preamble or File Meta are read, enhanced multi-frame
geometry comes from the functional groups."""

import signal
import struct
import tempfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.data import get_testdata_file, get_testdata_files
from pydicom.datadict import dictionary_VR, tag_for_keyword

from dicomstl.errors import ArchiveError, NoImagesError
from gpu_worker import dicom_headers
from gpu_worker.sources import Source, collect_sources
from tests.dicom_factory import write_series
from tests.unit.gpu_worker.reading import load, ramp


def test_non_dicom_files_are_skipped_and_counted(tmp_path):
    write_series(tmp_path, ramp())
    (tmp_path / "README.txt").write_text("not dicom")
    decoded, _, found = load(tmp_path)
    assert found.not_dicom == 1 and decoded.pixels.shape[0] == 6


def test_no_images_error_counts_what_was_found(tmp_path):
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(NoImagesError, match="1 not readable as DICOM"):
        load(tmp_path)
    with pytest.raises(NoImagesError, match="without a placeable image"):
        load(get_testdata_file("rtplan.dcm"))


def test_files_without_preamble_or_file_meta_are_read(tmp_path):
    reference = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    for z in range(2):
        ds = pydicom.dcmread(get_testdata_file("MR_small_implicit.dcm"))
        ds.ImagePositionPatient = [0, 0, z]
        del ds.file_meta
        ds.preamble = None
        pydicom.dcmwrite(tmp_path / f"s{z}", ds, implicit_vr=True, little_endian=True,
                         enforce_file_format=False)
    assert (tmp_path / "s0").read_bytes()[128:132] != b"DICM"
    decoded, _, _ = load(tmp_path)
    np.testing.assert_array_equal(decoded.pixels[1], reference.pixel_array)


def test_real_broken_files_give_clear_errors(shared_dicom):
    broken = shared_dicom / "broken"
    with pytest.raises(NoImagesError, match="not readable as DICOM"):
        load(broken / "garbage-after-preamble.dcm")


def test_enhanced_multiframe_uses_functional_groups(shared_dicom):
    decoded, _stacks, _ = load(shared_dicom / "mr-enhanced-sag")
    assert decoded.pixels.shape == (63, 86, 86)
    g = decoded.geometry
    np.testing.assert_allclose(g.row_dir, [0, 1, 0])
    np.testing.assert_allclose(g.col_dir, [0, 0, -1])
    np.testing.assert_allclose(np.abs(g.slice_spacings), 2.2, atol=1e-3)
    np.testing.assert_allclose(g.spacing_ij, (2.23256, 2.23256))


# --- The fast header reader: the same Frames and counts as pydicom, on every file ----------

#: pydicom warns about the invalid values these tests write on purpose
_INVALID_VALUES_WARN = pytest.mark.filterwarnings("ignore::UserWarning")


def _pydicom_scan(sources):
    """What scan gave before the fast reader: pydicom's dcmread for every file."""
    return dicom_headers.scan(sources, fast=False)


def _outcome(fn, sources):
    """Frames (as repr, so NaN equals NaN) and counts, or the exception's type."""
    try:
        result = fn(sources)
    except Exception as exc:
        return type(exc)
    return [repr(f) for f in result.frames], result.not_dicom, result.not_image


def assert_scan_matches_pydicom(sources) -> None:
    assert _outcome(dicom_headers.scan, sources) == _outcome(_pydicom_scan, sources)


def _fast(path) -> bool:
    """Whether the fast reader (not pydicom) gives this file's frames."""
    return dicom_headers._fast_frames(Source(Path(path).name, path=Path(path)), 0) is not None


def test_fast_reader_matches_pydicom_on_every_real_file(shared_dicom):
    files = sorted(p for p in shared_dicom.rglob("*") if p.is_file() and p.suffix != ".md")
    plain = [Source(p.name, path=p) for p in files if p.suffix != ".zip"]
    assert_scan_matches_pydicom(plain)
    for archive in (p for p in files if p.suffix == ".zip"):
        try:
            members = collect_sources([archive])
        except ArchiveError:
            continue  # zip-slip and zip-bomb are refused before any header is read
        assert_scan_matches_pydicom(members)
    fast = {p.relative_to(shared_dicom).parts[0] for p in files if _fast(p)}
    assert {"ct-phantom-head-1mm", "ct-session-mixed", "mr-epi-axial-4d"} <= fast
    assert sum(_fast(p) for p in (shared_dicom / "ct-phantom-head-1mm").iterdir()) == 140


def test_fast_reader_matches_pydicom_on_pydicom_test_files():
    files = sorted(Path(f) for f in get_testdata_files())
    assert len(files) > 100
    assert_scan_matches_pydicom([Source(p.name, path=p) for p in files])
    assert sum(_fast(p) for p in files) >= 20  # e.g. CT_small, MR_small, MR_small_implicit


def test_fast_reader_reads_written_series_and_datasets_stay_available(tmp_path):
    write_series(tmp_path, ramp())
    sources = collect_sources([tmp_path])
    assert all(_fast(s.path) for s in sources)
    assert_scan_matches_pydicom(sources)
    found = dicom_headers.scan(sources)
    assert len(found.datasets) == len(sources)
    ds = found.datasets[found.frames[0].source]  # read with pydicom when asked for
    assert isinstance(ds, pydicom.Dataset) and int(ds.Rows) == found.frames[0].rows
    assert [d is not None for d in found.datasets[:2]] == [True, True]
    decoded, _, _ = load(tmp_path)
    np.testing.assert_array_equal(decoded.pixels[:, 0, 0] + decoded.intercepts, ramp()[:, 0, 0])


# A Part 10 file written byte by byte, so that values and encodings can be anything.
_LONG_VR = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}
_IMPLICIT, _EXPLICIT = "1.2.840.10008.1.2", "1.2.840.10008.1.2.1"


def _tag(keyword: str) -> int:
    return tag_for_keyword(keyword)


def element(tag: int, vr: str, value: bytes, implicit: bool = False,
            length: int | None = None) -> bytes:
    n = len(value) if length is None else length
    group, elem = tag >> 16, tag & 0xFFFF
    if implicit:
        return struct.pack("<HHL", group, elem, n) + value
    if vr in _LONG_VR:
        return struct.pack("<HH2sHL", group, elem, vr.encode("latin-1"), 0, n) + value
    return struct.pack("<HH2sH", group, elem, vr.encode("latin-1"), n) + value


def _even(value: bytes, pad: bytes = b" ") -> bytes:
    return value + pad if len(value) % 2 else value


def part10(dataset: bytes, syntax: bytes = _EXPLICIT.encode(), syntax_vr: str = "UI",
           group_length: bytes | None = None) -> bytes:
    meta = (element(0x00020001, "OB", b"\0\1") + element(0x00020002, "UI", b"1.2.3\0")
            + element(0x00020003, "UI", b"1.2.3.4\0") + element(0x00020010, syntax_vr, syntax))
    length = struct.pack("<L", len(meta)) if group_length is None else group_length
    return b"\0" * 128 + b"DICM" + element(0x00020000, "UL", length) + meta + dataset


def slice_values(z: int = 0, rows: int = 4, cols: int = 3) -> dict[str, tuple[str, bytes]]:
    """keyword -> (VR, raw value) of a small CT slice; PixelData last."""
    return {
        "SpecificCharacterSet": ("CS", b"ISO_IR 100"),
        "SOPClassUID": ("UI", b"1.2.840.10008.5.1.4.1.1.2\0"),
        "Modality": ("CS", b"CT"),
        "SeriesDescription": ("LO", b"HEAD "),
        "AcquisitionTime": ("TM", b"101010.5 "),
        "TriggerTime": ("DS", b"0 "),
        "SeriesInstanceUID": ("UI", b"1.2.826.0.1.3680043.8.498.1\0"),
        "AcquisitionNumber": ("IS", b"1 "),
        "InstanceNumber": ("IS", b"%d" % (z + 1) if z > 8 else b"%d " % (z + 1)),
        "ImagePositionPatient": ("DS", _even(b"-10.5\\20\\%d" % z)),
        "ImageOrientationPatient": ("DS", b"1\\0\\0\\0\\1\\0 "),
        "TemporalPositionIdentifier": ("IS", b"1 "),
        "SamplesPerPixel": ("US", struct.pack("<H", 1)),
        "PhotometricInterpretation": ("CS", b"MONOCHROME2 "),
        "Rows": ("US", struct.pack("<H", rows)),
        "Columns": ("US", struct.pack("<H", cols)),
        "PixelSpacing": ("DS", b"0.5\\0.75"),
        "BitsAllocated": ("US", struct.pack("<H", 16)),
        "BitsStored": ("US", struct.pack("<H", 12)),
        "HighBit": ("US", struct.pack("<H", 11)),
        "PixelRepresentation": ("US", struct.pack("<H", 1)),
        "RescaleIntercept": ("DS", b"-1024 "),
        "RescaleSlope": ("DS", b"1 "),
        "PixelData": ("OW", bytes(range(2 * rows * cols))),
    }


def encode(values: dict[str, tuple[str, bytes]], implicit: bool = False,
           extra: bytes = b"", syntax: bytes | None = None) -> bytes:
    """A whole file; ``extra`` (encoded elements) goes before the pixel data."""
    body = b"".join(element(_tag(k), vr, v, implicit) for k, (vr, v) in values.items()
                    if k != "PixelData")
    if "PixelData" in values:
        vr, v = values["PixelData"]
        body += extra + element(_tag("PixelData"), vr, v, implicit)
    syntax = syntax or (_IMPLICIT if implicit else _EXPLICIT).encode()
    return part10(body, _even(syntax, b"\0"))


def _scan_bytes(folder: Path, files: list[bytes]):
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.iterdir():
        old.unlink()
    sources = []
    for n, data in enumerate(files):
        path = folder / f"f{n:04d}"
        path.write_bytes(data)
        sources.append(Source(path.name, path=path))
    return sources


@pytest.mark.parametrize("implicit", [False, True])
def test_crafted_series_is_read_fast_and_alike(tmp_path, implicit):
    sources = _scan_bytes(tmp_path, [encode(slice_values(z), implicit) for z in range(12)])
    assert all(_fast(s.path) for s in sources)
    assert_scan_matches_pydicom(sources)
    decoded, _, _ = load(tmp_path)
    assert decoded.pixels.shape == (12, 4, 3)


def _sequence(implicit: bool, *, item_undefined: bool, delimiter: bool = True,
              tag: int = 0x00081140, vr: str = "SQ") -> bytes:
    """An undefined-length sequence of one item (a nested, undefined-length sequence in it)."""
    inner = element(0x00081150, "UI", b"1.2.3\0", implicit) + element(
        0x00081155, "UI", b"1.2.3.4\0", implicit)
    nested = (element(0x00081199, "SQ", b"", implicit, length=0xFFFFFFFF)
              + struct.pack("<HHL", 0xFFFE, 0xE000, len(inner)) + inner
              + struct.pack("<HHL", 0xFFFE, 0xE0DD, 0))
    body = inner + nested
    item = (struct.pack("<HHL", 0xFFFE, 0xE000, 0xFFFFFFFF) + body
            + struct.pack("<HHL", 0xFFFE, 0xE00D, 0)) if item_undefined else (
        struct.pack("<HHL", 0xFFFE, 0xE000, len(body)) + body)
    end = struct.pack("<HHL", 0xFFFE, 0xE0DD, 0) if delimiter else b""
    return element(tag, vr, b"", implicit, length=0xFFFFFFFF) + item + end


def _variants(implicit: bool) -> list[bytes]:
    """Odd and hostile versions of one slice: each must read as pydicom reads it."""
    base = slice_values()
    good = encode(base, implicit)
    out = [good, good[:-1] + b"\0\0\0", good + b"\0" * 3, good + element(0xFFFCFFFC, "OB", b"\0\0"),
           good + element(_tag("Rows"), "US", b"\5\0", implicit),  # pydicom keeps the last
           good + b"\x10\x00\x10\x00OB\0\0"]  # a cut element header after the pixels
    out += [good[:n] for n in (0, 1, 100, 128, 131, 132, 140, 150, 200) if n < len(good)]
    out += [good[:n] for n in range(len(good) - 40, len(good), 3)]  # cut pixel data, lengths
    out += [b"\0" * 128 + good[128:].replace(b"DICM", b"DICN", 1), good[128:],
            good.replace(b"\x10\x00UI", b"\x10\x00UN", 1)]  # transfer syntax as UN
    body = good[good.index(b"\x08\x00\x05\x00"):]  # the dataset after the file meta
    syntax = _even((_IMPLICIT if implicit else _EXPLICIT).encode(), b"\0")
    out += [part10(body, syntax, group_length=b"\4\0"), part10(body, syntax, group_length=b""),
            part10(body, syntax, group_length=b"\4\0\0\0\4\0\0\0"),
            part10(body, syntax, syntax_vr="SH"), part10(body, syntax, syntax_vr="OB"),
            part10(body, syntax, syntax_vr="UN"), part10(body, syntax[:-1]),
            good[:128 + 4] + good[128 + 4 + 12:]]  # no group length: another first element
    dataset_start = good.index(element(_tag("SpecificCharacterSet"), "CS", base[
        "SpecificCharacterSet"][1], implicit))
    command = struct.pack("<HHL", 0, 0x0100, 2) + b"\1\0"  # a command set: implicit VR always
    out.append(good[:dataset_start] + command + good[dataset_start:])
    for syntax in (b"1.2.840.10008.1.2.1\\1.2", b"1.2.840.10008.1.2.2", b"1.2.840.10008.1.2.1.99",
                   b"1.2.840.10008.1.2.4.50", (_EXPLICIT if implicit else _IMPLICIT).encode(),
                   b" 1.2.840.10008.1.2.1", b""):
        out.append(encode(base, implicit, syntax=syntax or b"\0\0"))
    for keyword, (vr, value) in base.items():
        start = good.index(element(_tag(keyword), vr, value, implicit))
        head = 8 if implicit or vr not in _LONG_VR else 12
        at = start + (4 if implicit else 8 if vr in _LONG_VR else 6)
        size = 4 if implicit or vr in _LONG_VR else 2
        for length in {0, 1, len(value) + 1, max(len(value) - 1, 0), 0xFFFF, 0xFFFFFFFF}:
            if length < 256 ** size:
                out.append(good[:at] + length.to_bytes(size, "little") + good[at + size:])
        if not implicit:
            for bad_vr in (b"\0\0", b"ZZ", b"ob", b"UN", b"SS", b"UL", b"OB"):
                out.append(good[:start + 4] + bad_vr + good[start + 6:])
        out.append(good[:start] + good[start + head + len(value):])  # element missing
        out.append(good[:start] + good[start:start + head + len(value)] * 2
                   + good[start + head + len(value):])  # duplicated
    extras = [_sequence(implicit, item_undefined=u, delimiter=d) for u in (False, True)
              for d in (True, False)]
    extras += [_sequence(implicit, item_undefined=True, tag=0x00291010, vr="UN"),  # private
               _sequence(implicit, item_undefined=False, tag=0x00091010, vr="UN"),
               element(0x00091010, "UN", b"\1\2\3\4", implicit, length=0xFFFFFFFF),
               element(0x00280010, "UT", b"", implicit, length=0xFFFFFFFF),
               struct.pack("<HHL", 0xFFFE, 0xE00D, 0),
               element(0x52009229, "SQ", b"", implicit, length=0),  # an (empty) functional group
               _sequence(implicit, item_undefined=True, tag=0x52009229),
               element(0x00091010, "OB", b"\1" * 70000, implicit) if not implicit else b"",
               element(0x00200052, "UI", b"1.2\0" * 20000, implicit) if implicit else b""]
    out += [encode(base, implicit, extra=e) for e in extras]
    for keyword, value in [("SpecificCharacterSet", b"ISO_IR 192"),
                           ("SpecificCharacterSet", b"\\ISO 2022 IR 87"),
                           ("SpecificCharacterSet", b"NOT A CHARSET"),
                           ("SpecificCharacterSet", b""),
                           ("SeriesDescription", "Müller \\ä".encode("latin-1")),
                           ("SeriesDescription", b"\x1b$B\x46\x7c\x1b(B  \0"),
                           ("ImagePositionPatient", b"nan\\inf\\-0 "),
                           ("ImagePositionPatient", b"1\\2"),
                           ("ImageOrientationPatient", b"0\\0\\0\\0\\0\\0 "),
                           ("PixelSpacing", b"0\\1 "), ("PixelSpacing", b" 1e-1\\ 2.5 "),
                           ("InstanceNumber", b"1.5 "), ("InstanceNumber", b"1A"),
                           ("InstanceNumber", b"1\\2 "), ("TriggerTime", b"abc "),
                           ("RescaleSlope", b"1\\2 "), ("RescaleSlope", b" "),
                           ("AcquisitionTime", b"10\\11 "), ("SeriesInstanceUID", b"1.2\\3.4 "),
                           ("Modality", b"CT  \0\0"), ("NumberOfFrames", b"1 "),
                           ("NumberOfFrames", b"2 "), ("SamplesPerPixel", b"\3\0"),
                           ("BitsAllocated", b"\x08\0"), ("BitsAllocated", b"\x20\0"),
                           ("Rows", b"\4\0\4\0")]:
        vr = dictionary_VR(keyword) if keyword != "NumberOfFrames" else "IS"
        changed = {**base, keyword: (vr, value)}
        if keyword == "NumberOfFrames":
            changed = {k: changed[k] for k in sorted(changed, key=_tag)}
        out.append(encode(changed, implicit))
    return out


@_INVALID_VALUES_WARN
@pytest.mark.parametrize("implicit", [False, True])
def test_hostile_headers_fall_back_or_count_as_pydicom_does(tmp_path, implicit):
    variants = _variants(implicit)
    signal.signal(signal.SIGALRM, _too_slow)
    signal.alarm(60)  # a loop that never ends fails here instead of hanging the run
    try:
        for n, data in enumerate(variants):
            sources = _scan_bytes(tmp_path, [data])
            assert _outcome(dicom_headers.scan, sources) == _outcome(_pydicom_scan, sources), n
    finally:
        signal.alarm(0)
    assert sum(_fast(s.path) for s in _scan_bytes(tmp_path, variants)) > 10


@_INVALID_VALUES_WARN
def test_random_byte_damage_falls_back_or_counts_as_pydicom_does(tmp_path):
    rng = np.random.default_rng(7)
    good = [encode(slice_values(), implicit) for implicit in (False, True)]
    damaged = []
    for _ in range(300):
        data = bytearray(good[int(rng.integers(2))])
        for at in rng.integers(128, len(data) - 24, size=int(rng.integers(1, 4))):
            data[at] = int(rng.integers(256))
        damaged.append(bytes(data))
    signal.signal(signal.SIGALRM, _too_slow)
    signal.alarm(60)
    try:
        for start in range(0, len(damaged), 50):
            assert_scan_matches_pydicom(_scan_bytes(tmp_path, damaged[start:start + 50]))
    finally:
        signal.alarm(0)


def _too_slow(*_args):
    raise TimeoutError("reading the headers did not finish")


_NUMBER = st.tuples(st.sampled_from(["", " ", "  "]), st.one_of(
    st.integers(-10**6, 10**6).map(str), st.floats(width=32).map(repr),
    st.text(alphabet=" +-.0123456789eE", max_size=10)), st.sampled_from(["", " "])).map(
    lambda parts: "".join(parts).encode())
_CHARSETS = [None, b"", b"ISO_IR 100", b"ISO_IR 192", b"\\ISO 2022 IR 87", b"GB18030", b"XX"]


def _read_alike(values: dict[str, tuple[str, bytes]], implicit: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        assert_scan_matches_pydicom(_scan_bytes(Path(tmp), [encode(values, implicit)]))


@_INVALID_VALUES_WARN
@settings(max_examples=200, deadline=None)
@given(description=st.one_of(st.binary(max_size=30), st.text(max_size=12).map(str.encode)),
       modality=st.binary(max_size=6), uid=st.binary(max_size=12), time=st.binary(max_size=8),
       charset=st.sampled_from(_CHARSETS), implicit=st.booleans())
def test_any_text_bytes_read_as_pydicom_reads_them(description, modality, uid, time, charset,
                                                   implicit):
    values = slice_values()
    values["SeriesDescription"] = ("LO", _even(description))
    values["Modality"] = ("CS", _even(modality))
    values["SeriesInstanceUID"] = ("UI", _even(uid, b"\0"))
    values["AcquisitionTime"] = ("TM", _even(time))
    if charset is None:
        del values["SpecificCharacterSet"]
    else:
        values["SpecificCharacterSet"] = ("CS", _even(charset))
    _read_alike(values, implicit)


_NUMERIC = {"ImagePositionPatient": 3, "ImageOrientationPatient": 6, "PixelSpacing": 2,
            "InstanceNumber": 1, "AcquisitionNumber": 1, "TemporalPositionIdentifier": 1,
            "TriggerTime": 1, "RescaleSlope": 1, "RescaleIntercept": 1}


@_INVALID_VALUES_WARN
@settings(max_examples=300, deadline=None)
@given(data=st.data(), keyword=st.sampled_from(sorted(_NUMERIC)), implicit=st.booleans())
def test_any_number_bytes_read_as_pydicom_reads_them(data, keyword, implicit):
    """One numeric element at a time gets any plausible (or implausible) numbers."""
    n = _NUMERIC[keyword]
    numbers = data.draw(st.lists(_NUMBER, min_size=max(n - 1, 1), max_size=n + 1))
    values = slice_values()
    values[keyword] = (dictionary_VR(keyword), _even(b"\\".join(numbers)))
    _read_alike(values, implicit)


def test_text_in_a_declared_character_set_reads_as_pydicom_reads_it(tmp_path):
    values = slice_values()
    values["SpecificCharacterSet"] = ("CS", b"ISO_IR 192")
    values["SeriesDescription"] = ("LO", _even("Müller, 頭部".encode()))
    sources = _scan_bytes(tmp_path, [encode(values)])
    assert _fast(sources[0].path)
    assert_scan_matches_pydicom(sources)
    assert dicom_headers.scan(sources).frames[0].description == "Müller, 頭部"
