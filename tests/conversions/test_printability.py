"""Real consumers of our output: admesh and PrusaSlicer's command line."""

import re
import subprocess

import pytest

from gpu_worker.pipeline import Options, convert
from tests.conftest import require_tool

pytestmark = pytest.mark.xdist_group("printability")
TEXT = {"capture_output": True, "text": True, "errors": "replace"}


@pytest.fixture(scope="module")
def bone_model(shared_dicom, tmp_path_factory):
    """The bone of ct-phantom-head-1mm, largest part, decimated to about 300k triangles."""
    out = tmp_path_factory.mktemp("print") / "bone.stl"
    result = convert([shared_dicom / "ct-phantom-head-1mm"], out,
                     Options(preset="bone", keep="largest", max_triangles=300_000))
    assert result.report.watertight
    assert 290_000 <= result.report.triangles <= 300_000
    return out


def test_admesh_finds_nothing_to_repair(bone_model):
    admesh = require_tool("admesh")
    text = subprocess.run([admesh, str(bone_model)], **TEXT,
                          check=True, timeout=300).stdout
    for field in ("Degenerate facets", "Edges fixed", "Facets removed", "Facets added",
                  "Facets reversed", "Backwards edges", "Normals fixed"):
        match = re.search(rf"{field}\s*:\s*(\d+)", text)
        assert match, f"admesh did not report {field}:\n{text}"
        assert int(match.group(1)) == 0, f"admesh: {field} = {match.group(1)}"


def test_prusaslicer_reports_a_manifold_mesh_and_slices_it(bone_model, tmp_path):
    slicer = require_tool("prusa-slicer")
    info = subprocess.run([slicer, "--info", str(bone_model)], **TEXT,
                          timeout=300, cwd=tmp_path)
    assert info.returncode == 0, info.stderr[-2000:]
    assert "manifold = yes" in info.stdout
    gcode = tmp_path / "bone.gcode"
    run = subprocess.run([slicer, "--export-gcode", "--output", str(gcode), str(bone_model)],
                         **TEXT, timeout=900, cwd=tmp_path)
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-3000:]
    assert gcode.stat().st_size > 1_000_000
    lowered = log.lower()
    for word in ("repaired", "manifold", "open edges", "errors", "auto-repair"):
        assert word not in lowered, f"PrusaSlicer complained about the mesh: {word!r}"
    assert ";LAYER_CHANGE" in gcode.read_text(errors="replace")[:5_000_000]


def test_prusaslicer_reads_our_3mf_in_millimetres(shared_dicom, tmp_path):
    slicer = require_tool("prusa-slicer")
    out = tmp_path / "tilt.3mf"
    result = convert([shared_dicom / "ct-phantom-tilt-neg"], out,
                     Options(preset="bone", keep="largest", max_triangles=20_000, format="3mf"))
    info = subprocess.run([slicer, "--info", str(out)], **TEXT,
                          timeout=300, cwd=tmp_path)
    assert info.returncode == 0 and "manifold = yes" in info.stdout
    size_x = float(re.search(r"size_x = ([\d.]+)", info.stdout).group(1))
    assert size_x == pytest.approx(result.report.size_mm[0], rel=1e-3)
