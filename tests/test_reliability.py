"""Reliability round 2 (issue 11), part 1: nodes, clocks, outages -- with real worker processes.

Each test starts real ``core4nb worker`` nodes (``tests/nodes.py``) on a SQLite file and on the
nx-27017 wire-protocol server, injects one fault, and asserts the exact outcome. The helpers and
the autouse ``no_process_left`` check come from ``tests/test_faults.py``; part 2 (files, bells,
URLs, hand-edited documents) is ``tests/test_safety.py``.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time

import pytest

from core4nb import Queue, State, keys
from core4nb.calls import make_job
from core4nb.keys import key_file_path
from tests import faultfuncs, jobfuncs
from tests.nodes import PATIENCE, start_node, stop_node, wait_for
from tests.test_faults import cli, is_sqlite, no_process_left, outage, queue, raw  # noqa: F401 - fixtures, found by name

# -- 1. lost-node retries have their own budget --------------------------------------------------


def test_a_job_whose_node_died_reruns_without_spending_an_attempt(queue, tmp_path):
    """attempts=1 (the default) and its first node is SIGKILLed: the job runs again on the other node."""
    trials = str(tmp_path / "trials.txt")
    job_id = queue.enqueue(faultfuncs.kill_my_node, trials, 1, options={"error_time": 0.1})
    nodes = [start_node(queue.url, name, processes=1, lease=1.0) for name in ("node-a", "node-b")]
    try:
        survivor = queue.result(job_id, timeout=2 * PATIENCE)
    finally:
        codes = [node.poll() for node in nodes]
        for node in nodes:
            stop_node(node)
    dead = {"node-a": "node-b", "node-b": "node-a"}[survivor]
    assert sorted(codes, key=str) == [-signal.SIGKILL, None]
    job = queue.get(job_id)
    assert (job.state, job.trial, job.attempts_left, job.lost_left) == (State.COMPLETE, 2, 1, 2)
    assert job.lost_on.startswith(f"worker {dead} on ")


def test_a_poison_job_ends_in_error_naming_every_node_it_killed(queue, tmp_path):
    trials = str(tmp_path / "trials.txt")
    job_id = queue.enqueue(faultfuncs.kill_my_node, trials,
                           options={"attempts": 5, "lost_retries": 1, "error_time": 0.1})
    nodes = [start_node(queue.url, name, processes=1, lease=1.0) for name in ("node-a", "node-b")]
    try:
        wait_for(lambda: all(node.poll() is not None for node in nodes), timeout=2 * PATIENCE, what="both nodes to die")
        until = queue.get(job_id).lease.until  # nobody is left to reap the second death: the test does
        wait_for(lambda: queue.store.reap() or queue.get(job_id).state != State.RUNNING,
                 what=f"the lease (until {until}) to expire and be reaped")
    finally:
        for node in nodes:
            stop_node(node)
    job = queue.get(job_id)
    assert (job.state, job.trial, job.attempts_left, job.lost_left) == (State.ERROR, 2, 5, 0)
    assert job.error.type == "WorkerLost"
    assert "a job that killed every node it landed on is a poison job" in job.error.message
    assert "worker node-a on " in job.error.message and "worker node-b on " in job.error.message
    assert "raise lost_retries=1" in job.error.message
    with open(trials) as handle:
        assert handle.read() == "xx"


# -- 2. a job's output or progress can never crash the node ---------------------------------------

def test_undecodable_output_progress_and_errors_never_crash_a_node(queue):
    """Lone surrogates in what a job prints, in its progress and in its exception; a progress call of
    the wrong type; an error too large for a MongoDB document: each ends in that job alone."""
    bad = {
        "printed": queue.enqueue(faultfuncs.print_undecodable),
        "progress": queue.enqueue(faultfuncs.progress_then, 0.5, "half of " + os.fsdecode(b"\xff"), 1.5),
        "wrong type": queue.enqueue(faultfuncs.progress_then, 0.5, None),
        "raised": queue.enqueue(faultfuncs.raise_undecodable),
        "huge error": queue.enqueue(faultfuncs.raise_undecodable, 9 * 2**20),  # message and traceback: 18 MB
    }
    good = [queue.enqueue(jobfuncs.add, i, 1) for i in range(6)]
    nodes = [start_node(queue.url, name, processes=1, lease=2.0) for name in ("node-a", "node-b")]
    try:
        assert [queue.result(i, timeout=2 * PATIENCE) for i in good] == [1, 2, 3, 4, 5, 6]
        for job_id in bad.values():
            queue.wait(job_id, timeout=2 * PATIENCE)
        assert [node.poll() for node in nodes] == [None, None]
    finally:
        logs = [stop_node(node) for node in nodes]
    jobs = {what: queue.store.get(job_id) for what, job_id in bad.items()}
    assert (jobs["printed"].state, jobs["printed"].output) == (State.COMPLETE, "listing x\\udcff.txt\n")
    assert (jobs["progress"].state, jobs["progress"].progress_message) == (State.COMPLETE, "half of \\udcff")
    wrong = jobs["wrong type"]
    assert (wrong.state, wrong.error.type) == (State.ERROR, "TypeError")
    assert wrong.error.message.startswith("progress message must be a str, got NoneType None")
    raised = jobs["raised"]
    assert (raised.state, raised.error.type, raised.error.message) == (State.ERROR, "ValueError",
                                                                         "cannot open x\\udcff.txt")
    huge = jobs["huge error"]
    if is_sqlite(queue.url):  # a SQLite row holds it
        assert (huge.state, huge.error.type, len(huge.error.message)) == (State.ERROR, "ValueError", 9 * 2**20 + 23)
    else:  # over MongoDB's 16 MB document limit: recorded as an error saying so, without the text
        assert (huge.state, huge.error.type) == (State.ERROR, "DocumentTooLarge"), huge.error
        assert "the queue could not store this job's error outcome" in huge.error.message
    for text in logs:
        assert "Traceback" not in text, text


# -- 3. a node with the wrong key must not eat the queue ------------------------------------------

WRONG_KEY = {"CORE4NB_KEY": "another-cluster-key-0123456789"}


def test_a_node_with_another_key_leaves_the_queue_alone(queue, raw, tmp_path):
    """Jobs carry their key's id: the wrong node claims none of them (and `status` says why), except one
    written without a key id, which it hands back unspent. The right node then runs them all."""
    good = [queue.enqueue(jobfuncs.add, i, 1) for i in range(4)]
    key_id = queue.get(good[0]).key_id
    assert len(key_id) == 16 and key_id not in key_file_path().read_text()
    assert start_node(queue.url, "burst-wrong", processes=1, burst=True, env=WRONG_KEY).wait(PATIENCE) == 0
    wrong = start_node(queue.url, "wrong", processes=1, env=WRONG_KEY)
    try:
        status = wait_for(lambda: "node wrong" in (out := cli("status", queue.url).stdout) and out,
                          what="status to name the wrong node")
        unknown = queue.enqueue(jobfuncs.add, 10, 1)
        if is_sqlite(queue.url):
            raw.change(unknown, {"key_id": ""})
        else:  # as a document written before key ids
            raw.change(unknown, {}, unset=("key_id",))
        handed = wait_for(lambda: (job := queue.get(unknown)).progress_message and job,
                          what="the wrong node to hand the job without a key id back")
        assert [queue.get(i).trial for i in good] == [0, 0, 0, 0]
    finally:
        wrong_log = stop_node(wrong)
    assert (handed.state, handed.trial, handed.attempts_left, handed.error) == (State.PENDING, 0, 1, None)
    assert handed.progress_message.startswith("node wrong (key id ")
    assert "cannot verify its signature (key id not recorded)" in handed.progress_message
    assert f"(key id {keys.key_id(WRONG_KEY['CORE4NB_KEY'].encode())}) can claim none of the waiting jobs " \
           f"(key ids {key_id}): give it the notebook's key" in status
    assert "Traceback" not in wrong_log
    # A burst node with the wrong key hands that job back too, and then has nothing left to wait for.
    assert start_node(queue.url, "burst-wrong-2", processes=1, burst=True, env=WRONG_KEY).wait(PATIENCE) == 0
    assert queue.get(unknown).progress_message.startswith("node burst-wrong-2 (key id ")
    assert start_node(queue.url, "right", processes=1, burst=True).wait(PATIENCE) == 0
    assert [queue.result(i) for i in [*good, unknown]] == [1, 2, 3, 4, 11]
    assert [queue.get(i).trial for i in good] == [1, 1, 1, 1]


def test_a_mongodb_worker_without_a_key_refuses_to_start(queue, tmp_path):
    """No CORE4NB_KEY, no key file: a MongoDB worker exits 1 saying what to do; the embedded one makes a key."""
    missing = tmp_path / "nokey" / "key"
    out = cli("worker", queue.url, "--burst", env={"CORE4NB_KEY_FILE": str(missing)})
    if is_sqlite(queue.url):
        assert out.returncode == 0 and missing.exists()
    else:
        assert out.returncode == 1 and not missing.exists()
        assert out.stderr == (f"core4nb: error: no cluster key: CORE4NB_KEY is unset and key file {missing} does "
                              f"not exist; copy the notebook machine's key file there (chmod 600) or set CORE4NB_KEY\n")


# -- 4. clock skew must not reap healthy jobs --------------------------------------------------------

def far_node(url: str, name: str, skew: float) -> subprocess.Popen:
    """A node as if on another machine whose clock is ``skew`` seconds off."""
    return start_node(url, name, processes=1, lease=1.5, module="tests.othermachine",
                      env={"CORE4NB_TEST_HOST": f"{name}-host", "CORE4NB_TEST_CLOCK_SKEW": str(skew)})


def due_job(into: Queue, *args: object) -> str:
    """Enqueue ``jobfuncs.record(*args)`` due long ago: a node whose clock is behind may claim it too."""
    job = make_job(jobfuncs.record, args)
    job.query_at = time.time() - 600
    into.store.insert([job])
    return job.id


def test_clock_skew_does_not_reap_healthy_jobs_and_dead_nodes_are_still_recovered(queue, tmp_path):
    log = str(tmp_path / "runs.txt")
    nodes = {"west": far_node(queue.url, "west", -40), "east": far_node(queue.url, "east", 40),
             "local": start_node(queue.url, "local", processes=1, lease=1.5)}
    try:
        wait_for(lambda: len(queue.store.workers()) == 3, what="three nodes")
        ids = [due_job(queue, log, i, 3.0) for i in range(6)]  # each longer than two leases
        assert sorted(queue.result(i, timeout=2 * PATIENCE) for i in ids) == list(range(6))
        assert [queue.get(i).trial for i in ids] == [1] * 6  # none was reaped
        assert {worker for _, worker, *_ in jobfuncs.read_records(log)} == {"west", "east", "local"}
        for name in ("west", "local"):
            stop_node(nodes.pop(name))
        # A dead node's job is recovered by a node on another host, whose clock says its lease has 40 s to go.
        victim = due_job(queue, log, "victim", 2.0)
        wait_for(lambda: queue.get(victim).state == State.RUNNING, what="east's claim")
        stop_node(nodes.pop("east"), signal.SIGKILL)
        nodes["rescuer"] = start_node(queue.url, "rescuer", processes=1, lease=1.5)
        assert queue.result(victim, timeout=PATIENCE) == "victim"
    finally:
        logs = [stop_node(node) for node in nodes.values()]
    job = queue.get(victim)
    assert (job.trial, job.lost_on) == (2, "worker east on east-host")
    assert "its heartbeat count stood at" in job.error.message
    assert [(tag, worker) for tag, worker, *_ in jobfuncs.read_records(log)][-1] == ("victim", "rescuer")
    assert all("reaped" not in text for text in logs[:-1])


# -- 5. an outage longer than the lease loses no live work ---------------------------------------------

def test_an_outage_longer_than_the_lease_reaps_no_live_job(outage, tmp_path):
    """The store is unavailable for longer than the nodes' lease (2 s; SQLite write-locked 4 s, MongoDB
    down 6 s) while every slot runs a job: no node reaps another's job when the store is back."""
    url, interrupt = outage
    log = str(tmp_path / "runs.txt")
    with Queue(url) as q:
        ids = [q.enqueue(jobfuncs.record, log, i, 9.0) for i in range(4)]
        nodes = [start_node(url, f"node-{name}", processes=2, lease=2.0) for name in "ab"]
        try:
            wait_for(lambda: q.counts()[State.RUNNING] == 4, what="every job running")
            interrupt()
            assert sorted(q.result(i, timeout=2 * PATIENCE) for i in ids) == [0, 1, 2, 3]
        finally:
            logs = [stop_node(node) for node in nodes]
        assert [q.get(i).trial for i in ids] == [1, 1, 1, 1]
    assert sorted(int(tag) for tag, *_ in jobfuncs.read_records(log)) == [0, 1, 2, 3]  # each ran once
    assert all("reaped" not in text for text in logs), logs


def test_status_and_jobs_work_while_another_process_holds_the_write_lock(sqlite_url):
    with Queue(sqlite_url) as q:
        q.enqueue(jobfuncs.add, 1, 2)
    locker = sqlite3.connect(sqlite_url.partition("://")[2], isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    try:
        status, jobs = cli("status", sqlite_url), cli("jobs", sqlite_url, "--json")
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    assert (status.returncode, jobs.returncode) == (0, 0), status.stderr + jobs.stderr
    assert "pending 1" in status.stdout and [j["state"] for j in json.loads(jobs.stdout)] == ["pending"]


@pytest.fixture
def read_only_mount(tmp_path):
    """A directory that becomes a read-only bind mount of itself (root only)."""
    if os.geteuid() != 0:
        pytest.skip("a read-only bind mount needs root")
    directory = tmp_path / "ro"
    directory.mkdir(mode=0o700)

    def make_read_only() -> None:
        subprocess.run(["mount", "--bind", str(directory), str(directory)], check=True)
        subprocess.run(["mount", "-o", "remount,ro,bind", str(directory)], check=True)

    yield directory, make_read_only
    subprocess.run(["umount", str(directory)], check=False, capture_output=True)


def test_status_and_jobs_read_a_read_only_queue_file(read_only_mount):
    directory, make_read_only = read_only_mount
    url = f"sqlite://{directory / 'queue.db'}"
    with Queue(url) as q:
        done, waiting = q.enqueue(jobfuncs.add, 1, 2), q.enqueue(jobfuncs.add, 3, 4, options={"priority": -1})
        assert start_node(url, "node", processes=1, burst=True).wait(PATIENCE) == 0
        q.restart(done)  # one more waiting job
    make_read_only()
    status, jobs = cli("status", url), cli("jobs", url, "--json")
    assert (status.returncode, jobs.returncode) == (0, 0), status.stderr + jobs.stderr
    assert "pending 1" in status.stdout and "complete 2" in status.stdout
    assert [j["id"] for j in json.loads(jobs.stdout)][:2] == [done, waiting]
    with Queue(url) as q:
        assert q.result(waiting) == 7


# -- 6. a full disk stops no heartbeats ---------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    """A directory on an 8 MB tmpfs (root only)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    directory = tmp_path / "small"
    directory.mkdir(mode=0o700)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m,mode=0700", "core4nb-test", str(directory)], check=True)
    yield directory
    subprocess.run(["umount", "-l", str(directory)], check=False, capture_output=True)


def test_a_full_disk_errs_the_outcome_that_does_not_fit_and_stops_no_heartbeat(small_disk, tmp_path):
    url, log = f"sqlite://{small_disk / 'queue.db'}", str(tmp_path / "runs.txt")
    with Queue(url) as q:
        big = q.enqueue(faultfuncs.big_result, 12 * 2**20, options={"priority": 2})  # cannot fit on the 8 MB disk
        long = q.enqueue(jobfuncs.record, log, "long", 8.0, options={"priority": 1})  # outlives 4 leases meanwhile
        full = start_node(url, "full", processes=2, lease=2.0)
        try:
            wait_for(lambda: q.counts()[State.RUNNING] == 2, what="both jobs running on node 'full'")
            reaper = start_node(url, "reaper", processes=1, lease=2.0)  # would reap them if heartbeats stopped
            try:
                small = [q.enqueue(jobfuncs.add, i, 1) for i in range(3)]
                assert [q.result(i, timeout=PATIENCE) for i in small] == [1, 2, 3]
                assert q.result(long, timeout=PATIENCE) == "long"
                job = q.wait(big, timeout=PATIENCE)
                assert [full.poll(), reaper.poll()] == [None, None]
            finally:
                logs = [stop_node(reaper), stop_node(full)]
        finally:
            stop_node(full)
        assert (job.state, job.error.type, job.result) == (State.ERROR, "StoreUnavailable", None)
        assert "could not store this job's complete outcome 5 times" in job.error.message
        assert "database or disk is full" in job.error.message
        assert (q.get(long).trial, q.get(big).trial) == (1, 1)  # neither was reaped
    assert all("reaped" not in text and "Traceback" not in text for text in logs), logs
