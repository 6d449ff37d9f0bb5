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
