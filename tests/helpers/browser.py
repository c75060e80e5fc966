"""Debian's Chromium driven by Playwright, never a downloaded browser.

Playwright is pinned to the release whose bundled Chromium matches the installed one (``.ci/run`` installs it with
``python tests/helpers/browser.py --playwright-version``); it launches ``/usr/bin/chromium`` itself.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from typing import Optional

#: Playwright releases by the Chromium major version they bundle (from each wheel's browsers.json).
PLAYWRIGHT_FOR_CHROMIUM = {145: "1.58.0", 147: "1.59.0", 148: "1.60.0", 149: "1.61.0", 151: "1.62.0",
                           153: "1.63.0", 156: "1.64.1", 159: "1.65.2"}
#: As the machine's notes advise: no background connections (the network is closed), no sandbox as root, no GPU.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium_path() -> Optional[str]:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def chromium_major() -> Optional[int]:
    path = chromium_path()
    if path is None:
        return None
    version = subprocess.run([path, "--version"], capture_output=True, text=True).stdout
    match = re.search(r"(\d+)\.\d+", version)
    return int(match.group(1)) if match else None


def playwright_version(major: int) -> str:
    """The release bundling Chromium ``major``, else the newest one bundling an older Chromium (a browser a
    little newer than Playwright's own speaks the same protocol)."""
    older = [known for known in PLAYWRIGHT_FOR_CHROMIUM if known <= major]
    return PLAYWRIGHT_FOR_CHROMIUM[max(older) if older else min(PLAYWRIGHT_FOR_CHROMIUM)]


if __name__ == "__main__" and sys.argv[1:] == ["--playwright-version"]:
    major = chromium_major()
    if major is None:
        sys.exit("no chromium on PATH")
    print(playwright_version(major))
