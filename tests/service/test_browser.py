"""A real browser (Debian's Chromium, driven by Playwright) uses the upload form: the
progress bar moves, the 3D preview renders, the STL downloads, the job is deleted.

Screenshots are kept in ``test-artifacts/`` at the repository root.
"""

from __future__ import annotations

import io
import re

import numpy as np
import pytest

from tests.conftest import ROOT

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = ROOT / "test-artifacts"
# SwiftShader renders WebGL on the CPU: with other tests beside it on 2 cores, one frame can
# take longer than Playwright's default 30 s.
SHOT_TIMEOUT_MS = 120_000
ARGS = ["--no-sandbox", "--headless=new", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
        "--use-angle=swiftshader", "--enable-unsafe-swiftshader"]


@pytest.fixture
def chromium() -> str:
    from tests.conftest import require_tool

    require_tool(CHROMIUM)
    return CHROMIUM


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_upload_progress_preview_download_delete(chromium, shared_dicom, web_url, worker,
                                                 tmp_path):
    from PIL import Image
    from playwright.sync_api import sync_playwright

    series = shared_dicom / "ct-session-mixed" / "S2010"
    files = sorted(p for p in series.iterdir() if p.name != "DIRFILE")
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=ARGS, headless=True)
        page = browser.new_page(accept_downloads=True, viewport={"width": 1000, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        # Slow the upload to ~4 MB/s so the progress bar has to move through its range.
        cdp = page.context.new_cdp_session(page)
        cdp.send("Network.enable")
        cdp.send("Network.emulateNetworkConditions", {
            "offline": False, "latency": 0, "downloadThroughput": -1,
            "uploadThroughput": 4 * 1024 * 1024})
        page.goto(web_url)
        # The form starts with what a first print needs: the largest part, ~25 MB of STL.
        assert page.input_value("select[name=keep]") == "largest"
        assert page.input_value("#max-triangles") == "500000"
        assert "25 MB" in page.inner_text("#budget-size")
        page.fill("#max-triangles", "300000")
        assert "15 MB" in page.inner_text("#budget-size")
        page.fill("#max-triangles", "500000")
        assert page.get_attribute("#api-docs", "href") == "/api"
        assert page.evaluate("fetch('/favicon.ico').then(r => r.ok && "
                             "r.headers.get('content-type').startsWith('image/'))")
        page.set_input_files("#file-input", [str(p) for p in files])
        assert "28 file(s)" in page.inner_text("#chosen")
        page.select_option("select[name=preset]", "bone")
        page.click("#submit")
        seen = set()
        while "/jobs/" not in page.url:
            try:
                seen.add(round(page.evaluate(
                    "document.getElementById('upload-progress').value"), 1))
            except Exception:  # the page is navigating to the job
                break
            page.wait_for_timeout(50)
        assert any(0 < v < 100 for v in seen), f"progress values seen: {sorted(seen)}"
        cdp.send("Network.emulateNetworkConditions", {
            "offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1})
        page.wait_for_url("**/jobs/*", timeout=60_000)
        # No worker runs yet, so the job waits in the queue and the page does not reload under
        # the screenshot (a reload mid-capture once hung it past two minutes).
        assert page.inner_text("#state") == "queued"
        page.screenshot(path=str(ARTIFACTS / "job-progress.png"), timeout=SHOT_TIMEOUT_MS)
        worker()  # the page follows the job to "done" on its own, by polling
        page.wait_for_selector("canvas#preview[data-rendered]", timeout=120_000)
        assert page.inner_text("#state") == "done"
        # The deletion time in the browser's own time zone, and how far away it is.
        deadline = page.inner_text("#deadline time")
        assert "UTC" not in deadline and re.search(r"\(in (59|60) minutes\)", deadline), deadline
        page.screenshot(path=str(ARTIFACTS / "job-done.png"), full_page=True,
                        timeout=SHOT_TIMEOUT_MS)
        shot = page.locator("canvas#preview").screenshot(path=str(ARTIFACTS / "preview.png"),
                                                         timeout=SHOT_TIMEOUT_MS)
        pixels = np.asarray(Image.open(io.BytesIO(shot)).convert("RGB"), dtype=float)
        background = np.array([0x20, 0x26, 0x31], float)
        model = np.abs(pixels - background).sum(axis=-1) > 40
        assert 0.02 < model.mean() < 0.95, f"canvas model coverage {model.mean():.3f}"
        assert pixels[model].std() > 5  # shaded, not a flat silhouette
        with page.expect_download() as info:
            page.click("#download")
        download = info.value
        target = tmp_path / download.suggested_filename
        download.save_as(target)
        assert target.suffix == ".stl" and target.name.startswith("dicomstl-")
        triangles = int.from_bytes(target.read_bytes()[80:84], "little")
        assert target.stat().st_size == 84 + 50 * triangles and triangles > 1000
        page.click("#delete")
        page.wait_for_selector("#deleted")
        assert page.inner_text("#state") == "deleted"
        browser.close()
        assert errors == []
