"""The functions every tool runs. Importable by reference (``benchmarks.work``), so
each tool ships the same small pickle and no tool gets a by-value handicap."""

from __future__ import annotations

import time

from core4nb import examples


def count_primes(bounds: tuple[int, int]) -> int:
    """Number of primes in ``[lo, hi)``."""
    return examples.count_primes(*bounds)  # the same trial division as core4nb's demo and examples


def chunks(end: int, parts: int) -> list[tuple[int, int]]:
    """``[1, end)`` in ``parts`` ranges of (nearly) equal length."""
    step = -(-(end - 1) // parts)
    return [(lo, min(lo + step, end)) for lo in range(1, end, step)]


def identity(x: object) -> object:
    """The trivial function: what a map costs when the work is nothing."""
    return x


def nap(seconds: float) -> float:
    """Sleep, return how long: a job that holds a worker without using a core."""
    time.sleep(seconds)
    return seconds
