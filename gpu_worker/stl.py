"""Writers: binary STL, ASCII STL and 3MF, all in millimetres (patient LPS coordinates).

Headers and metadata name the program and version only, never patient data.
"""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path
from xml.sax.saxutils import quoteattr

import numba
import numpy as np

from dicomstl import __version__
from dicomstl.options import FORMATS
from gpu_worker.mesh import Mesh

HEADER = f"dicomstl {__version__} binary STL; units mm; patient LPS coordinates".encode()


@numba.njit(parallel=True, cache=True, nogil=True)
def _pack(vertices, faces, out):  # pragma: no cover - compiled
    """Fill ``out`` (F, 12) float32 with normal and three vertices per triangle."""
    for t in numba.prange(faces.shape[0]):
        a = faces[t, 0]
        b = faces[t, 1]
        c = faces[t, 2]
        ux = vertices[b, 0] - vertices[a, 0]
        uy = vertices[b, 1] - vertices[a, 1]
        uz = vertices[b, 2] - vertices[a, 2]
        vx = vertices[c, 0] - vertices[a, 0]
        vy = vertices[c, 1] - vertices[a, 1]
        vz = vertices[c, 2] - vertices[a, 2]
        nx = uy * vz - uz * vy
        ny = uz * vx - ux * vz
        nz = ux * vy - uy * vx
        norm = np.sqrt(nx * nx + ny * ny + nz * nz)
        if norm > 0:
            nx /= norm
            ny /= norm
            nz /= norm
        out[t, 0] = nx
        out[t, 1] = ny
        out[t, 2] = nz
        for s in range(3):
            v = faces[t, s]
            out[t, 3 + 3 * s] = vertices[v, 0]
            out[t, 4 + 3 * s] = vertices[v, 1]
            out[t, 5 + 3 * s] = vertices[v, 2]


def triangle_records(mesh: Mesh) -> np.ndarray:
    """(F, 12) float32: unit normal, then the three vertices of each triangle."""
    out = np.empty((len(mesh.faces), 12), dtype=np.float32)
    _pack(np.ascontiguousarray(mesh.vertices, dtype=np.float32),
          np.ascontiguousarray(mesh.faces, dtype=np.int32), out)
    return out


_RECORD = np.dtype([("r", "<f4", (12,)), ("attr", "<u2")])  # 50 bytes, packed


def stl_header(n_triangles: int) -> np.ndarray:
    """The first 84 bytes of a binary STL: the 80-byte header and the uint32 triangle count."""
    text = HEADER.ljust(80, b" ")[:80] + np.uint32(n_triangles).astype("<u4").tobytes()
    return np.frombuffer(text, dtype=np.uint8)


def binary_stl_bytes(mesh: Mesh) -> np.ndarray:
    """A binary STL as one uint8 buffer: 80-byte header, uint32 count, 50 bytes per triangle
    (little endian). The triangles are packed in place, with no intermediate copy."""
    n = len(mesh.faces)
    buf = np.zeros(84 + _RECORD.itemsize * n, dtype=np.uint8)
    buf[:84] = stl_header(n)
    _pack(np.ascontiguousarray(mesh.vertices, dtype=np.float32),
          np.ascontiguousarray(mesh.faces, dtype=np.int32), buf[84:].view(_RECORD)["r"])
    return buf


def ascii_stl_bytes(mesh: Mesh) -> bytes:
    """An ASCII STL (larger and slower than binary; for tools that need text)."""
    records = triangle_records(mesh).astype(np.float64)
    buf = io.StringIO()
    buf.write("solid dicomstl\n")
    fmt = ("facet normal %.6e %.6e %.6e\n outer loop\n  vertex %.6e %.6e %.6e\n"
           "  vertex %.6e %.6e %.6e\n  vertex %.6e %.6e %.6e\n endloop\nendfacet")
    np.savetxt(buf, records, fmt=fmt)
    buf.write("endsolid dicomstl\n")
    return buf.getvalue().encode("ascii")


_CONTENT_TYPES = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
    '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.'
    'relationships+xml"/><Default Extension="model" ContentType="application/vnd.ms-package.'
    '3dmanufacturing-3dmodel+xml"/></Types>')
_RELS = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
    '<Relationship Target="/3D/3dmodel.model" Id="rel0" '
    'Type="http://schemas.microsoft.com/3dmanufacturing/2013/01/3dmodel"/></Relationships>')


_MODEL_START = ('<?xml version="1.0" encoding="UTF-8"?>\n<model unit="millimeter" '
                'xml:lang="en-US" xmlns="http://schemas.microsoft.com/3dmanufacturing/core/'
                f'2015/02"><metadata name="Application">dicomstl {__version__}</metadata>'
                '<resources>')


def _mesh_xml(model: io.StringIO, mesh: Mesh) -> None:
    """A 3MF ``<mesh>`` element's vertices (mm) and triangles."""
    model.write("<mesh><vertices>\n")
    np.savetxt(model, mesh.vertices.astype(np.float64), fmt='<vertex x="%.5f" y="%.5f" z="%.5f"/>')
    model.write("</vertices><triangles>\n")
    np.savetxt(model, mesh.faces, fmt='<triangle v1="%d" v2="%d" v3="%d"/>')
    model.write("</triangles></mesh>")


def _package(model: str) -> bytes:
    """The 3MF zip package around a model part."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("[Content_Types].xml", _CONTENT_TYPES)
        z.writestr("_rels/.rels", _RELS)
        z.writestr("3D/3dmodel.model", model)
    return out.getvalue()


def threemf_bytes(mesh: Mesh) -> bytes:
    """A 3MF package (3MF Core Specification 1.x) with unit="millimeter"."""
    model = io.StringIO()
    model.write(_MODEL_START + '<object id="1" type="model">')
    _mesh_xml(model, mesh)
    model.write('</object></resources><build><item objectid="1"/></build></model>\n')
    return _package(model.getvalue())


def threemf_parts_bytes(parts: list[tuple[str, str, Mesh]]) -> bytes:
    """A 3MF package of several objects, one per (name, colour "#rrggbb", mesh), in mm: each a
    named object of the build with its colour as a base material (one ``<basematerials>``
    group, one ``<base>`` per object), so slicers open them as separate named parts."""
    model = io.StringIO()
    model.write(_MODEL_START + '<basematerials id="1">')
    for name, color, _mesh in parts:
        model.write(f"<base name={quoteattr(name)} displaycolor="
                    f"{quoteattr(color.upper() + 'FF')}/>")
    model.write("</basematerials>")
    for index, (name, _color, mesh) in enumerate(parts):
        model.write(f'<object id="{index + 2}" type="model" name={quoteattr(name)} pid="1" '
                    f'pindex="{index}">')
        _mesh_xml(model, mesh)
        model.write("</object>")
    model.write("</resources><build>" + "".join(
        f'<item objectid="{index + 2}"/>' for index in range(len(parts)))
        + "</build></model>\n")
    return _package(model.getvalue())


def stl_zip_bytes(parts: list[tuple[str, Mesh]], fmt: str = "stl") -> bytes:
    """A zip of one STL (binary, or ASCII for ``stl-ascii``) per (name, mesh), ``NAME.stl``."""
    pack = ascii_stl_bytes if fmt == "stl-ascii" else binary_stl_bytes
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for name, mesh in parts:
            z.writestr(f"{name}.stl", memoryview(pack(mesh)).tobytes())
    return out.getvalue()


def write_mesh(mesh: Mesh, path: str | Path, fmt: str = "stl") -> int:
    """Write a mesh in one of FORMATS with a single write; returns the bytes written.

    The file appears whole or not at all: it is written beside the target, then renamed.
    """
    writers = {"stl": binary_stl_bytes, "stl-ascii": ascii_stl_bytes, "3mf": threemf_bytes}
    if fmt not in writers:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    return write_bytes(writers[fmt](mesh), path)


def write_bytes(data, path: str | Path) -> int:
    """Write a finished file's bytes with one write; it appears whole or not at all (written
    beside the target, then renamed). Returns the bytes written."""
    data = memoryview(data)
    path = Path(path)
    partial = path.with_name(path.name + ".part")
    try:
        partial.write_bytes(data)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return data.nbytes
