"""Several segments in one job: bone and skin of the head CT as a two-object 3MF that
PrusaSlicer reads as two named parts with the sizes of our reports; STL segments as a zip;
a band (two-sided range) of soft tissue."""

import io
import re
import struct
import subprocess
import zipfile

import pytest

from dicomstl.errors import EmptySurfaceError
from dicomstl.options import Segment
from gpu_worker.pipeline import Options, convert
from tests.conftest import require_tool

pytestmark = pytest.mark.xdist_group("segments")
TEXT = {"capture_output": True, "text": True, "errors": "replace"}
#: The head CT at half resolution (1 x 0.9 x 2 mm voxels): a few seconds per segment.
HEAD = {"downsample": 2}


@pytest.fixture(scope="module")
def head(shared_dicom):
    return shared_dicom / "ct-phantom-head-1mm"


@pytest.fixture(scope="module")
def bone_and_skin(head, tmp_path_factory):
    out = tmp_path_factory.mktemp("segments") / "head.3mf"
    result = convert([head], out, Options(
        segments=(Segment("bone", preset="bone", color="#eeddcc"), Segment("skin", preset="skin")),
        keep="largest", format="3mf", **HEAD))
    return out, result


def test_each_segment_is_its_own_closed_mesh_with_its_report(bone_and_skin):
    _out, result = bone_and_skin
    bone, skin = result.segments
    assert (bone.name, bone.color, bone.level, skin.name, skin.level) == (
        "bone", "#eeddcc", 300.0, "skin", -300.0)
    assert bone.report.watertight and skin.report.watertight
    # the skin encloses the skull: more volume, a larger box
    assert skin.report.volume_cm3 > 1.5 * bone.report.volume_cm3
    assert all(s >= b for s, b in zip(skin.report.size_mm, bone.report.size_mm, strict=True))
    assert bone.printability is not None and skin.printability is not None
    assert bone.printability.shells == bone.report.parts
    report = result.as_dict()
    assert [s["name"] for s in report["segments"]] == ["bone", "skin"]
    assert report["mesh"]["triangles"] == bone.report.triangles + skin.report.triangles
    assert list(report["segments"][1]["mesh"]["size_mm"]) == list(skin.report.size_mm)


def test_prusaslicer_reads_two_named_parts_of_the_right_sizes(bone_and_skin, tmp_path):
    slicer = require_tool("prusa-slicer")
    out, result = bone_and_skin
    info = subprocess.run([slicer, "--info", str(out)], **TEXT, timeout=300, cwd=tmp_path)
    assert info.returncode == 0, info.stderr[-2000:]
    blocks = info.stdout.split(f"[{out.name}]")[1:]
    assert len(blocks) == 2, info.stdout
    for block, segment in zip(blocks, result.segments, strict=True):
        assert "manifold = yes" in block
        sizes = [float(re.search(rf"size_{a} = ([\d.]+)", block).group(1)) for a in "xyz"]
        assert sizes == pytest.approx(list(segment.report.size_mm), abs=0.1)
        facets = int(re.search(r"number_of_facets = (\d+)", block).group(1))
        assert facets == segment.report.triangles
    # --info does not print names: PrusaSlicer's own 3MF of what it loaded does
    again = tmp_path / "again.3mf"
    run = subprocess.run([slicer, "--export-3mf", "--dont-arrange", "--output", str(again),
                          str(out)], **TEXT, timeout=300, cwd=tmp_path)
    assert run.returncode == 0, (run.stdout + run.stderr)[-2000:]
    with zipfile.ZipFile(again) as z:
        config = z.read("Metadata/Slic3r_PE_model.config").decode()
    names = re.findall(r'<metadata type="object" key="name" value="([^"]*)"/>', config)
    assert names == ["bone", "skin"]


def test_stl_segments_are_a_zip_and_a_band_is_the_range_between_its_levels(head, tmp_path):
    out = tmp_path / "head.zip"
    result = convert([head], out, Options(segments=(
        Segment("above-100", level=-100), Segment("above300", level=300),
        Segment("soft", level=-100, level2=300)), printability=False, **HEAD))
    with zipfile.ZipFile(out) as z:
        assert z.namelist() == ["above-100.stl", "above300.stl", "soft.stl"]
        stls = {name: z.read(name) for name in z.namelist()}
    for segment in result.segments:
        raw = stls[f"{segment.name}.stl"]
        assert struct.unpack("<I", raw[80:84])[0] == segment.report.triangles
        assert len(raw) == 84 + 50 * segment.report.triangles
        assert segment.report.watertight
    low, high, soft = (s.report for s in result.segments)
    assert result.segments[2].level_source == "band" and result.segments[2].level2 == 300
    # the band holds what is above -100 HU and not above 300 HU, less the layers thinner than
    # a voxel where air meets bone (there the two one-sided surfaces lie in one voxel, and
    # the band has no voxel): about three quarters of the difference at 2 mm
    assert 0.6 < soft.volume_cm3 / (low.volume_cm3 - high.volume_cm3) < 1
    assert "segments" in result.as_dict() and result.printability is None


def test_an_empty_segment_says_which(head, tmp_path):
    with pytest.raises(EmptySurfaceError, match="segment 'metal': no voxel lies in the band"):
        convert([head], tmp_path / "x.3mf", Options(segments=(
            Segment("bone", preset="bone"), Segment("metal", level=30000, level2=30001)),
            format="3mf", printability=False, **HEAD))
    assert not (tmp_path / "x.3mf").exists()


def test_a_job_without_segments_has_no_segments_key(head, tmp_path):
    result = convert([head], tmp_path / "b.stl", Options(preset="bone", printability=False,
                                                         **HEAD))
    assert result.segments is None and "segments" not in result.as_dict()
    assert io.BytesIO((tmp_path / "b.stl").read_bytes()).read(8) == b"dicomstl"
