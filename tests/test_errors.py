"""Each error says what happened: a job not yet final is not a failure, outside a job is its own error."""

from __future__ import annotations

import pytest

from core4nb import Core4Executor, JobFailed, Queue, current_job
from core4nb.errors import ChildrenOpen, JobNotFinal, NotInJob
from core4nb.remote import outcome
from tests import jobfuncs
from tests.nodes import PATIENCE


def test_a_waiting_job_is_not_final_rather_than_failed(queue_url):
    with Queue(queue_url) as q:
        job_id = q.enqueue(jobfuncs.add, 1, 2)  # no worker: it stays pending
        with pytest.raises(JobNotFinal) as info:
            q.restart(job_id)
        assert str(info.value) == f"job {job_id} is pending; only a finished job can be restarted (kill it first)"
        with pytest.raises(JobNotFinal) as info:
            outcome(q.get(job_id), q.store)
        assert str(info.value) == f"job {job_id} (tests.jobfuncs.add) is pending, not final; wait for it first"
        assert not isinstance(info.value, JobFailed)


def test_current_job_outside_a_job_is_not_in_job():
    with pytest.raises(NotInJob, match=r"^current_job\(\) is only available inside a job running on a core4nb"):
        current_job()


def test_child_results_while_children_are_open_is_children_open(queue_url):
    with Core4Executor(queue_url, workers=1) as ex:
        future = ex.submit(jobfuncs.eager_parent)
        with pytest.raises(ChildrenOpen, match=r"^1 children still open \(first: \w+\); defer until children_open"):
            future.result(timeout=PATIENCE)
