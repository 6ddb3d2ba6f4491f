"""End to end in a real browser (Debian Chromium): sign in, open a patient, upload a broken study and read
why it was refused, then upload a study (a NIfTI file the test writes from a phantom), watch the upload and
the segmentation progress advance, then see the viewer on the new study with the label overlay in its
colours and the volume plots with one more study."""

from __future__ import annotations

from urllib.parse import urlsplit

import cv2
import numpy as np
import pytest

from tests.healthcare import USER, healthcare_stack, phantom_study  # noqa: F401 - a fixture
from tests.test_manufacturing_browser import CHROMIUM_ARGS

pytestmark = pytest.mark.slow

OBSERVE_PROGRESS = """() => {
  for (const id of ["upload-state", "segment-state"]) {
    new MutationObserver(() => window.recordProgress(id, document.getElementById(id).textContent))
      .observe(document.getElementById(id), {childList: true, characterData: true, subtree: true});
  }
}"""


def test_sign_in_upload_a_study_and_see_the_overlay_and_the_plot(healthcare_stack, tmp_path):
    playwright = pytest.importorskip("playwright.sync_api")
    stack = healthcare_stack
    patient = stack.new_patient("female", 1966)
    first, _ = phantom_study(17, 10.0)
    assert stack.upload(patient, first, acquired="2026-01-15")[0] == 201
    study_file = tmp_path / "follow-up.nii.gz"
    study_file.write_bytes(phantom_study(17, 13.0)[0])
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(study_file.read_bytes()[:20_000])   # truncated
    password = (stack.tmp / "app-data" / "initial-password").read_text().strip()

    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.goto(f"{stack.http.root}/healthcare/patients/{patient}")
        assert "/sign-in" in page.url   # no session: the sign-in form first
        page.fill("#user", USER)
        page.fill("#password", password)
        page.click("button:has-text('Sign in')")
        page.wait_for_url(lambda url: urlsplit(url).path == f"/healthcare/patients/{patient}")
        points_before = page.locator("#volume-chart circle.point").count()
        assert points_before == 2   # organ and lesion of the first study

        # A broken study: the service's field violation is on the page, and the form can be used again.
        page.set_input_files("#study-file", str(broken))
        page.click("#upload-button")
        page.wait_for_selector("#upload-error:not([hidden])", timeout=60_000)
        assert "chunk.data" in page.inner_text("#upload-error")
        assert page.is_enabled("#upload-button")

        seen: list[tuple[str, str]] = []
        page.expose_function("recordProgress", lambda element, text: seen.append((element, text)))
        page.evaluate(OBSERVE_PROGRESS)
        page.set_input_files("#study-file", str(study_file))
        page.fill("#acquired", "2026-04-15")
        page.click("#upload-button")
        page.wait_for_url(lambda url: "study=" in urlsplit(url).query, timeout=240_000)

        uploads = [text for element, text in seen if element == "upload-state"]
        stages = [text for element, text in seen if element == "segment-state"]
        assert uploads and uploads[-1] == "uploaded", seen
        assert any("windows" in text for text in stages), seen

        page.wait_for_selector("#slice-axial")
        page.wait_for_function("() => document.querySelector('#slice-axial').complete")
        overlay = cv2.imdecode(np.frombuffer(page.locator("#slice-axial").screenshot(), np.uint8), cv2.IMREAD_COLOR)
        assert _coloured_pixels(overlay) > 100   # the labels' colours over the grey study
        assert page.locator("#volume-chart circle.point").count() == points_before + 2
        new_study = page.url.rsplit("study=", 1)[1]
        assert page.inner_text("#study-id") == new_study

        page.uncheck("#overlay")   # overlay off: the same slice in grey only
        page.wait_for_function("() => document.querySelector('#slice-axial').src.endsWith('overlay=0')")
        page.wait_for_function("() => document.querySelector('#slice-axial').complete")
        grey = cv2.imdecode(np.frombuffer(page.locator("#slice-axial").screenshot(), np.uint8), cv2.IMREAD_COLOR)
        assert _coloured_pixels(grey) == 0
        browser.close()


def _coloured_pixels(bgr: np.ndarray) -> int:
    spread = bgr.max(axis=2).astype(int) - bgr.min(axis=2).astype(int)
    return int((spread > 40).sum())
