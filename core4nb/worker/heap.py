"""A worker node keeps the heap it frees, rather than handing it back to the kernel after every job.

glibc returns the top of the heap (``brk``) whenever more than ``M_TRIM_THRESHOLD`` of it is free
(128 KiB unless it adapted), and takes it back at the next allocation: another ``brk``, then a page
fault for every 4 KiB touched. SQLite frees and reallocates its page cache (about 280 KiB here) around
each transaction that follows another process's write -- on the embedded queue, each claim and each
finish of a node -- so a node paid three ``brk`` calls and some 70 page faults per job: 55 µs of kernel
time per job, about 4 % of a trivial job's round trip (measured with strace and /proc here). Keeping
up to :data:`KEEP` bytes of freed heap ends that churn; a node's heap is a few MB.
"""

from __future__ import annotations

import ctypes
import sys

M_TRIM_THRESHOLD = -1  # <malloc.h>
#: Freed heap a node keeps before glibc trims it.
KEEP = 64 * 1024 * 1024


def keep_freed_memory() -> bool:
    """Raise this process's malloc trim threshold to :data:`KEEP`; False where the C library has no
    ``mallopt`` (not glibc: musl, macOS), which changes nothing else."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the process's own C library
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(M_TRIM_THRESHOLD, KEEP) == 1
