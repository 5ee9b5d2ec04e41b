"""Divide-and-conquer trees: Core4Job, enqueue, PrimeJob, and a parent failing on its child."""

from __future__ import annotations

import pytest

from core4nb import ChildFailed, Core4Executor, Core4Job, State, enqueue
from core4nb.examples import PrimeJob, count_primes
from core4nb.options import JobOptions
from tests.jobfuncs import add, fail


class TwoTrials(Core4Job):
    """Reports progress, defers once, then returns what it saw of itself."""

    defer_time = 0.1
    priority = 3

    def execute(self, x: int) -> tuple:
        self.progress(0.5, f"trial {self.trial}")
        if self.trial == 1:
            self.defer("once more")
        return self.trial, x, self.id == self.context.job.id


class BrokenTree(Core4Job):
    """One good child and one that raises: the parent must fail, naming the bad child."""

    defer_time = 0.1

    def execute(self) -> int:
        if self.trial == 1:
            self.enqueue_child(add, 1, 2)
            self.enqueue_child(fail, "child broke")
            self.defer("children enqueued")
        if self.children_open():
            self.defer("waiting")
        return sum(self.child_results())


def test_count_primes_by_trial_division():
    assert count_primes(1, 20_000) == 2262
    assert count_primes(0, 10) == 4


def test_job_options_come_from_class_attributes():
    assert TwoTrials.job_options() == JobOptions(priority=3, max_parallel=None, attempts=1, defer_time=0.1,
                                                 defer_max=None, error_time=1.0, wall_time=None, keep=False,
                                                 lost_retries=3)
    assert PrimeJob.job_options().max_parallel == 5


def test_core4job_defers_then_returns_and_keeps_its_options(sqlite_url):
    with Core4Executor(sqlite_url, workers=1) as ex:
        future = ex.submit(TwoTrials, 7)
        assert future.result(timeout=60) == (2, 7, True)
        job = ex.store.get(future.job_id)
        assert (job.name, job.priority, job.trial, job.state) == ("tests.test_tree.TwoTrials", 3, 2, State.COMPLETE)


def test_prime_tree_on_every_backend(queue_url):
    with Core4Executor(queue_url, workers=2) as ex:
        handle = enqueue(PrimeJob, url=queue_url, start=1, end=20_000, chunksize=5_000)
        assert handle.future._runtime is ex._runtime  # enqueue used the live executor
        assert handle.result(timeout=120) == 2262
        children = ex.store.find(parent_id=handle.id, blobs=True)
        assert [c.args_summary for c in children] == [
            "start=1, end=5001", "start=5001, end=10001", "start=10001, end=15001", "start=15001, end=20000"]
        assert [c.state for c in children] == [State.COMPLETE] * 4
        assert ex.store.counts(root_id=handle.id)[State.COMPLETE] == 5
        assert handle.progress.state == State.COMPLETE


def test_parent_fails_naming_the_failed_child(sqlite_url):
    with Core4Executor(sqlite_url, workers=2) as ex:
        handle = enqueue(BrokenTree, url=sqlite_url)
        with pytest.raises(ChildFailed) as info:
            handle.result(timeout=60)
        bad = ex.store.find(parent_id=handle.id, states=[State.ERROR])
        assert len(bad) == 1
        assert str(info.value) == (f"child job {bad[0].id} (tests.jobfuncs.fail) ended error: "
                                   f"ValueError: child broke")
        assert ex.store.get(handle.id).state == State.ERROR
