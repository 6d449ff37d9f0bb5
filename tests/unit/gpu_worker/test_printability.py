"""The printability report: wall thickness, voids, shells, bed fit, material."""

import numpy as np
import pytest

from dicomstl.settings import PrintTargets
from gpu_worker import printability as pr
from gpu_worker.cpu_engine import CpuEngine
from gpu_worker.geometry import Geometry


def geometry(shape, spacing_ij=(0.5, 0.5), slice_mm=0.5):
    return Geometry(np.array([1.0, 0, 0]), np.array([0, 1.0, 0]), spacing_ij,
                    np.array([[0, 0, slice_mm * k] for k in range(shape[0])]))


def report(mask, geom, min_wall_mm=0.8):
    data = np.where(mask, 1000, -1000).astype(np.int16)
    mesh = CpuEngine().iso_surface(data, -0.5, geom)
    mesh_report = CpuEngine().check(mesh)
    return pr.printability(pr.print_mask(mask, geom), mesh, mesh_report, min_wall_mm,
                           PrintTargets())


@pytest.mark.parametrize("voxels", [2, 3, 4, 5, 8])
@pytest.mark.parametrize("axis", [0, 2])
def test_a_plate_measures_its_thickness_within_one_voxel(voxels, axis):
    mask = np.zeros((20, 50, 50), bool)
    box = [slice(3, 17), slice(3, 47), slice(3, 47)]  # 14 x 20 x 20 mm
    box[axis] = slice(5, 5 + voxels)
    mask[tuple(box)] = True
    spacing = (1.0, 0.45, 0.45)
    _ridge, thickness = pr.wall_thickness(mask, spacing)
    true = voxels * spacing[axis]
    assert abs(np.percentile(thickness, 1) - true) <= spacing[axis]
    assert abs(thickness.min() - true) <= spacing[axis]


def test_a_plate_thinner_than_the_threshold_reports_its_area():
    mask = np.zeros((24, 24, 24), bool)
    mask[4:20, 4:20, 10:11] = True  # 0.5 mm thick, 8 x 8 mm
    r = report(mask, geometry(mask.shape))
    assert r.min_wall_mm < 0.8
    assert 2 * 8 * 8 * 0.9 <= r.thin_area_mm2 <= 2 * 8 * 8 * 1.3  # both faces, and the rim
    thick = np.zeros((24, 24, 24), bool)
    thick[4:20, 4:20, 6:16] = True  # 5 mm
    r = report(thick, geometry(thick.shape))
    assert r.thin_area_mm2 == 0 and r.min_wall_mm >= 4.5


def test_voids_shells_and_material():
    mask = np.zeros((30, 30, 30), bool)
    mask[2:28, 2:28, 2:28] = True
    mask[5:9, 5:9, 5:9] = False  # 64 voxels of 0.125 mm^3: 8 mm^3
    mask[15:17, 15:17, 15:17] = False  # 1 mm^3
    r = report(mask, geometry(mask.shape))
    assert r.voids == 2 and r.shells == 3
    assert r.largest_voids_mm3 == [8.0, 1.0] and r.void_total_mm3 == 9.0
    assert r.grams == {"pla": pytest.approx(r.volume_cm3 * 1.24, abs=0.05),
                       "resin": pytest.approx(r.volume_cm3 * 1.10, abs=0.05)}
    d = r.as_dict()
    assert d["voids"]["count"] == 2 and d["walls"]["min_mm"] == r.min_wall_mm
    assert len(d["beds"]) == 3 and d["beds"][0]["fit"] == "fits"


@pytest.mark.parametrize(("size", "bed", "fit", "scale"), [
    ((100, 100, 100), (180, 180, 180), "fits", None),
    ((180, 180, 180), (180, 180, 180), "fits", None),
    ((200, 100, 100), (180, 250, 180), "fits rotated", None),
    ((100, 100, 230), (250, 210, 210), "fits rotated", None),
    ((360, 100, 100), (180, 180, 180), "scale needed", 0.5),
    ((186.8, 138.3, 133.3), (180, 180, 180), "scale needed", 0.963),
])
def test_bed_fit(size, bed, fit, scale):
    assert pr.bed_fit(size, bed) == {"bed_mm": list(bed), "fit": fit, "scale": scale}


def test_an_empty_mask_has_no_walls():
    empty = pr.PrintMask(np.zeros((0, 0, 0), bool), (0, 0, 0), (1.0, 1.0, 1.0), np.eye(4),
                         1.0)
    mask = np.zeros((6, 6, 6), bool)
    mask[2:4, 2:4, 2:4] = True
    geom = geometry(mask.shape)
    data = np.where(mask, 1000, -1000).astype(np.int16)
    mesh = CpuEngine().iso_surface(data, -0.5, geom)
    r = pr.printability(empty, mesh, CpuEngine().check(mesh), 0.8, PrintTargets())
    assert r.min_wall_mm is None and r.voids == 0


def test_the_head_ct_report_is_fast(shared_dicom):
    """The bone of the head CT: about 0.55 s on two cores (the pipeline's
    "printability" stage time in bench/convert.py); 3 s here, as tests share the cores."""
    import time

    from dicomstl.options import Options
    from gpu_worker import decode, series, volume
    from gpu_worker.pipeline import inspect

    found, stacks = inspect([shared_dicom / "ct-phantom-head-1mm"])
    decoded = decode.decode_series(found, series.choose_series(stacks, None), 0)
    vol = volume.to_volume(decoded)
    data, _ = volume.keep_parts(vol.data, 299.5, "largest", 0, vol.geometry.voxel_volume_mm3)
    mesh = CpuEngine().iso_surface(data, 299.5, vol.geometry)
    mesh_report = CpuEngine().check(mesh)
    pm = pr.print_mask(data >= 299.5, vol.geometry)
    best = np.inf
    for _ in range(3):
        start = time.perf_counter()
        r = pr.printability(pm, mesh, mesh_report, Options().min_wall_mm, PrintTargets())
        best = min(best, time.perf_counter() - start)
    assert best < 3.0
    assert r.shells == 2 and r.voids == 1 and 0.3 < r.min_wall_mm < 1.0
