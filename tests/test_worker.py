"""Worker nodes as real processes against real stores (SQLite file, wire-protocol server).

Each test starts ``core4nb worker`` processes, enqueues through :class:`Queue`,
and proves what ran from files the jobs wrote and from the store.
"""

from __future__ import annotations

import collections
import os
import signal
import time

import pytest

from core4nb import Queue, State
from core4nb.errors import JobFailed, StoreUnavailable
from core4nb.worker.node import WorkerNode
from core4nb.worker.slot import Slot
from tests import jobfuncs
from tests.nodes import PATIENCE, start_node, stop_node, wait_for


@pytest.fixture
def queue(queue_url):
    with Queue(queue_url) as q:
        yield q


def max_overlap(records) -> int:
    """Most jobs running at one instant, from (start, end) intervals."""
    events = sorted([(s, 1) for _, _, s, _ in records] + [(e, -1) for _, _, _, e in records],
                    key=lambda ev: (ev[0], ev[1]))
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    return peak


def test_two_nodes_claim_every_job_exactly_once(queue, tmp_path):
    log = str(tmp_path / "runs.txt")
    ids = [queue.enqueue(jobfuncs.record, log, i, 0.02) for i in range(30)]
    nodes = [start_node(queue.url, f"node-{n}", processes=2, burst=True) for n in "ab"]
    for node in nodes:
        node.wait(120)
    records = jobfuncs.read_records(log)
    assert sorted(int(tag) for tag, *_ in records) == list(range(30))
    assert {worker for _, worker, _, _ in records} == {"node-a", "node-b"}
    assert [queue.result(i) for i in ids] == list(range(30))
    assert queue.counts()[State.COMPLETE] == 30


def test_max_parallel_is_never_exceeded_across_nodes(queue, tmp_path):
    log = str(tmp_path / "runs.txt")
    for i in range(8):
        queue.enqueue(jobfuncs.record, log, i, 0.3, options={"max_parallel": 2})
    nodes = [start_node(queue.url, f"node-{n}", processes=3, burst=True) for n in "ab"]
    for node in nodes:
        node.wait(120)
    records = jobfuncs.read_records(log)
    assert len(records) == 8
    assert max_overlap(records) == 2  # the limit is reached and never passed


def test_higher_priority_runs_first(queue, tmp_path):
    log = str(tmp_path / "runs.txt")
    for i in range(4):
        queue.enqueue(jobfuncs.record, log, f"low{i}", options={"priority": 0})
    for i in range(4):
        queue.enqueue(jobfuncs.record, log, f"high{i}", options={"priority": 10})
    start_node(queue.url, "solo", processes=1, burst=True).wait(60)
    order = [tag for tag, *_ in jobfuncs.read_records(log)]
    assert order == ["high0", "high1", "high2", "high3", "low0", "low1", "low2", "low3"]


def test_sigkilled_node_jobs_finish_on_another_node(queue, tmp_path):
    log = str(tmp_path / "runs.txt")
    ids = [queue.enqueue(jobfuncs.sleep_then_record, log, i, 1.5, options={"attempts": 2}) for i in range(2)]
    doomed = start_node(queue.url, "doomed", processes=2, lease=1.0)
    wait_for(lambda: queue.counts()[State.RUNNING] == 2, what="doomed node to claim both jobs")
    stop_node(doomed, signal.SIGKILL)
    rescuer = start_node(queue.url, "rescuer", processes=2, lease=1.0)
    try:
        assert sorted(queue.result(i, timeout=60) for i in ids) == [0, 1]
    finally:
        stop_node(rescuer)
    records = jobfuncs.read_records(log)
    # Each job ran to completion exactly once, on the rescuer: the doomed node's
    # children died with it instead of finishing work nobody would record.
    assert sorted((int(tag), worker) for tag, worker, *_ in records) == [(0, "rescuer"), (1, "rescuer")]
    for job_id in ids:
        job = queue.store.get(job_id)
        assert (job.state, job.trial, job.attempts_left, job.lost_left) == (State.COMPLETE, 2, 2, 2)


def test_reaped_job_without_lost_retries_left_is_error_worker_lost(queue):
    job_id = queue.enqueue(jobfuncs.sleep_then_record, "/dev/null", 0, 30, options={"lost_retries": 0})
    doomed = start_node(queue.url, "doomed", processes=1, lease=0.5)
    wait_for(lambda: queue.get(job_id).state == State.RUNNING, what="claim")
    stop_node(doomed, signal.SIGKILL)
    time.sleep(0.6)
    assert [j.id for j in queue.store.reap()] == [job_id]
    job = queue.get(job_id)
    assert job.state == State.ERROR
    assert job.error.type == "WorkerLost" and "doomed" in job.error.message


@pytest.mark.parametrize("how", ["segfault", "exit", "sigkill"])
def test_crashing_child_fails_only_its_job(queue, how):
    bad = queue.enqueue(jobfuncs.crash, how)
    good = [queue.enqueue(jobfuncs.add, i, 1) for i in range(6)]
    node = start_node(queue.url, "crashy", processes=2, burst=True)
    assert node.wait(60) == 0
    job = queue.store.get(bad)
    assert job.state == State.ERROR
    assert job.error.type == "ChildCrashed"
    expected = {"segfault": ("SIGSEGV", -11), "exit": ("code 3", 3), "sigkill": ("SIGKILL", -9)}[how]
    assert expected[0] in job.error.message and job.error.exit_code == expected[1]
    assert [queue.result(i) for i in good] == [1, 2, 3, 4, 5, 6]


def test_kill_reaches_a_running_job_and_the_node_carries_on(queue, tmp_path):
    marker = tmp_path / "finished.txt"
    victim = queue.enqueue(jobfuncs.sleep_then_record, str(marker), "x", 20)
    node = start_node(queue.url, "node", processes=1)
    try:
        wait_for(lambda: queue.get(victim).state == State.RUNNING, what="claim")
        assert queue.kill(victim) == 1
        wait_for(lambda: queue.get(victim).state == State.KILLED, what="kill to land")
        after = queue.enqueue(jobfuncs.add, 2, 3)
        assert queue.result(after, timeout=PATIENCE) == 5
    finally:
        stop_node(node)
    assert not marker.exists()
    with pytest.raises(JobFailed, match="killed"):
        queue.result(victim)


def test_kill_pending_job_is_immediate(queue):
    job_id = queue.enqueue(jobfuncs.add, 1, 1)
    assert queue.kill(job_id) == 1
    assert queue.get(job_id).state == State.KILLED


def test_retry_after_error_time_until_success(queue, tmp_path):
    trials = tmp_path / "trials.txt"
    job_id = queue.enqueue(jobfuncs.fail_until, str(trials), 3, options={"attempts": 3, "error_time": 0.1})
    start_node(queue.url, "node", processes=1, burst=True).wait(60)
    assert queue.result(job_id) == 3
    assert trials.read_text().count("x") == 3
    job = queue.get(job_id)
    assert (job.trial, job.attempts_left) == (3, 1)


def test_exception_comes_back_as_its_type_with_remote_traceback(queue):
    job_id = queue.enqueue(jobfuncs.fail, "no good")
    start_node(queue.url, "node", processes=1, burst=True).wait(60)
    with pytest.raises(ValueError, match="no good") as info:
        queue.result(job_id)
    assert "jobfuncs.py" in str(info.value.__cause__) and "raise ValueError" in str(info.value.__cause__)


def test_defer_then_complete_and_defer_max_inactive(queue):
    once = queue.enqueue(jobfuncs.defer_once, 4, options={"defer_time": 0.1})
    forever = queue.enqueue(jobfuncs.always_defer, "still waiting", options={"defer_time": 0.1, "defer_max": 0.5})
    start_node(queue.url, "node", processes=2, burst=True).wait(60)
    assert queue.result(once) == 40
    job = queue.get(forever)
    assert job.state == State.INACTIVE
    assert "defer_max" in job.progress_message and "still waiting" in job.progress_message


def test_wall_time_stops_a_runaway_job(queue):
    job_id = queue.enqueue(jobfuncs.sleep_then_record, "/dev/null", 0, 30, options={"wall_time": 0.5})
    start_node(queue.url, "node", processes=1, burst=True).wait(60)
    job = queue.get(job_id)
    assert job.state == State.ERROR and job.error.type == "WallTimeExceeded"


def test_wrongly_signed_payload_is_never_unpickled(queue, tmp_path, monkeypatch):
    marker = tmp_path / "side-effect.txt"
    """A node with another key claims nothing (jobs carry their key's id); one that is tricked into
    claiming a job it cannot verify is tests/test_reliability.py's."""
    monkeypatch.setenv("CORE4NB_KEY", "the-notebook-key")
    job_id = queue.enqueue(jobfuncs.touch, str(marker))
    node = start_node(queue.url, "node", processes=1, burst=True, env={"CORE4NB_KEY": "another-cluster-key"})
    assert node.wait(60) == 0
    job = queue.get(job_id)
    assert (job.state, job.trial, job.error) == (State.PENDING, 0, None)
    assert not marker.exists()


def test_sigterm_drains_running_job_and_hands_back_the_rest(queue, tmp_path):
    log = str(tmp_path / "runs.txt")
    short = queue.enqueue(jobfuncs.sleep_then_record, log, "short", 0.8)
    long = queue.enqueue(jobfuncs.sleep_then_record, log, "long", 30)
    waiting = queue.enqueue(jobfuncs.add, 1, 2, options={"priority": -1})
    node = start_node(queue.url, "node", processes=2, extra=("--grace", "2"))
    wait_for(lambda: queue.counts()[State.RUNNING] == 2, what="both claimed")
    output = stop_node(node, signal.SIGTERM)
    assert "draining" in output
    assert queue.get(short).state == State.COMPLETE
    handed_back = queue.get(long)
    assert (handed_back.state, handed_back.trial) == (State.PENDING, 0)
    assert queue.get(waiting).state == State.PENDING  # never claimed while draining
    assert [tag for tag, *_ in jobfuncs.read_records(log)] == ["short"]
    assert queue.store.workers() == []


def test_status_shows_live_node(queue):
    node = start_node(queue.url, "visible", processes=2)
    try:
        info = wait_for(lambda: [w for w in queue.store.workers() if w.name == "visible"], what="heartbeat")
        assert (info[0].slots, info[0].pid, info[0].state) == (2, node.pid, "running")
    finally:
        stop_node(node)


def test_node_counts_per_state_after_mixed_run(queue):
    ok = [queue.enqueue(jobfuncs.add, i, i) for i in range(3)]
    bad = queue.enqueue(jobfuncs.fail)
    start_node(queue.url, "node", processes=2, burst=True).wait(60)
    counts = collections.Counter({k: v for k, v in queue.counts().items() if v})
    assert counts == {State.COMPLETE: 3, State.ERROR: 1}
    assert [queue.result(i) for i in ok] == [0, 2, 4]
    assert queue.get(bad).error.type == "ValueError"


def test_children_die_with_their_node(queue):
    import psutil

    node = start_node(queue.url, "node", processes=2)
    wait_for(lambda: queue.store.workers(), what="node start")
    forkserver_children = wait_for(
        lambda: [p for p in psutil.Process(node.pid).children(recursive=True) if "python" in p.name()],
        what="children")
    stop_node(node, signal.SIGKILL)
    gone, alive = psutil.wait_procs(forkserver_children, timeout=PATIENCE)
    assert alive == []
    assert os.path.exists("/proc") and len(gone) == len(forkserver_children)


def test_what_a_job_prints_is_kept_with_it(queue):
    ok = queue.enqueue(jobfuncs.chatty, "to stdout", "to stderr")
    bad = queue.enqueue(jobfuncs.chatty, "before the error", "and a warning", True)
    flood = queue.enqueue(jobfuncs.flood, 100_000)
    handed = queue.enqueue(jobfuncs.print_through_a_subprocess, "from a subprocess")
    node = start_node(queue.url, "printer", processes=2, burst=True)
    assert node.wait(60) == 0
    assert queue.output(ok) == "to stdout\nto stderr\n"
    assert queue.get(bad).state is State.ERROR and queue.output(bad) == "before the error\nand a warning\n"
    # Only the last 64 KiB are kept, and the text says so.
    kept = queue.output(flood)
    banner, _, tail = kept.partition("\n")
    assert banner == "[… earlier output dropped: the last 64 KiB are kept]"
    assert len(tail) == 64 * 1024 and tail.endswith(f"{999:08d}".ljust(99, ".") + "\n")
    # Listings leave the output out (it may be large); the node's own log still shows it.
    assert queue.get(ok).output == ""
    # sys.stdout still has a file descriptor (subprocess needs one); such output goes to the node only.
    assert queue.result(handed) == 0 and queue.output(handed) == ""
    log = stop_node(node)
    assert "to stdout" in log and "from a subprocess" in log


def test_a_failing_claim_still_starts_the_job_claimed_before_it(sqlite_url):
    """On the embedded store a node starts its jobs once every free slot has had its claim. A claim
    that fails (the store went away) must not strand the job its last outcome claimed under its lease."""
    with Queue(sqlite_url) as q:
        job_id = q.enqueue(jobfuncs.add, 2, 3)
        node = WorkerNode(sqlite_url, processes=2, name="claimer")
        node.slots = [Slot(node.url, node.key) for _ in range(2)]
        first = node.store.claim(node.claimant)  # as finish_and_claim hands it over with an outcome

        def fail(*args, **kwargs):
            raise StoreUnavailable("queue file cannot be used: disk I/O error")

        node.store.claim_many = fail
        try:
            with pytest.raises(StoreUnavailable):
                node._claim(first)
            assert [slot.job.id if slot.job else None for slot in node.slots] == [job_id, None]
            done = wait_for(lambda: [m for m in node.slots[0].receive() if m[0] == "done"], what="the job's outcome")
            assert done[0][1].kind == "complete" and q.get(job_id).state is State.RUNNING
        finally:
            for slot in node.slots:
                slot.close()
            node.store.close()
