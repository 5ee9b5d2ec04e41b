"""Example jobs for demos, docs and tests: counting primes, flat and divide-and-conquer."""

from __future__ import annotations

from core4nb.jobs import Core4Job


def is_prime(n: int) -> bool:
    """Trial division: deliberately pure Python, so the work is CPU-bound and even."""
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    divisor = 3
    while divisor * divisor <= n:
        if n % divisor == 0:
            return False
        divisor += 2
    return True


def count_primes(start: int, end: int) -> int:
    """How many primes are in ``[start, end)``."""
    return sum(1 for n in range(start, end) if is_prime(n))


class PrimeJob(Core4Job):
    """Count the primes in ``[start, end)``; with ``chunksize``, as a tree of child jobs
    (README, "In a notebook": divide and conquer).

    Trial 1 splits the range into children and defers; later trials defer while
    children are open (a failed child fails this job, naming it), then add up
    the children's counts.
    """

    defer_time = 1
    max_parallel = 5

    def execute(self, start: int, end: int, chunksize: int | None = None) -> int:
        if chunksize:
            if self.trial == 1:
                for lo in range(start, end, chunksize):
                    self.enqueue_child(PrimeJob, start=lo, end=min(lo + chunksize, end))
                self.defer("waiting")
            if self.children_open():
                self.defer(f"{self.children_open()} children still open")
            return sum(self.child_results())
        return count_primes(start, end)
