"""The threshold preview: histogram counts, slices in the patient frame (never mirrored),
image sizes, and files that hold nothing but pixels and geometry."""

from __future__ import annotations

import base64
import io
import json
import stat

import numpy as np
import pytest

from gpu_worker import preview
from tests.dicom_factory import PATIENT_ID, PATIENT_NAME, write_series

SHAPE = (20, 24, 28)  # k, j, i


def _values(s: dict) -> np.ndarray:
    v = s["values"]
    return np.frombuffer(base64.b64decode(v["data"]), dtype="<" + {"int16": "i2",
                         "float32": "f4"}[v["dtype"]]).reshape(v["height"], v["width"])


def _marked_series(folder, row_dir, col_dir, normal_sign=1):
    """A CT phantom (-1000 HU) with three 3-voxel markers at +1000 HU, placed in LPS:
    on the axial centre plane at (left, anterior); on the coronal centre plane at (left,
    superior); on the sagittal centre plane at (anterior, superior). Written with the given
    orientation, so that index order and patient order differ."""
    k, j, i = SHAPE
    row_dir, col_dir = np.array(row_dir, float), np.array(col_dir, float)
    normal = np.cross(row_dir, col_dir) * normal_sign
    origins = [tuple(-(row_dir * (i - 1) + col_dir * (j - 1) + normal * (k - 1)) / 2
                     + normal * z) for z in range(k)]
    jj, ii = np.mgrid[:j, :i]
    hu = np.full(SHAPE, -1000, np.int16)
    for z in range(k):
        lps = (np.asarray(origins[z]) + ii[..., None] * row_dir + jj[..., None] * col_dir)
        x, y, zz = lps[..., 0], lps[..., 1], lps[..., 2]
        near = lambda a, b: np.abs(a - b) <= 1.01  # noqa: E731
        hu[z][near(x, 6) & near(y, -6) & near(zz, 0)] = 1000   # axial: left, anterior
        hu[z][near(x, 6) & near(y, 0) & near(zz, 5)] = 1000    # coronal: left, superior
        hu[z][near(x, 0) & near(y, -6) & near(zz, 5)] = 1000   # sagittal: anterior, superior
    return write_series(folder, hu, row_dir=row_dir, col_dir=col_dir, origins=origins)


@pytest.mark.parametrize("row_dir,col_dir,sign", [
    ((1, 0, 0), (0, 1, 0), 1),     # the usual axial: i to the left, j to the back
    ((-1, 0, 0), (0, 1, 0), -1),   # i to the right: an index slice would be mirrored
    ((0, 1, 0), (0, 0, -1), 1),    # sagittal acquisition
    ((1, 0, 0), (0, 0, -1), 1),    # coronal acquisition
])
def test_slices_are_in_the_patient_frame(tmp_path, row_dir, col_dir, sign):
    _marked_series(tmp_path / "s", row_dir, col_dir, sign)
    made = preview.make_preview([tmp_path / "s"]).as_dict()
    by_plane = {s["plane"]: s for s in made["slices"]}
    # (plane) -> (marker is right of centre?, marker is above centre?)
    expected = {"axial": (True, True),       # the patient's left on the right, anterior up
                "coronal": (True, True),     # left on the right, superior up
                "sagittal": (False, True)}   # anterior on the left, superior up
    for plane, (right, up) in expected.items():
        values = _values(by_plane[plane])
        rows, cols = np.nonzero(values > 0)
        assert len(rows), plane
        h, w = values.shape
        assert (cols.mean() > (w - 1) / 2) == right, plane
        assert (rows.mean() < (h - 1) / 2) == up, plane


def test_histogram_counts_equal_numpys():
    rng = np.random.default_rng(1)
    data = rng.integers(-1024, 2000, size=(8, 30, 30)).astype(np.int16)
    edges, counts = preview.histogram(data)
    assert len(counts) <= preview.MAX_BINS and counts.sum() == data.size
    np.testing.assert_array_equal(counts, np.histogram(data, bins=edges)[0])
    assert np.all(np.diff(edges) == np.diff(edges)[0]) and float(np.diff(edges)[0]).is_integer()
    floats = rng.normal(100, 30, size=(5, 20, 20)).astype(np.float32)
    edges, counts = preview.histogram(floats)
    np.testing.assert_array_equal(counts, np.histogram(floats, bins=edges)[0])
    assert counts.sum() == floats.size


def test_png_sizes_levels_and_files(tmp_path):
    from PIL import Image

    _marked_series(tmp_path / "s", (1, 0, 0), (0, 1, 0))
    made = preview.make_preview([tmp_path / "s"])
    folder = tmp_path / "out"
    folder.mkdir()
    written = preview.write(made, folder)
    assert sorted(p.name for p in written) == ["axial.png", "coronal.png", "preview.json",
                                               "sagittal.png"]
    body = json.loads((folder / "preview.json").read_text())
    assert body["units"] == "HU" and body["default_level"] == 300
    assert {p["name"] for p in body["levels"]} == {"bone", "skin", "soft-tissue", "teeth",
                                                    "lung"}
    assert sum(body["histogram"]["counts"]) == np.prod(SHAPE)
    for s in body["slices"]:
        image = Image.open(io.BytesIO((folder / f"{s['plane']}.png").read_bytes()))
        assert image.mode == "L" and image.size == (s["width"], s["height"])
        assert max(image.size) <= preview.IMAGE_SIDE
        assert max(s["values"]["width"], s["values"]["height"]) <= preview.VALUE_GRID
        assert stat.S_IMODE((folder / f"{s['plane']}.png").stat().st_mode) == 0o600
    # square pixels: the axial image's aspect is the volume's (28 x 24 mm)
    axial = body["slices"][0]
    assert axial["plane"] == "axial" and axial["width"] == preview.IMAGE_SIDE  # x is longest
    assert abs(axial["width"] / axial["height"] - 28 / 24) < 0.02
    for path in written:
        raw = path.read_bytes()
        assert PATIENT_NAME.encode() not in raw and PATIENT_ID.encode() not in raw
        assert b"SYNTHETIC" not in raw


def test_mr_has_no_hu_presets(tmp_path):
    rng = np.random.default_rng(2)
    write_series(tmp_path / "mr", rng.integers(0, 800, size=(6, 16, 16)).astype(np.int16),
                 modality="MR")
    body = preview.make_preview([tmp_path / "mr"]).as_dict()
    assert body["units"] == "stored" and body["levels"] == []
