"""Process-level settings that make CPU CAM runs faster.

glibc's malloc returns large freed blocks to the system (``mmap``/trim) and
maps them again on the next batch; for EfficientNet-B0 at 512 px the page
faults cost more than the convolutions. Keeping freed memory in the heap
(what the environment variables ``MALLOC_MMAP_MAX_=0
MALLOC_TRIM_THRESHOLD_=...`` do) makes a batch-8 forward pass several times
faster on a 2-core machine; ``bench/bench_cam.py`` measures it. The price: the
process keeps its peak memory until it exits.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

__all__ = ["tune_malloc"]

# glibc's mallopt parameter numbers (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_INT_MAX = 2**31 - 1


def tune_malloc() -> bool:
    """Keep freed memory in the heap instead of returning it to the system.

    Calls glibc ``mallopt(M_MMAP_MAX, 0)`` and ``mallopt(M_TRIM_THRESHOLD,
    INT_MAX)``: the run-time equivalent of ``MALLOC_MMAP_MAX_=0
    MALLOC_TRIM_THRESHOLD_=<large>``. Affects allocations made afterwards, so
    call it at start-up, before large tensors exist.

    Returns
    -------
    True when the settings were applied, False on platforms without glibc
    (macOS, Windows, musl), where nothing is changed.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok_mmap = mallopt(_M_MMAP_MAX, 0) == 1
    ok_trim = mallopt(_M_TRIM_THRESHOLD, _INT_MAX) == 1
    return ok_mmap and ok_trim
