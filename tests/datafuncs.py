"""Job functions for the data-plane tests (``tests/test_dataplane.py``), importable by worker children."""

from __future__ import annotations

import numpy as np


def mapped_files(array: np.ndarray) -> list[str]:
    """The files whose mapping holds ``array``'s memory in this process (from /proc/self/maps)."""
    start = array.__array_interface__["data"][0]
    end = start + array.nbytes
    found = []
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            low, high = (int(part, 16) for part in fields[0].split("-"))
            if low <= start and end <= high and len(fields) == 6:
                found.append(fields[5].strip())
    return found


def where_is(array: np.ndarray) -> tuple[float, bool, list[str]]:
    """The array's sum, whether it is writable, and the files it is mapped from in the worker child."""
    return float(array.sum()), bool(array.flags.writeable), mapped_files(array)


def total(array: np.ndarray) -> float:
    return float(array.sum())


def filled(value: float, n: int) -> np.ndarray:
    return np.full(n, value)


def ran(path: str, array: np.ndarray) -> float:
    """Leaves ``path`` behind: proof that the job ran."""
    with open(path, "w") as handle:
        handle.write("ran")
    return float(array.sum())
