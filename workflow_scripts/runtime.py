"""Process-level settings that make CPU training faster.

glibc serves every allocation above 32 MB with a fresh ``mmap`` and returns it on free, so each
training step page-faults its large gradient buffers (the 28M-entry embedding gradient of SmolLM2
alone costs ~0.2 s per step on 2 cores). Keeping freed memory in the heap removes that cost:
backward passes run about 30 % faster with the same results.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_done = False


def keep_freed_memory() -> bool:
    """Tell glibc's malloc to serve large blocks from the heap and keep freed memory (idempotent).
    Returns whether it applied (False off glibc, e.g. macOS or musl)."""
    global _done
    if _done:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = libc.mallopt(_M_MMAP_MAX, 0) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1
    except (OSError, AttributeError):
        return False
    _done = ok
    if ok:
        log.debug("malloc: large blocks from the heap, freed memory kept")
    return ok
