"""``core4nb demo``: count primes serially, then with :class:`Core4Executor`, and compare."""

from __future__ import annotations

import os
import time

from core4nb.examples import count_primes
from core4nb.store import redact_url


def run_demo(end: int = 3_000_000, workers: int | None = None, chunks: int = 64) -> int:
    """Count primes below ``end`` both ways; print counts, times and the speed-up."""
    from core4nb.executor import Core4Executor

    workers = workers or os.cpu_count() or 1
    step = -(-end // chunks)
    bounds = [(lo, min(lo + step, end)) for lo in range(1, end, step)]
    print(f"counting primes below {end:,} in {len(bounds)} chunks")
    busy = busy_note()

    started = time.perf_counter()
    serial = sum(count_primes(lo, hi) for lo, hi in bounds)
    serial_s = time.perf_counter() - started
    print(f"  serial Python              {serial:>9,} primes  {serial_s:6.2f} s")

    started = time.perf_counter()
    with Core4Executor(workers=workers) as executor:
        ready_s = time.perf_counter() - started
        parallel = sum(executor.map(count_primes, *zip(*bounds, strict=True), chunksize=1))
    parallel_s = time.perf_counter() - started
    print(f"  core4nb, {workers} workers        {parallel:>9,} primes  {parallel_s:6.2f} s"
          f"  (executor ready in {ready_s:.2f} s, queue {redact_url(executor.url)})")
    if parallel != serial:
        print(f"MISMATCH: serial counted {serial}, core4nb {parallel}")
        return 1
    print(f"speed-up over serial: {serial_s / parallel_s:.2f}x on {workers} workers")
    if busy:
        print(busy)
    return 0


def busy_note() -> str | None:
    """A warning when other work already keeps this machine's cores busy: the speed-up then shows less
    than the cores can give (on a quiet machine: close to the number of workers)."""
    cores, load = os.cpu_count() or 1, os.getloadavg()[0]
    if load < 0.3 * cores:
        return None
    return (f"note: the machine was busy before the demo started (1-minute load {load:.1f} on {cores} cores): "
            "other processes shared the cores, so the speed-up is lower than a quiet machine gives")
