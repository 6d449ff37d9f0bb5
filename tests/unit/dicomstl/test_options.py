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
