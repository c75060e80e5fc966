"""README's picture of the page: the real server and page in Debian's Chromium, with a photo dropped on it.

    python benchmarks/page_screenshot.py --out docs/serve_page.jpg      # the bundled model; --ckpt for another

Starts ``age-classifier-serve`` on a free port of 127.0.0.1, opens the page in headless Chromium (Playwright driving
``/usr/bin/chromium``, never a downloaded browser), chooses matplotlib's bundled portrait of Grace Hopper (a US Navy
photograph, public domain), waits for the face's box and label, and saves a screenshot of the page (PNG or JPEG, by
the name).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from helpers.browser import CHROMIUM_ARGS, chromium_path  # noqa: E402
from test_serve import free_port, stop, wait_for  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(REPO / "docs" / "serve_page.jpg"))
    parser.add_argument("--ckpt", default=None, help="default: the bundled model")
    args = parser.parse_args(argv)
    import matplotlib.cbook
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as folder:
        photo = Path(folder) / "grace_hopper.jpg"
        photo.write_bytes(Path(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).read_bytes())
        port = free_port()
        command = [sys.executable, "-m", "project.serve", "--port", str(port)]
        command += ["--ckpt", args.ckpt] if args.ckpt else []
        server = subprocess.Popen(command, cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            url = f"http://127.0.0.1:{port}"
            wait_for(f"{url}/health", server)
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
                page = browser.new_page(viewport={"width": 760, "height": 700})
                page.goto(url + "/")
                page.set_input_files("#file", str(photo))
                page.wait_for_selector("[data-testid=face-box]", timeout=60_000)
                page.wait_for_function("document.querySelector('#model').textContent.length > 0")
                jpeg = Path(args.out).suffix.lower() in (".jpg", ".jpeg")
                page.screenshot(path=args.out, full_page=True, **({"type": "jpeg", "quality": 80} if jpeg else {}))
                browser.close()
        finally:
            stop(server)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
