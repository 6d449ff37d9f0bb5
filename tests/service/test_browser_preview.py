"""The threshold preview in a real browser (Chromium through Playwright): the histogram is
drawn, moving the slider changes the overlay with no request, and "Convert at this level"
makes the model at that level. Screenshots go to ``test-artifacts/``."""

from __future__ import annotations

import pytest

from tests.service.test_browser import ARGS, ARTIFACTS, SHOT_TIMEOUT_MS, chromium  # noqa: F401

#: The sum of a canvas' pixels (as a fingerprint) and how many are not blank.
CANVAS_STATS = """(id) => {
  const c = document.getElementById(id);
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let sum = 0, inked = 0, tinted = 0;
  for (let i = 0; i < d.length; i += 4) {
    sum += d[i] * 3 + d[i + 1] * 5 + d[i + 2] * 7;
    if (d[i + 3] && (d[i] < 250 || d[i + 1] < 250 || d[i + 2] < 250)) inked++;
    if (d[i] > d[i + 1] + 40) tinted++;
  }
  return {sum, inked, tinted, total: d.length / 4};
}"""


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_threshold_preview_slider_and_convert(chromium, shared_dicom, web_url,  # noqa: F811
                                              worker):
    from playwright.sync_api import sync_playwright

    series = shared_dicom / "ct-session-mixed" / "S2010"
    files = sorted(p for p in series.iterdir() if p.name != "DIRFILE")
    ARTIFACTS.mkdir(exist_ok=True)
    worker()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1000, "height": 1100})
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(web_url)
        page.set_input_files("#file-input", [str(p) for p in files])
        page.check("#preview-first")
        page.click("#submit")
        page.wait_for_url("**/jobs/*", timeout=60_000)
        page.wait_for_selector("#threshold[data-ready]", timeout=180_000)
        assert page.inner_text("#state") == "uploaded"
        histogram = page.evaluate(CANVAS_STATS, "histogram")
        assert histogram["inked"] > 0.02 * histogram["total"], histogram  # bars drawn
        assert page.input_value("#level-number") == "300"  # the CT default, bone
        before = page.evaluate(CANVAS_STATS, "slice-axial")
        assert before["tinted"] > 0  # bone at 300 HU is tinted
        cache = page.evaluate("fetch(document.getElementById('threshold').dataset.previewUrl)"
                              ".then(r => r.headers.get('cache-control'))")
        assert cache == "no-store"
        requests_made: list[str] = []
        page.on("request", lambda r: requests_made.append(r.url))
        # move the slider down to soft tissue: more is tinted, with no request
        page.evaluate("""() => { const r = document.getElementById('level-range');
            r.value = '-200'; r.dispatchEvent(new Event('input', {bubbles: true})); }""")
        assert page.input_value("#level-number") == "-200"
        after = page.evaluate(CANVAS_STATS, "slice-axial")
        assert after["sum"] != before["sum"] and after["tinted"] > before["tinted"]
        assert requests_made == []
        page.fill("#level-number", "400")
        assert page.input_value("#level-range") == "400"
        page.screenshot(path=str(ARTIFACTS / "threshold-preview.png"), full_page=True,
                        timeout=SHOT_TIMEOUT_MS)
        page.click("#convert-level")
        page.wait_for_selector("table.report", timeout=180_000)
        assert page.inner_text("#state") == "done"
        threshold = page.inner_text("table.report tr:has(th:text-is('Threshold')) td")
        assert threshold.startswith("400"), threshold
        status = page.evaluate("fetch(document.getElementById('job').dataset.statusUrl)"
                               ".then(r => r.json())")
        assert status["report"]["level"] == 400 and status["options"]["level"] == 400
        page.screenshot(path=str(ARTIFACTS / "threshold-converted.png"), full_page=True,
                        timeout=SHOT_TIMEOUT_MS)
        browser.close()
    assert errors == []
