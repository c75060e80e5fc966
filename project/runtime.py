"""Process-wide settings that make CPU training fast without changing any result."""

from __future__ import annotations

import ctypes
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_applied = False


def keep_freed_memory() -> bool:
    """Let glibc reuse freed large blocks instead of handing them back to the OS after every step.

    Each training step allocates ~100 MB of gradients for the head's 25088x1000 kernel. By default glibc serves such
    blocks with ``mmap`` and unmaps them when freed, so every step page-faults 100 MB of fresh zeroed memory: on the
    2-core test machine that tripled the step time (bf16: 108 ms -> 38 ms per batch of 32 with this setting).
    Memory stays at its peak instead of shrinking between steps. A no-op outside Linux/glibc; returns whether it
    applied.
    """
    global _applied
    if _applied:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        _applied = bool(libc.mallopt(_M_MMAP_THRESHOLD, 1 << 30)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to tune
        _applied = False
    return _applied
