"""Writers: read back what we write, with independent readers."""

import io
import struct
import zipfile
from xml.etree import ElementTree

import numpy as np
import pytest
import trimesh

from gpu_worker.mesh import Mesh
from gpu_worker.stl import write_mesh


@pytest.fixture
def tetra():
    v = np.array([[0, 0, 0], [10, 0, 0], [0, 20, 0], [0, 0, 30]], np.float32) + 100
    f = np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]], np.int32)
    return Mesh(v, f)


def test_binary_stl_layout_normals_and_header(tetra, tmp_path):
    path = tmp_path / "t.stl"
    n = write_mesh(tetra, path, "stl")
    raw = path.read_bytes()
    assert n == len(raw) == 84 + 50 * 4
    assert raw[:8] == b"dicomstl" and b"mm" in raw[:80]
    assert struct.unpack("<I", raw[80:84])[0] == 4
    rec = np.frombuffer(raw[84:], dtype=np.dtype([("r", "<f4", (12,)), ("a", "<u2")]))
    np.testing.assert_allclose(rec["r"][:, 3:].reshape(4, 3, 3), tetra.vertices[tetra.faces])
    normals = rec["r"][:, :3]
    np.testing.assert_allclose(np.linalg.norm(normals, axis=1), 1, rtol=1e-6)
    # outward: each normal points away from the centroid
    centroid = tetra.vertices.mean(axis=0)
    face_centres = tetra.vertices[tetra.faces].mean(axis=1)
    assert ((face_centres - centroid) * normals).sum(axis=1).min() > 0
    loaded = trimesh.load(path)
    assert loaded.is_watertight and loaded.volume == pytest.approx(10 * 20 * 30 / 6, rel=1e-5)


def test_ascii_stl_reads_back(tetra, tmp_path):
    path = tmp_path / "t.stl"
    write_mesh(tetra, path, "stl-ascii")
    assert path.read_text().startswith("solid dicomstl")
    loaded = trimesh.load(path)
    assert len(loaded.faces) == 4 and loaded.volume == pytest.approx(1000, rel=1e-5)


def test_3mf_states_millimetres_and_holds_the_mesh(tetra, tmp_path):
    path = tmp_path / "t.3mf"
    write_mesh(tetra, path, "3mf")
    with zipfile.ZipFile(path) as z:
        assert {"[Content_Types].xml", "_rels/.rels", "3D/3dmodel.model"} <= set(z.namelist())
        root = ElementTree.fromstring(z.read("3D/3dmodel.model"))
    assert root.get("unit") == "millimeter"
    ns = {"m": "http://schemas.microsoft.com/3dmanufacturing/core/2015/02"}
    verts = root.findall(".//m:vertex", ns)
    tris = root.findall(".//m:triangle", ns)
    assert len(verts) == 4 and len(tris) == 4
    assert float(verts[1].get("x")) == pytest.approx(110)
    assert [int(tris[0].get(k)) for k in ("v1", "v2", "v3")] == [0, 2, 1]


def test_unknown_format_is_refused(tetra, tmp_path):
    with pytest.raises(ValueError, match="unknown format"):
        write_mesh(tetra, tmp_path / "x", "obj")


def test_3mf_of_several_named_coloured_objects(tetra, tmp_path):
    from gpu_worker.stl import threemf_parts_bytes, write_bytes

    moved = Mesh(tetra.vertices + 50, tetra.faces)
    path = tmp_path / "parts.3mf"
    write_bytes(threemf_parts_bytes([("bone", "#e8dcc0", tetra), ("skin & co", "#d99c7a", moved)]),
                path)
    ns = {"m": "http://schemas.microsoft.com/3dmanufacturing/core/2015/02"}
    with zipfile.ZipFile(path) as z:
        root = ElementTree.fromstring(z.read("3D/3dmodel.model"))
    assert root.get("unit") == "millimeter"
    bases = root.findall("m:resources/m:basematerials/m:base", ns)
    assert [(b.get("name"), b.get("displaycolor")) for b in bases] == [
        ("bone", "#E8DCC0FF"), ("skin & co", "#D99C7AFF")]
    group = root.find("m:resources/m:basematerials", ns).get("id")
    objects = root.findall("m:resources/m:object", ns)
    assert [(o.get("name"), o.get("pid"), o.get("pindex")) for o in objects] == [
        ("bone", group, "0"), ("skin & co", group, "1")]
    assert [i.get("objectid") for i in root.findall("m:build/m:item", ns)] == [
        o.get("id") for o in objects]
    for obj, mesh in zip(objects, (tetra, moved), strict=True):
        vertices = [[float(v.get(a)) for a in "xyz"]
                    for v in obj.findall("m:mesh/m:vertices/m:vertex", ns)]
        faces = [[int(t.get(a)) for a in ("v1", "v2", "v3")]
                 for t in obj.findall("m:mesh/m:triangles/m:triangle", ns)]
        np.testing.assert_allclose(vertices, mesh.vertices, atol=1e-5)
        assert faces == mesh.faces.tolist()


def test_zip_of_one_stl_per_segment(tetra, tmp_path):
    from gpu_worker.stl import binary_stl_bytes, stl_zip_bytes

    with zipfile.ZipFile(io.BytesIO(stl_zip_bytes([("a", tetra), ("b", tetra)]))
                         ) as z:
        assert z.namelist() == ["a.stl", "b.stl"]
        assert z.read("a.stl") == binary_stl_bytes(tetra).tobytes()
    with zipfile.ZipFile(io.BytesIO(
            stl_zip_bytes([("a", tetra)], "stl-ascii"))) as z:
        assert z.read("a.stl").startswith(b"solid dicomstl")
