"""Progress bars that stay readable in a terminal and small in a log file."""

from __future__ import annotations

import sys


def progress_interval() -> float:
    """Seconds between redraws: a few a second on a terminal, rarely when stderr is a log file."""
    return 1.0 if sys.stderr.isatty() else 30.0
