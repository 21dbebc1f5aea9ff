"""Keep freed host memory in the process (glibc malloc), so large tensors that are freed
and allocated again every step do not page-fault each time.

glibc returns a freed block above its mmap threshold (or the top of the heap beyond its
trim threshold) to the OS, and the next allocation of the same size faults in and zeroes
every page again.  An update of a gradient method allocates its k per-task gradients
(k x n floats, tens of MB at MT10 shapes) each step.  With the defaults, those page
faults cost `pivrg` about a tenth of its update time at batch 1,280
(`scripts/bench_update.py`: 1.24x `ls` with the defaults, 1.11x with this).  The PyTorch
CPU tuning guide gives the same advice (a caching allocator such as jemalloc or tcmalloc).
Both trainers call :func:`keep_freed_memory` when they are built (a process-wide malloc
setting; calling it again changes nothing).  It is a no-op where the C library is not
glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util

__all__ = ["keep_freed_memory"]

# mallopt parameters (glibc malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_MMAP_THRESHOLD_MAX = 32 << 20      # glibc's largest mmap threshold on 64-bit
_TRIM_THRESHOLD = 1 << 30
_TOP_PAD = 64 << 20


def keep_freed_memory() -> bool:
    """Serve blocks up to 32 MB from the heap and keep up to 1 GB of freed heap memory
    (``mallopt``).  Returns True where it was applied (glibc), False elsewhere."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return all(mallopt(param, value) == 1 for param, value in
               ((_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX), (_M_TRIM_THRESHOLD, _TRIM_THRESHOLD),
                (_M_TOP_PAD, _TOP_PAD)))
