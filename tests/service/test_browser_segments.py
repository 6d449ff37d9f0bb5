"""The form's segment rows and the job page's preview of a multi-segment job in a real browser
(Debian's Chromium through Playwright): one mesh per segment in its colour, each with a
visibility toggle. Screenshots go to ``test-artifacts/``."""

from __future__ import annotations

import io

import numpy as np
import pytest

from tests.service.test_browser import ARGS, ARTIFACTS, SHOT_TIMEOUT_MS, chromium  # noqa: F401


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("fmt", ["3mf", "stl"])
def test_segments_preview_in_their_colours_with_toggles(chromium, shared_dicom,  # noqa: F811
                                                        web_url, worker, fmt):
    from PIL import Image
    from playwright.sync_api import sync_playwright

    series = shared_dicom / "ct-session-mixed" / "S2010"
    files = sorted(p for p in series.iterdir() if p.name != "DIRFILE")
    ARTIFACTS.mkdir(exist_ok=True)
    worker()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1000, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(web_url)
        page.set_input_files("#file-input", [str(p) for p in files])
        for _ in range(3):
            page.click("#add-segment")
        page.locator(".segment-row .remove-segment").nth(2).click()  # rows can go again
        rows = page.locator(".segment-row")
        assert rows.count() == 2
        for i, (name, spec, color) in enumerate([("bone", "bone", "#ffffff"),
                                                 ("skin", "skin", "#ff0000")]):
            rows.nth(i).locator("[name=segment_name]").fill(name)
            rows.nth(i).locator("[name=segment_spec]").fill(spec)
            rows.nth(i).locator("[name=segment_color]").fill(color)
        page.select_option("select[name=format]", fmt)
        page.click("#submit")
        page.wait_for_url("**/jobs/*", timeout=60_000)
        page.wait_for_selector("canvas#preview[data-rendered]", timeout=180_000)
        triangles = page.evaluate("fetch(location.pathname + '/status').then(r => r.json())"
                                  ".then(j => j.report.segments.map(s => s.mesh.triangles))")
        assert int(page.get_attribute("canvas#preview", "data-rendered")) == sum(triangles)
        toggles = page.locator("#segment-toggles input[type=checkbox]")
        assert [toggles.nth(i).get_attribute("data-segment") for i in range(2)] == [
            "bone", "skin"]

        def red() -> float:
            """The share of the canvas drawn in the skin's red."""
            shot = page.locator("canvas#preview").screenshot(timeout=SHOT_TIMEOUT_MS)
            pixels = np.asarray(Image.open(io.BytesIO(shot)).convert("RGB"), dtype=float)
            r, g, b = pixels[..., 0], pixels[..., 1], pixels[..., 2]
            return float(((r > 80) & (r > 2 * g) & (r > 2 * b)).mean())

        assert red() > 0.02  # the skin, in its colour, covers the bone
        page.screenshot(path=str(ARTIFACTS / f"segments-{fmt}.png"), full_page=True,
                        timeout=SHOT_TIMEOUT_MS)
        toggles.nth(1).uncheck()  # hide the skin: the bone shows, in white
        assert red() < 0.002
        assert errors == []
        browser.close()
