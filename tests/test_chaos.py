"""Chaos: worker nodes SIGKILLed at random intervals over hundreds of jobs, every result right.

Three real ``core4nb worker`` nodes serve one executor's work on each store (a SQLite file; the
nx-27017 wire-protocol server): a map of 300 items (one job per item), plain submits, jobs that
defer once and jobs that raise once and are retried. A killer thread SIGKILLs a random node at
random intervals and starts a replacement, until every job is done. The randomness is seeded; the
seed is printed and named in every failure (``CORE4NB_CHAOS_SEED=<seed>`` replays its choices --
the machine's timing is not replayable).

What the README promises and this proves: every result is the right value for its item; no job is
left open or lost; a job whose node died was rerun spending one of its ``lost_retries`` (never one
of its ``attempts``), and ``lost_on`` names only nodes that were killed.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import threading
import time

from core4nb import Core4Executor, Queue, State
from core4nb.context import current_job
from tests import jobfuncs
from tests.nodes import PATIENCE, start_node, stop_node
from tests.test_faults import no_process_left  # noqa: F401 - autouse fixture, found by name

ITEMS = 300
SUBMITS = 30
SECONDS = 0.1  # per job: long enough that a kill finds jobs running
LEASE = 3.0  # short, so the dead nodes' jobs are recovered within the test; long enough for a busy machine
NODES = 3


def raise_first(value: int) -> int:
    """Raise on the first trial, as a flaky job does; ``value + 1000`` afterwards."""
    if current_job().trial == 1:
        raise RuntimeError("flaky on the first trial")
    return value + 1000


class Killer(threading.Thread):
    """SIGKILL a random node every ``uniform(0.5, 2.5)`` s and start a replacement, until stopped."""

    def __init__(self, url: str, rng: random.Random) -> None:
        super().__init__(name="chaos-killer", daemon=True)
        self.url, self.rng = url, rng
        self.started = 0
        self.nodes: list[subprocess.Popen] = []  # every node ever started, the dead ones too
        self.live: dict[str, subprocess.Popen] = {}
        self.killed: list[str] = []
        self.done = threading.Event()
        for _ in range(NODES):
            self.replace()

    def replace(self) -> None:
        self.started += 1
        name = f"chaos-{self.started}"
        node = start_node(self.url, name, processes=2, lease=LEASE)
        self.nodes.append(node)
        self.live[name] = node

    def run(self) -> None:
        while not self.done.wait(self.rng.uniform(0.5, 2.5)):
            name = self.rng.choice(sorted(self.live))
            os.kill(self.live.pop(name).pid, signal.SIGKILL)  # its children exit with it
            self.killed.append(name)
            self.replace()

    def stop(self) -> list[str]:
        """Stop killing, stop every node; return what each logged."""
        self.done.set()
        if self.ident is not None:  # started
            self.join()
        return [stop_node(node) for node in self.nodes]


def lost_workers(lost_on: str) -> list[str]:
    """The worker names in ``lost_on`` ("worker chaos-2 on host, worker chaos-5 on host")."""
    return [entry.split()[1] for entry in lost_on.split(", ") if entry]


def test_nodes_sigkilled_at_random_lose_no_job_and_no_result(queue_url):
    seed = int(os.environ.get("CORE4NB_CHAOS_SEED") or random.SystemRandom().randrange(2**32))
    print(f"chaos seed {seed} (replay its choices with CORE4NB_CHAOS_SEED={seed})")
    killer = Killer(queue_url, random.Random(seed))
    started = time.monotonic()
    try:
        with Core4Executor(queue_url, error_time=0.1) as ex:
            adds = [ex.submit(jobfuncs.add, i, i) for i in range(SUBMITS)]
            defers = [ex.options(defer_time=0.2).submit(jobfuncs.defer_once, i) for i in range(10)]
            flaky = [ex.options(attempts=2).submit(raise_first, i) for i in range(10)]
            squares = ex.map(jobfuncs.square, range(ITEMS), [SECONDS] * ITEMS, chunksize=1, timeout=4 * PATIENCE)
            killer.start()
            assert list(squares) == [i * i for i in range(ITEMS)], f"seed {seed}"
            assert [f.result(timeout=PATIENCE) for f in adds] == [2 * i for i in range(SUBMITS)], f"seed {seed}"
            assert [f.result(timeout=PATIENCE) for f in defers] == [10 * i for i in range(10)], f"seed {seed}"
            assert [f.result(timeout=PATIENCE) for f in flaky] == [1000 + i for i in range(10)], f"seed {seed}"
            elapsed = time.monotonic() - started
    finally:
        logs = killer.stop()
    with Queue(queue_url) as queue:
        jobs = queue.store.find()
        counts = queue.counts()
    print(f"chaos: {len(jobs)} jobs in {elapsed:.1f} s, {len(killer.killed)} nodes SIGKILLed, "
          f"{sum(bool(job.lost_on) for job in jobs)} jobs rerun after their node died, "
          f"at most {max(len(lost_workers(job.lost_on)) for job in jobs)} times")
    ids = {f.job_id for f in [*adds, *defers, *flaky]}
    assert len(jobs) == SUBMITS + 20 + ITEMS + 1 and ids <= {job.id for job in jobs}, f"seed {seed}"  # +1: map root
    assert counts[State.COMPLETE] == len(jobs), f"seed {seed}: {counts}"
    assert len(killer.killed) >= 3, f"seed {seed}: the run ended before the chaos began ({elapsed:.1f} s)"
    rerun = [job for job in jobs if job.lost_on]
    assert rerun, f"seed {seed}: {len(killer.killed)} kills hit no running job"
    kinds = {**{f.job_id: "add" for f in adds}, **{f.job_id: "defer" for f in defers},
             **{f.job_id: "flaky" for f in flaky}}
    for job in jobs:
        lost = lost_workers(job.lost_on)
        assert set(lost) <= set(killer.killed), f"seed {seed}: {job.id} reaped from a live node: {job.lost_on}"
        assert job.lost_left == job.lost_retries - len(lost), f"seed {seed}: {job}"
        # A dead node never spends an attempt: a trial is the first, a rerun after a death, or one the job chose.
        spent, kind = job.attempts - job.attempts_left, kinds.get(job.id, "map")
        if kind == "flaky":  # its first trial raised (spent), unless its node died under it first
            assert (spent, job.trial) in {(1, 2 + len(lost)), (0, 1 + len(lost))} and (spent or lost), \
                f"seed {seed}: {job}"
        else:
            assert spent == 0, f"seed {seed}: {job}"
        if kind == "defer":  # deferred on its first trial, unless its node died under it first
            assert job.trial in {1 + len(lost), 2 + len(lost)} and job.trial >= 2, f"seed {seed}: {job}"
        elif kind == "add" or job.parent_id:  # a plain submit or one item of the map
            assert job.trial == 1 + len(lost), f"seed {seed}: {job}"
    assert not [text for text in logs if "Traceback" in text][:1], f"seed {seed}"
