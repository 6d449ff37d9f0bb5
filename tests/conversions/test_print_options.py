"""Printability report and solid/hollow options on real conversions: a pydicom phantom with a
known 1.0 mm wall around a known void, and the head CT's skull hollowed to 2 mm, checked by
admesh and PrusaSlicer (as a resin print: hollowing is for resin)."""

import json
import re
import subprocess
import zipfile

import numpy as np
import pytest

from dicomstl.errors import ConversionError
from dicomstl.settings import PrintTargets
from dicomstl_cli.main import main
from gpu_worker.pipeline import Options, convert
from tests.conftest import require_tool
from tests.dicom_factory import lps_grid, sphere_hu, write_series

pytestmark = pytest.mark.xdist_group("printability")
TEXT = {"capture_output": True, "text": True, "errors": "replace"}
VOXEL_MM = 0.5
#: the phantom's shell: 9 to 10 mm from its centre, so a 1.0 mm wall around a closed void
OUTER_MM, INNER_MM = 10.0, 9.0
VOID_MM3 = 4 / 3 * np.pi * INNER_MM**3


@pytest.fixture(scope="module")
def shell(tmp_path_factory):
    """A spherical shell with a 1.0 mm wall around an internal void, 0.5 mm voxels; the
    level 0 HU lies on both surfaces."""
    n = 52
    origins = [(0.0, 0.0, k * VOXEL_MM) for k in range(n)]
    grid = lps_grid((n, n, n), (1, 0, 0), (0, 1, 0), (VOXEL_MM, VOXEL_MM), origins)
    centre = (12.9, 12.9, 12.9)
    outer = sphere_hu(grid, centre, OUTER_MM, 0.5)
    inner = sphere_hu(grid, centre, INNER_MM, 0.5)
    folder = tmp_path_factory.mktemp("shell") / "series"
    write_series(folder, np.minimum(outer, -inner), spacing_ij=(VOXEL_MM, VOXEL_MM),
                 origins=origins)
    return folder


@pytest.fixture(scope="module")
def ball(tmp_path_factory):
    """A solid ball of radius 10 mm, 0.5 mm voxels."""
    n = 48
    origins = [(0.0, 0.0, k * VOXEL_MM) for k in range(n)]
    grid = lps_grid((n, n, n), (1, 0, 0), (0, 1, 0), (VOXEL_MM, VOXEL_MM), origins)
    folder = tmp_path_factory.mktemp("ball") / "series"
    write_series(folder, sphere_hu(grid, (11.75, 11.75, 11.75), 10.0, 0.5),
                 spacing_ij=(VOXEL_MM, VOXEL_MM), origins=origins)
    return folder


def test_the_report_gives_the_wall_and_the_void_within_one_voxel(shell, tmp_path):
    result = convert([shell], tmp_path / "shell.stl", Options(level=0))
    p = result.as_dict()["printability"]
    assert abs(p["walls"]["min_mm"] - 1.0) <= VOXEL_MM
    assert abs(p["walls"]["p1_mm"] - 1.0) <= VOXEL_MM
    assert p["shells"] == 2 and p["voids"]["count"] == 1
    assert p["voids"]["largest_mm3"][0] == pytest.approx(VOID_MM3, rel=0.01)
    true_volume = 4 / 3 * np.pi * (OUTER_MM**3 - INNER_MM**3) / 1000
    assert p["material"]["volume_cm3"] == pytest.approx(true_volume, rel=0.01)
    assert p["material"]["grams"]["pla"] == pytest.approx(true_volume * 1.24, abs=0.1)
    assert [b["fit"] for b in p["beds"]] == ["fits"] * 3
    assert p["solid_or_hollow"] is None


def test_fill_cavities_removes_the_void(shell, tmp_path):
    hollow = convert([shell], tmp_path / "a.stl", Options(level=0))
    filled = convert([shell], tmp_path / "b.stl", Options(level=0, fill_cavities=True))
    p = filled.as_dict()["printability"]
    assert filled.report.parts == 1 and p["shells"] == 1 and p["voids"]["count"] == 0
    grown_mm3 = (filled.report.volume_cm3 - hollow.report.volume_cm3) * 1000
    assert grown_mm3 == pytest.approx(VOID_MM3, rel=0.01)
    assert p["solid_or_hollow"]["filled_mm3"] == pytest.approx(VOID_MM3, rel=0.01)
    assert p["walls"]["min_mm"] == pytest.approx(2 * OUTER_MM, abs=2 * VOXEL_MM)


def test_hollow_ball_with_a_drain_hole(ball, tmp_path):
    solid = convert([ball], tmp_path / "s.stl", Options(level=0))
    closed = convert([ball], tmp_path / "c.stl", Options(level=0, hollow_mm=2.0))
    c = closed.as_dict()["printability"]
    assert closed.report.watertight and c["shells"] == 2 and c["voids"]["count"] == 1
    cavity_mm3 = c["solid_or_hollow"]["cavity_mm3"]
    assert cavity_mm3 == pytest.approx(4 / 3 * np.pi * 8.0**3, rel=0.12)  # ±0.25 mm
    assert closed.report.volume_cm3 * 1000 == pytest.approx(
        solid.report.volume_cm3 * 1000 - cavity_mm3, rel=0.03)
    drained = convert([ball], tmp_path / "d.stl",
                      Options(level=0, hollow_mm=2.0, drain_holes=1, drain_hole_mm=3.0))
    d = drained.as_dict()["printability"]
    assert drained.report.watertight and d["shells"] == 1 and d["voids"]["count"] == 0
    (hole,) = d["solid_or_hollow"]["drain_holes_lps_mm"]
    assert hole[2] < 11.75 - 6.0  # at the bottom of the cavity (-S)


def test_option_errors_are_clear(ball, tmp_path):
    with pytest.raises(ConversionError, match="leaves no cavity: the model is at most"):
        convert([ball], tmp_path / "x.stl", Options(level=0, hollow_mm=12.0))
    with pytest.raises(ConversionError, match="--drain-holes drains a hollowed model"):
        convert([ball], tmp_path / "x.stl", Options(level=0, drain_holes=2))
    with pytest.raises(ConversionError, match=r"hollow_mm \(--hollow-mm\) cannot be negative"):
        Options(hollow_mm=-1).validate()
    with pytest.raises(ConversionError, match=r"drain_holes \(--drain-holes\) must be from 0"):
        Options(hollow_mm=1, drain_holes=17).validate()


def test_beds_from_the_settings(ball, tmp_path):
    result = convert([ball], tmp_path / "b.stl", Options(level=0),
                     targets=PrintTargets(((30, 30, 10), (10, 30, 30), (10, 10, 10)),
                                          {"pla": 1.0}))
    beds = result.as_dict()["printability"]["beds"]
    assert [b["fit"] for b in beds] == ["scale needed", "scale needed", "scale needed"]
    assert beds[2]["scale"] == pytest.approx(10 / 20.0, abs=0.03)
    assert list(result.as_dict()["printability"]["material"]["grams"]) == ["pla"]


def test_the_command_prints_a_summary_and_writes_the_report(ball, tmp_path, capsys):
    report = tmp_path / "r.json"
    code = main(["convert", str(ball), "-o", str(tmp_path / "m.stl"), "--level", "0",
                 "--hollow-mm", "2", "--drain-holes", "1", "--min-wall-mm", "1.5",
                 "--quiet", "--report", str(report)])
    assert code == 0
    text = capsys.readouterr().out
    assert re.search(r"walls: thinnest [\d.]+ mm", text)
    assert "shells: 1, internal voids: 0" in text and "180x180x180 mm fits" in text
    p = json.loads(report.read_text())["printability"]
    assert p["walls"]["threshold_mm"] == 1.5 and p["shells"] == 1


@pytest.fixture(scope="module")
def skulls(shared_dicom, tmp_path_factory):
    """The bone of the head CT, largest part: solid, and hollowed to 2 mm with 2 drain holes."""
    folder = tmp_path_factory.mktemp("skull")
    src = [shared_dicom / "ct-phantom-head-1mm"]
    solid = convert(src, folder / "solid.stl", Options(preset="bone", keep="largest"))
    hollow = convert(src, folder / "hollow.stl", Options(preset="bone", keep="largest",
                                                           hollow_mm=2.0, drain_holes=2))
    return solid, hollow


def test_the_hollow_skull_keeps_the_shell_volume(skulls):
    solid, hollow = skulls
    changes = hollow.as_dict()["printability"]["solid_or_hollow"]
    assert hollow.report.watertight and changes["cavity_mm3"] > 50_000
    shell_cm3 = solid.report.volume_cm3 - (changes["cavity_mm3"] + changes["holes_mm3"]) / 1000
    assert hollow.report.volume_cm3 == pytest.approx(shell_cm3, rel=0.03)
    assert hollow.report.parts >= 2  # the outside and the closed cavities' inner shells


def test_admesh_and_prusaslicer_accept_the_hollow_skull(skulls, tmp_path):
    admesh = require_tool("admesh")
    slicer = require_tool("prusa-slicer")
    model = skulls[1].output
    text = subprocess.run([admesh, str(model)], **TEXT, check=True, timeout=300).stdout
    for field in ("Degenerate facets", "Edges fixed", "Facets removed", "Facets added",
                  "Facets reversed", "Backwards edges", "Normals fixed"):
        assert re.search(rf"{field}\s*:\s*0\b", text), f"admesh: {field}\n{text}"
    info = subprocess.run([slicer, "--info", str(model)], **TEXT, timeout=300, cwd=tmp_path)
    assert info.returncode == 0 and "manifold = yes" in info.stdout
    volume = float(re.search(r"volume = ([\d.]+)", info.stdout).group(1))
    assert volume == pytest.approx(skulls[1].report.volume_cm3 * 1000, rel=1e-3)
    # a resin (SLA) print without supports on a 250 mm display: sliced into layers
    out = tmp_path / "skull.sl1"
    run = subprocess.run([slicer, "--export-sla", "--printer-technology", "SLA",
                          "--supports-enable=0", "--pad-enable=0",
                          "--bed-shape", "0x0,250x0,250x250,0x250", "--display-width", "250",
                          "--display-height", "250", "--max-print-height", "250",
                          "--output", str(out), str(model)], **TEXT, timeout=600, cwd=tmp_path)
    log = (run.stdout + run.stderr).lower()
    assert run.returncode == 0, log[-3000:]
    for word in ("repaired", "open edges", "auto-repair", "manifold"):
        assert word not in log, f"PrusaSlicer complained about the mesh: {word!r}"
    with zipfile.ZipFile(out) as sl1:
        layers = [n for n in sl1.namelist() if n.endswith(".png")]
    assert len(layers) >= 133 / 0.3 - 1  # 133 mm high, in layers of 0.3 mm at most
