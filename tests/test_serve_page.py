"""The web page in a real browser: Debian's Chromium, driven by Playwright, against the server on 127.0.0.1."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from helpers.browser import CHROMIUM_ARGS, chromium_path
from helpers.photos import two_face_photo
from helpers.run_if import face_detector
from test_serve import free_port, stop, wait_for

pytestmark = pytest.mark.slow

if chromium_path() is None:
    pytest.skip("Debian's chromium is not installed (apt-get install chromium; .ci/run does)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (.ci/run installs the "
                               "release matching the installed chromium)")

LABEL = re.compile(r"^\d: (0-24|25-49|50-74|75-99|100-124) \u00b7 \d+ y \(\d+-\d+\)$")


@pytest.fixture(scope="module")
def server_url(checkpoint, tmp_path_factory):
    face_detector()
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "project.serve", "--ckpt", str(checkpoint), "--port",
                                str(port)], cwd=tmp_path_factory.mktemp("serve"), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(f"{url}/health", process)
        yield url
    finally:
        stop(process)


@pytest.fixture
def page(tmp_path):
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        yield browser.new_page(viewport={"width": 412, "height": 915})  # a phone's screen
        browser.close()


def test_a_dropped_photo_gets_a_box_and_a_label_per_face(server_url, page, tmp_path):
    photo = tmp_path / "two_faces.jpg"
    two_face_photo().save(photo, quality=92)
    page.goto(server_url + "/")
    assert page.title() == "Age groups from faces"
    page.set_input_files("#file", str(photo))
    page.wait_for_selector("[data-testid=face-box] >> nth=1", timeout=60_000)
    labels = page.locator(".box .label").all_inner_texts()
    assert len(labels) == 2 and all(LABEL.match(label) for label in labels), labels
    assert page.locator("#faces li").count() == 2 and page.locator("#faces .bar").count() == 10
    assert "2 faces in two_faces.jpg" in page.locator("#status").inner_text()
    assert page.locator("#model").inner_text().startswith("Model: checkpoint best-")  # the footer names the model
    left, right = (page.locator("[data-testid=face-box]").nth(i).bounding_box() for i in range(2))
    assert left["x"] < right["x"] and left["width"] > right["width"]  # the boxes sit on the two faces
    page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
    assert (tmp_path / "page.png").stat().st_size > 10_000


def test_a_file_that_is_not_a_photo_shows_the_servers_message(server_url, page, tmp_path):
    notes = tmp_path / "notes.jpg"
    notes.write_text("a shopping list, not a photo")
    page.goto(server_url + "/")
    page.set_input_files("#file", str(notes))
    error = page.locator("#error")
    error.wait_for(state="visible", timeout=60_000)
    assert "not a readable image" in error.inner_text()
    assert page.locator("[data-testid=face-box]").count() == 0
