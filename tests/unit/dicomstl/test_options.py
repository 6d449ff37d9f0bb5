"""The options contract: checked like the command line checks them, in the API's JSON and
the form's text."""

from __future__ import annotations

import pytest

from dicomstl.options import OptionsError, form_options, parse_options


def test_options_are_checked_like_the_cli():
    assert parse_options({"preset": "bone", "smooth_mm": 1, "keep": "largest"}) == {
        "preset": "bone", "smooth_mm": 1, "keep": "largest"}
    assert parse_options({"level": None, "crop": ""}) == {}
    for bad, text in [({"level": True}, "must be a number"), ({"time_point": -1}, "negative"),
                      ({"max_triangles": 10}, "at least 100"), ({"format": "obj"}, "format"),
                      ({"level": float("nan")}, "number"), ({"series": "x" * 300}, "too long")]:
        with pytest.raises(OptionsError, match=text):
            parse_options(bad)
    assert form_options({"preset": "", "level": "250", "max_triangles": "5000"}) == {
        "level": 250.0, "max_triangles": 5000}
    with pytest.raises(OptionsError, match="max triangles must be a whole number"):
        form_options({"max_triangles": "many"})


def test_the_gpu_memory_budget_goes_from_the_settings_to_the_pipeline(tmp_path):
    from dicomstl.options import Options, to_pipeline
    from dicomstl.settings import load_settings

    settings = load_settings({"DICOMSTL_DATA_DIR": str(tmp_path),
                              "DICOMSTL_GPU_MEMORY_BUDGET": str(6 * 2**30)})
    options = to_pipeline({"level": 300}, settings.backend, settings.gpu_memory_budget)
    assert options.gpu_memory_budget == 6 * 2**30 and options.level == 300
    with pytest.raises(Exception, match="GPU memory budget cannot be negative"):
        Options(gpu_memory_budget=-1).validate()


def test_preview_is_a_job_option_not_an_engine_one():
    from dicomstl.options import to_pipeline

    assert parse_options({"preview": True, "preset": "bone"}) == {"preview": True,
                                                                  "preset": "bone"}
    assert parse_options({"preview": False}) == {}  # false is the default
    with pytest.raises(OptionsError, match="true or false"):
        parse_options({"preview": 1})
    assert form_options({"preview": "1"}) == {"preview": True}
    assert form_options({"preview": ""}) == {}
    assert not hasattr(to_pipeline({"preview": True, "level": 5}), "preview")


def test_print_options_in_json_and_the_form():
    from dicomstl.options import Options, to_pipeline

    options = parse_options({"fill_cavities": True, "hollow_mm": 2, "drain_holes": 2,
                             "drain_hole_mm": 4.5, "min_wall_mm": 1})
    engine = to_pipeline(options)
    assert (engine.fill_cavities, engine.hollow_mm, engine.drain_holes, engine.drain_hole_mm,
            engine.min_wall_mm) == (True, 2, 2, 4.5, 1)
    assert Options().min_wall_mm == 0.8 and Options().drain_hole_mm == 3.0
    assert form_options({"fill_cavities": "1", "hollow_mm": "1.5", "drain_holes": ""}) == {
        "fill_cavities": True, "hollow_mm": 1.5}
    for bad, text in [({"drain_holes": 2}, "--drain-holes drains a hollowed model"),
                      ({"hollow_mm": 60}, r"hollow_mm \(--hollow-mm\) must be from 0 to 50"),
                      ({"drain_hole_mm": 0.1}, "drain_hole_mm"),
                      ({"min_wall_mm": 0}, "min_wall_mm"),
                      ({"fill_cavities": "yes"}, "true or false")]:
        with pytest.raises(OptionsError, match=text):
            parse_options(bad)


def test_segments_from_the_command_line_syntax():
    from dicomstl.errors import ConversionError
    from dicomstl.options import Segment, parse_segment

    assert parse_segment("bone=bone") == Segment("bone", preset="bone")
    assert parse_segment("soft=-100:300,color=#FF8800") == Segment(
        "soft", level=-100.0, level2=300.0, color="#FF8800")
    assert parse_segment(" vessels = 150 ") == Segment("vessels", level=150.0)
    for bad, text in [("bone", "NAME=PRESET"), ("bone=", "NAME=PRESET"),
                      ("b one=bone", "segment name"), ("x=femur", "neither a preset"),
                      ("x=300:100", "LEVEL2 above LEVEL"), ("x=1:nan", "finite"),
                      ("x=1e12", "finite number from"), ("x=bone,colour=#ffffff", "only color"),
                      ("x=bone,color=red", "#rrggbb"), ("../x=bone", "segment name")]:
        with pytest.raises(ConversionError, match=text):
            parse_segment(bad)


def test_segments_in_the_options():
    from dicomstl.errors import ConversionError
    from dicomstl.options import MAX_SEGMENTS, Options, Segment

    bone, skin = Segment("bone", preset="bone"), Segment("skin", preset="skin")
    Options(segments=(bone, skin), format="3mf").validate()
    for options, text in [
            (Options(segments=(bone, Segment("Bone", level=5))), "two segments are named"),
            (Options(segments=(bone,), preset="skin"), "not both"),
            (Options(segments=(bone,), level=100), "not both"),
            (Options(segments=tuple(Segment(f"s{i}", level=i) for i in range(MAX_SEGMENTS + 1))),
             f"at most {MAX_SEGMENTS}"),
            (Options(segments=(Segment("x"),)), "either a preset or a level"),
            (Options(segments=(Segment("x", preset="bone", level=3),)), "either a preset")]:
        with pytest.raises(ConversionError, match=text):
            options.validate()
    assert bone.color_or_default(0) != skin.color_or_default(1)
    assert Segment("x", level=1, color="#ABCDEF").color_or_default(0) == "#abcdef"


def test_segments_in_json_and_the_form():
    from dicomstl.options import Segment, result_format, to_pipeline

    raw = {"segments": [{"name": "bone", "preset": "bone"},
                        {"name": "soft", "level": -100, "level2": 300, "color": "#ff0000"}],
           "format": "3mf"}
    assert parse_options(raw) == raw
    assert to_pipeline(raw).segments == (Segment("bone", preset="bone"),
                                         Segment("soft", level=-100, level2=300,
                                                 color="#ff0000"))
    assert parse_options({"segments": []}) == {}
    for bad, text in [({"segments": "bone=bone"}, "list of segments"),
                      ({"segments": ["bone=bone"]}, "list of segments"),
                      ({"segments": [{"preset": "bone"}]}, "needs a name"),
                      ({"segments": [{"name": "a", "level": "1"}]}, "'level' must be a number"),
                      ({"segments": [{"name": "a", "level": True}]}, "must be a number"),
                      ({"segments": [{"name": "a", "hu": 1}]}, "unknown segment field"),
                      ({"segments": [{"name": "a", "preset": "bone"}], "preset": "bone"},
                       "not both"),
                      ({"segments": [{"name": "a", "preset": "bone"}] * 2}, "named")]:
        with pytest.raises(OptionsError, match=text):
            parse_options(bad)
    rows = [("bone", "bone", ""), ("", "", ""), ("soft", "-100:300", "#00ff00")]
    assert form_options({"format": "3mf"}, rows) == {
        "format": "3mf", "segments": [{"name": "bone", "preset": "bone"},
                                      {"name": "soft", "level": -100.0, "level2": 300.0,
                                       "color": "#00ff00"}]}
    with pytest.raises(OptionsError, match="neither a preset"):
        form_options({}, [("bone", "femur", "")])
    assert result_format({"segments": raw["segments"]}) == "zip"
    assert result_format({"segments": raw["segments"], "format": "stl-ascii"}) == "zip"
    assert result_format(raw) == "3mf" and result_format({}) == "stl"
