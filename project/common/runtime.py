"""Process-wide allocator settings that make the head's training steps fast without changing any result."""

from __future__ import annotations

import ctypes
import sys
from typing import Optional

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_GLIBC_DEFAULT_THRESHOLD = 128 * 1024


def _libc() -> Optional[ctypes.CDLL]:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt  # noqa: B018 - raises AttributeError on a libc without it (musl)
        return libc
    except (OSError, AttributeError):
        return None


def keep_freed_memory() -> bool:
    """Let glibc reuse freed large blocks instead of handing them back to the OS after every step.

    Each training step allocates ~100 MB of gradients for the head's 25088x1000 kernel. By default glibc serves such
    blocks with ``mmap`` and unmaps them when freed, so every step page-faults 100 MB of fresh zeroed memory, which
    made each step several times slower (measured: docs/decisions.md, "Reuse freed memory during the training loop
    only").
    Freed memory then stays with the process, so use it only around the training loop and call
    :func:`release_freed_memory` afterwards (kept on during feature extraction it raised peak RSS). A no-op outside
    Linux/glibc; returns whether it applied.
    """
    libc = _libc()
    if libc is None:
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, 1 << 30)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))


def release_freed_memory() -> None:
    """Back to glibc's default thresholds, and give the memory freed so far back to the OS."""
    libc = _libc()
    if libc is None:
        return
    libc.mallopt(_M_MMAP_THRESHOLD, _GLIBC_DEFAULT_THRESHOLD)
    libc.mallopt(_M_TRIM_THRESHOLD, _GLIBC_DEFAULT_THRESHOLD)
    libc.malloc_trim(0)
