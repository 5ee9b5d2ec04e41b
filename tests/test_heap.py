"""A worker node keeps the heap it frees (core4nb.worker.heap), measured on the program break itself."""

from __future__ import annotations

import subprocess
import sys

import pytest

# Frees 8 MB of malloc'd blocks at the top of the heap, prints how far the program break moved back.
FREE_THE_TOP = """
import ctypes, sys
from core4nb.worker.heap import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "keep" else None
sbrk = ctypes.CDLL(None).sbrk
sbrk.restype, sbrk.argtypes = ctypes.c_void_p, [ctypes.c_ssize_t]
blocks = [bytearray(4000) for _ in range(2000)]
top = sbrk(0)
del blocks
print(kept, top - sbrk(0))
"""


def given_back(mode: str) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", FREE_THE_TOP, mode], capture_output=True, text=True, check=True)
    kept, moved = out.stdout.split()
    return kept, int(moved)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_a_node_keeps_the_heap_it_frees():
    kept, moved = given_back("default")
    assert kept == "None" and moved > 4_000_000  # glibc hands the freed top back at once
    assert given_back("keep") == ("True", 0)
