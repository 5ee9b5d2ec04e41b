"""Faults survived, bad input refused, nothing lost, no one let in -- with real processes.

Every test runs real ``core4nb worker`` processes (``tests/nodes.py``) on both stores
(a SQLite file; the nx-27017 wire-protocol server) and asserts the exact outcome: states,
results, counts, and side-effect files that must or must not exist. The autouse fixture
``no_process_left`` fails a test that leaves any process it started running (it finds them
by an environment marker, so it also sees orphaned grandchildren).

Test-side job functions live in ``tests/faultfuncs.py`` and ``tests/jobfuncs.py``.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import traceback

import psutil
import pymongo
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core4nb import Queue, State
from core4nb.calls import make_job
from core4nb.errors import PayloadError, SignatureError
from core4nb.job import Job
from core4nb.keys import key_file_path
from core4nb.store import Claimant
from core4nb.store.decode import MALFORMED_NAME
from tests import faultfuncs, jobfuncs
from tests.nodes import PATIENCE, ROOT, node_log, start_node, stop_node, wait_for
from tests.servers import WireServer, free_port

pytestmark = pytest.mark.faults

RUN_ENV = "CORE4NB_TEST_RUN"


# -- fixtures and helpers ------------------------------------------------------------------------

def _marked(run: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):
            if proc.pid != os.getpid() and proc.environ().get(RUN_ENV) == run:
                found.append(proc)
    return found


@pytest.fixture(autouse=True)
def no_process_left(wire_server: WireServer, monkeypatch: pytest.MonkeyPatch):
    """Every process started during the test (nodes, their forkservers and children, servers,
    clients) carries a marker in its environment; none may be alive once the test is over.
    The session's wire server starts before the marker is set."""
    run = secrets.token_hex(6)
    monkeypatch.setenv(RUN_ENV, run)
    yield
    deadline = time.monotonic() + PATIENCE
    while (left := _marked(run)) and time.monotonic() < deadline:
        time.sleep(0.1)
    for proc in left:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    assert not left, f"processes outlived the test: {[(p.pid, p.name()) for p in left]}"


@pytest.fixture
def queue(queue_url):
    with Queue(queue_url) as q:
        yield q


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = PATIENCE) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "core4nb", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})


class RawQueue:
    """The queue's table or collection, written directly with sqlite3 / pymongo, bypassing the store."""

    def __init__(self, url: str) -> None:
        self.sqlite = is_sqlite(url)
        if self.sqlite:
            self.conn = sqlite3.connect(url.partition("://")[2], timeout=30, isolation_level=None)
            self.conn.row_factory = sqlite3.Row
        else:
            from core4nb.store.mongo import MongoStore

            store = MongoStore(url)
            self.client = pymongo.MongoClient(store._driver_url)
            self.col = self.client[store.database][store.collections["queue"]]
            store.close()

    def read(self, job_id) -> dict:
        if self.sqlite:
            row = self.conn.execute("SELECT * FROM queue WHERE id = ?", (job_id,)).fetchone()
            doc = dict(zip(row.keys(), row, strict=True))
            with contextlib.suppress(TypeError, ValueError):
                doc["error"] = json.loads(doc["error"])
            return doc
        return self.col.find_one({"_id": job_id})

    def change(self, job_id, values: dict, unset: tuple[str, ...] = ()) -> None:
        if self.sqlite:
            assert not unset, "a SQLite row always has every column"
            assignments = ", ".join(f"{column} = ?" for column in values)
            self.conn.execute(f"UPDATE queue SET {assignments} WHERE id = ?", [*values.values(), job_id])
        else:
            update = {"$set": values, **({"$unset": dict.fromkeys(unset, "")} if unset else {})}
            self.col.update_one({"_id": job_id}, update)

    def close(self) -> None:
        (self.conn if self.sqlite else self.client).close()


@pytest.fixture
def raw(queue_url):
    raw = RawQueue(queue_url)
    yield raw
    raw.close()


# -- crashes inside one job ----------------------------------------------------------------------

def test_memory_blowup_fails_only_its_job(queue):
    """The address-space limit turns a runaway allocation into a MemoryError in that job alone."""
    hog = queue.enqueue(jobfuncs.crash, "memory", options={"priority": 1})
    good = [queue.enqueue(jobfuncs.add, i, 1) for i in range(4)]
    node = start_node(queue.url, "capped", processes=1, burst=True, extra=("--memory-limit", "300"))
    assert node.wait(PATIENCE) == 0
    job = queue.get(hog)
    assert (job.state, job.error.type, job.attempts_left) == (State.ERROR, "MemoryError", 0)
    assert [queue.result(i) for i in good] == [1, 2, 3, 4]
    # The child caught the MemoryError and served the next jobs: it did not crash.
    assert "ChildCrashed" not in node_log(node) and "child running job" not in node_log(node)


# -- fencing: a node paused past its lease ------------------------------------------------------

def test_paused_node_cannot_overwrite_the_rescuers_result(queue, tmp_path):
    log = str(tmp_path / "runs.txt")
    job_id = queue.enqueue(faultfuncs.whoami, log, "x", 3.0, options={"attempts": 2, "error_time": 0.1})
    paused = start_node(queue.url, "paused", processes=1, lease=1.5)
    rescuer = None
    try:
        # Its child has the job (a claim alone is not enough: a node stopped before it hands the job over
        # leaves nothing running), so the child runs on, finishes, and reports to a frozen node.
        wait_for(lambda: os.path.exists(f"{log}.started"), what="node 'paused''s child to start the job")
        os.kill(paused.pid, signal.SIGSTOP)
        until = queue.get(job_id).lease.until
        wait_for(lambda: time.time() > until + 0.2, what="the lease to expire")
        rescuer = start_node(queue.url, "rescuer", processes=1, lease=10)
        wait_for(lambda: getattr(queue.get(job_id).lease, "worker", None) == "rescuer", what="the rescuer's claim")
        wait_for(lambda: ("x", "paused") in [(t, w) for t, w, *_ in jobfuncs.read_records(log)],
                 what="the paused node's child to finish the job")
        os.kill(paused.pid, signal.SIGCONT)  # wakes up holding an outcome under a stale lease token
        paused_log = wait_for(lambda: "outcome is discarded" in (text := node_log(paused)) and text,
                              what="the paused node to try its stale write")
        assert queue.result(job_id, timeout=PATIENCE) == "rescuer"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(paused.pid, signal.SIGCONT)
        for node in (paused, rescuer):
            if node is not None:
                stop_node(node)
    job = queue.store.get(job_id)
    assert (job.state, job.trial, job.attempts_left, job.lost_left) == (State.COMPLETE, 2, 2, 2)
    assert f"job {job_id}: lease no longer held, its complete outcome is discarded" in paused_log
    # At least once: both ran it to the end; exactly one outcome was recorded, the rescuer's.
    assert sorted(worker for _, worker, *_ in jobfuncs.read_records(log)) == ["paused", "rescuer"]


# -- the database goes away mid-run --------------------------------------------------------------

@pytest.fixture(params=["sqlite", "mongo-wire"])
def outage(request, tmp_path):
    """(url, interrupt): interrupt() makes the store unavailable for a few seconds, mid-run.

    SQLite: another connection holds the write lock (BEGIN EXCLUSIVE) for 4 s; interrupt()
    returns the jobs complete when it took the lock and when it let go, read by a third
    connection (WAL readers are not blocked). MongoDB: the file-backed wire server is killed
    (SIGKILL) and restarted on the same port 6 s later -- longer than the client's 5 s server
    selection timeout, so every process sees errors."""
    if request.param == "sqlite":
        path = tmp_path / "queue.db"

        def lock() -> list[int]:
            conn, reader = sqlite3.connect(path, isolation_level=None), sqlite3.connect(path)
            complete = "SELECT COUNT(*) FROM queue WHERE state = 'complete'"
            conn.execute("BEGIN EXCLUSIVE")
            frozen = [reader.execute(complete).fetchone()[0]]
            time.sleep(4)
            frozen.append(reader.execute(complete).fetchone()[0])
            conn.execute("COMMIT")
            conn.close(), reader.close()
            return frozen

        yield f"sqlite://{path}", lock
        return
    server = WireServer(tmp_path / "nx", data_dir=tmp_path / "nx-data").start()
    try:
        yield f"{server.url}/faults?collection_prefix=sys_", lambda: server.restart(signal.SIGKILL, down_for=6)
    finally:
        server.stop()


def test_store_outage_mid_run_loses_nothing(outage, tmp_path, caplog):
    url, interrupt = outage
    log = str(tmp_path / "runs.txt")
    n = 60
    with Queue(url) as queue:
        ids = [queue.enqueue(jobfuncs.record, log, i, 0.1) for i in range(n)]
        nodes = [start_node(url, f"node-{name}", processes=2, lease=30) for name in "ab"]
        try:
            wait_for(lambda: queue.counts()[State.COMPLETE] >= 6, what="a run in progress")
            before = queue.counts()[State.COMPLETE]
            frozen = []
            interrupter = threading.Thread(target=lambda: frozen.append(interrupt()))
            interrupter.start()
            # This client waits through the outage: Queue.wait retries with backoff.
            assert [queue.result(i, timeout=2 * PATIENCE) for i in ids] == list(range(n))
            interrupter.join()
            assert [node.poll() for node in nodes] == [None, None]  # both nodes survived it
        finally:
            logs = [stop_node(node) for node in nodes]
        assert before < n and [node.returncode for node in nodes] == [0, 0]
        assert queue.counts()[State.COMPLETE] == n
    # Nothing ran twice: no lease expired, no claim or outcome was lost with a connection.
    assert sorted(int(tag) for tag, *_ in jobfuncs.read_records(log)) == list(range(n))
    outages = [text.count("is unavailable") for text in logs]
    recoveries = [text.count("is reachable again") for text in logs]
    if is_sqlite(url):  # writers waited out the lock (no job finished while it was held)
        assert outages == recoveries == [0, 0]
        assert frozen[0][0] == frozen[0][1] < n
    else:  # a node logs the outage once when it began and once when it ended, never per retry; one whose
        # calls all fell in the last 5 s of the outage waited them out in server selection and saw none
        assert outages == recoveries and set(outages) <= {0, 1} and sum(outages) >= 1, logs
        assert sum("is unavailable" in r.getMessage() for r in caplog.records if r.name == "core4nb.queue") == 1
    for text in logs:
        assert "Traceback" not in text, text


# -- the notebook dies mid-map -------------------------------------------------------------------

CLIENT = """
import sys
from core4nb import Core4Executor
from tests import jobfuncs
url, log, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
results = Core4Executor(url).map(jobfuncs.record, [log] * n, range(n), [0.4] * n, chunksize=2)
print(results.job_id, flush=True)
print("first", next(results), flush=True)
sys.stdin.read()  # stays mid-map until killed
"""

ATTACH = """
import json, sys
from core4nb import Core4Executor
print(json.dumps(Core4Executor(sys.argv[1]).attach(sys.argv[2]).result(timeout=120)))
"""


def test_killed_client_then_attach_gets_every_result(queue_url, tmp_path):
    log, n = str(tmp_path / "runs.txt"), 16
    nodes = [start_node(queue_url, f"node-{name}", processes=2) for name in "ab"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    client = subprocess.Popen([sys.executable, "-c", CLIENT, queue_url, log, str(n)], cwd=ROOT, text=True, env=env,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        root_id = client.stdout.readline().strip()
        assert client.stdout.readline().strip() == "first 0"
        client.kill()
        client.wait()
        with Queue(queue_url) as queue:
            assert queue.counts(root_id)[State.COMPLETE] < n // 2 + 1  # killed mid-map: chunks were still open
        attached = subprocess.run([sys.executable, "-c", ATTACH, queue_url, root_id], cwd=ROOT, capture_output=True,
                                  text=True, timeout=3 * PATIENCE, env=env)
        assert attached.returncode == 0, attached.stderr
        assert json.loads(attached.stdout) == list(range(n))
    finally:
        client.kill()
        client.wait()
        for node in nodes:
            stop_node(node)
    assert sorted(int(tag) for tag, *_ in jobfuncs.read_records(log)) == list(range(n))  # each item ran once


# -- load ----------------------------------------------------------------------------------------

def _rss_sampler(nodes: list[subprocess.Popen], samples: list[tuple[float, int, int]], stop: threading.Event):
    """Every 0.25 s: (time, largest node RSS, largest child RSS) over the running nodes."""
    procs = [psutil.Process(node.pid) for node in nodes]
    while not stop.wait(0.25):
        node_rss, child_rss = [0], [0]
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                node_rss.append(proc.memory_info().rss)
                child_rss.extend(c.memory_info().rss for c in proc.children(recursive=True))
        if len(node_rss) > 1:
            samples.append((time.monotonic(), max(node_rss), max(child_rss)))


def _thirds(samples: list[tuple[float, int, int]], column: int) -> tuple[int, int]:
    """Largest value in the first and in the last third of the run."""
    third = len(samples) // 3
    return max(s[column] for s in samples[:third]), max(s[column] for s in samples[-third:])


def test_load_every_result_checked_and_rss_bounded(queue_url):
    """10,000 jobs through 4 nodes on SQLite; 1,000 on the wire server (it scans the collection per claim)."""
    n = 10_000 if is_sqlite(queue_url) else 1_000
    with Queue(queue_url) as queue:
        started = time.perf_counter()
        jobs = [make_job(jobfuncs.add, (i, i)) for i in range(n)]
        queue.store.insert(jobs)
        enqueued = time.perf_counter() - started
        nodes = [start_node(queue_url, f"load-{k}", processes=2, burst=True) for k in range(4)]
        samples: list[tuple[float, int, int]] = []
        stop = threading.Event()
        sampler = threading.Thread(target=_rss_sampler, args=(nodes, samples, stop))
        sampler.start()
        try:
            codes = [node.wait(4 * PATIENCE) for node in nodes]
        finally:
            stop.set()
            sampler.join()
            for node in nodes:
                stop_node(node)
        elapsed = time.perf_counter() - started - enqueued
        assert codes == [0, 0, 0, 0]
        assert queue.counts()[State.COMPLETE] == n
        results = {job.id: job for job in queue.store.find(blobs=True)}
        from core4nb.remote import outcome

        assert [outcome(results[job.id], queue.store) for job in jobs] == [2 * i for i in range(n)]
    first_node, last_node = _thirds(samples, 1)
    first_child, last_child = _thirds(samples, 2)
    print(f"\nload {queue_url.split(':')[0]}: {n} jobs, enqueue {enqueued:.1f} s, run {elapsed:.1f} s "
          f"({n / elapsed:.0f} jobs/s); node RSS max first/last third {first_node / 2**20:.1f}/{last_node / 2**20:.1f} "
          f"MB, child {first_child / 2**20:.1f}/{last_child / 2**20:.1f} MB, {len(samples)} samples")
    assert len(samples) >= 6
    assert last_node <= 1.5 * first_node and last_child <= 1.5 * first_child


# -- malformed documents -------------------------------------------------------------------------

MISSING = object()  # a Mongo field removed with $unset
TEXT = st.text(alphabet="abcdfghij", min_size=1, max_size=6)  # never a number, so SQLite keeps it as text
HALF = st.integers(0, 999).map(lambda n: n + 0.5)  # an integral float would come back as an int
BLOB = st.binary(min_size=1, max_size=6)
ANNOTATIONS = {name: str(kind) for name, kind in Job.__annotations__.items()}
# Fields a claim does not overwrite and its filter does not read (state, query_at, kill_requested):
# so a document corrupted in one of them is claimable, and the claim must set it aside.
FUZZED = ["name", "args_summary", "payload", "parent_id", "root_id", "priority", "max_parallel", "attempts",
          "attempts_left", "trial", "defer_time", "defer_max", "error_time", "wall_time", "progress_value",
          "progress_message", "enqueued_at", "finished_at", "deferred_since", "runtime", "result", "error",
          "restarted_from"]


def wrong_value(field: str, sqlite: bool) -> st.SearchStrategy:
    """A value of a type ``field`` cannot have, that the backend stores as it is.

    SQLite converts by column affinity (5 into a TEXT column is '5'), so only what survives
    that is used; nx turns a $set True into 1, so booleans are left out for MongoDB."""
    kind = ANNOTATIONS[field]
    if field == "error":
        shapes = ["{oops", '"text"', '{"type": 1}', "[1, 2]"] if sqlite else ["text", 5, {"type": 1}, {"a": "b"}]
        return st.sampled_from(shapes) | BLOB
    if sqlite:
        options = {"str": [BLOB], "bytes": [TEXT, st.integers(), HALF], "int": [TEXT, HALF, BLOB],
                   "float": [TEXT, BLOB]}[kind.split(" |")[0]]
    else:
        options = {"str": [st.integers(), HALF, BLOB], "bytes": [TEXT, st.integers()], "int": [TEXT, HALF],
                   "float": [TEXT]}[kind.split(" |")[0]]
        options += [st.just([1, 2]), st.just({"a": 1})]
        # nx's $inc makes a missing or null trial 1: that document is valid again. A job that has not run has
        # no result: without the field it is as valid as with None (large fields are checked when present).
        if field not in ("trial", "result"):
            options.append(st.just(MISSING))
            if "None" not in kind:
                options.append(st.none())
    if field == "attempts":
        options.append(st.just(0))  # the right type, out of range
    return st.one_of(options)


def corruptions(sqlite: bool) -> st.SearchStrategy:
    fields = st.lists(st.sampled_from(FUZZED), min_size=1, max_size=2, unique=True)
    return fields.flatmap(lambda names: st.tuples(*[st.tuples(st.just(f), wrong_value(f, sqlite)) for f in names]))


def test_malformed_documents_are_set_aside_never_run(queue, raw, tmp_path):
    """Fuzzed documents written straight into sys.queue: each claim moves them to error, naming the
    field; the node never crashes, never runs them, and keeps serving the good jobs."""
    sqlite = is_sqlite(queue.url)
    node = start_node(queue.url, "fuzzed", processes=1)
    examples = []

    @settings(max_examples=6, deadline=None, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(corruption=corruptions(sqlite))
    def run(corruption):
        marker = tmp_path / f"ran-{len(examples)}.txt"
        examples.append(corruption)
        job = make_job(jobfuncs.touch, (str(marker),))
        job.query_at = time.time() + 3600  # not claimable until it is corrupted
        queue.store.insert([job])
        values = {f: v for f, v in corruption if v is not MISSING}
        raw.change(job.id, {**values, "query_at": time.time()}, unset=tuple(f for f, v in corruption if v is MISSING))
        sentinel = queue.enqueue(jobfuncs.add, 2, 3)
        assert queue.result(sentinel, timeout=PATIENCE) == 5
        wait_for(lambda: raw.read(job.id)["state"] != "pending", what="the claim of the bad document")
        doc = raw.read(job.id)
        assert doc["state"] == "error" and doc["error"]["type"] == "MalformedJob", (corruption, doc)
        message = doc["error"]["message"]
        assert "set aside without running" in message
        assert any(f"'{field}" in message for field, _ in corruption), (corruption, message)
        listed = queue.get(job.id)  # reading it back never fails: a placeholder if still unreadable
        assert listed.state == State.ERROR and listed.error.type == "MalformedJob"
        assert not marker.exists()

    try:
        run()
        assert node.poll() is None
    finally:
        text = stop_node(node)
    assert node.returncode == 0 and "Traceback" not in text and len(examples) >= 6


def test_finish_and_claim_sets_a_malformed_next_job_aside(queue, raw):
    """A node's combined write (outcome + next claim) meets a corrupted document first: it is moved to
    error and the claim goes on to the next good job."""
    store, claimant = queue.store, Claimant(worker="w1", node="node-a", pid=4242)
    store.insert([make_job(jobfuncs.add, (1, 2))])
    first = store.claim(claimant)
    bad, good = make_job(jobfuncs.add, (3, 4)), make_job(jobfuncs.add, (5, 6))
    store.insert([bad, good])
    raw.change(bad.id, {"priority": "high"})  # claimed before `good` (same priority, older id), unreadable
    done, nxt = store.finish_and_claim(first.id, first.lease.token, State.COMPLETE, claimant)
    assert done and nxt.id == good.id
    doc = raw.read(bad.id)
    assert doc["state"] == "error" and "'priority'" in doc["error"]["message"]


def test_an_option_out_of_range_in_a_document_is_set_aside(queue, raw):
    """A value of the right type that no job option allows (attempts=0, error_time=-1: written by hand)
    makes the document malformed like a wrong type does; the claim moves it to error, naming the field."""
    store, claimant = queue.store, Claimant(worker="w1", node="node-a", pid=4242)
    jobs = [make_job(jobfuncs.add, (i, i)) for i in range(3)]
    store.insert(jobs)
    raw.change(jobs[0].id, {"attempts": 0})
    raw.change(jobs[1].id, {"error_time": -1.0})
    assert store.claim(claimant).id == jobs[2].id
    for job, problem in ((jobs[0], "'attempts' is out of range: attempts=0, expected >= 1"),
                         (jobs[1], "'error_time' is out of range: error_time=-1.0, expected >= 0")):
        doc = raw.read(job.id)
        assert doc["state"] == "error" and doc["error"]["type"] == "MalformedJob"
        assert f"field {problem}" in doc["error"]["message"]


def test_unclaimable_malformed_documents_are_listed_never_run(queue, raw, tmp_path):
    """Documents no claim matches (a state that is not one, a state or query_at the filter cannot
    read) stay as they are; listing, counting and status show them as placeholders."""
    sqlite = is_sqlite(queue.url)
    cases = [({"state": "bogus"}, ()), ({"query_at": "soon"}, ()) if sqlite else ({}, ("state",))]
    ids = []
    for i, (values, unset) in enumerate(cases):
        job = make_job(jobfuncs.touch, (str(tmp_path / f"ran-{i}.txt"),))
        job.query_at = time.time() + 3600  # not claimable until it is corrupted
        queue.store.insert([job])
        raw.change(job.id, {"query_at": time.time(), **values}, unset=unset)
        ids.append(job.id)
    good = queue.enqueue(jobfuncs.add, 1, 1)
    node = start_node(queue.url, "lister", processes=1, burst=True)
    assert node.wait(PATIENCE) == 0 and queue.result(good) == 2
    listed = {job.id: job for job in queue.jobs()}
    assert [listed[i].name for i in ids] == [MALFORMED_NAME, MALFORMED_NAME]
    expected = ["'state'", "'query_at'" if sqlite else "'state'"]
    assert [e in listed[i].error.message for i, e in zip(ids, expected, strict=True)] == [True, True]
    # An unreadable state shows (and counts) as error; a readable open one as it is.
    assert [listed[i].state for i in ids] == [State.ERROR, State.PENDING if sqlite else State.ERROR]
    counts = queue.counts()
    assert (counts[State.COMPLETE], counts[State.ERROR], counts[State.PENDING]) == ((1, 1, 1) if sqlite else (1, 2, 0))
    out = cli("jobs", queue.url, "--json")
    assert out.returncode == 0 and sum(j["name"] == MALFORMED_NAME for j in json.loads(out.stdout)) == 2
    status = cli("status", queue.url)
    assert status.returncode == 0 and ("error 1" if sqlite else "error 2") in status.stdout
    assert raw.read(ids[0])["state"] == "bogus"  # untouched
    assert list(tmp_path.glob("ran-*")) == []


# -- payloads: unpicklable, huge, tampered -----------------------------------------------------

def test_unpicklable_argument_is_refused_before_anything_is_stored(queue):
    with pytest.raises(PayloadError, match=r"argument 1 \(a lock\)"):
        queue.enqueue(jobfuncs.add, 1, threading.Lock())
    assert sum(queue.counts().values()) == 0


def test_unpicklable_result_fails_the_job_naming_its_type(queue):
    job_id = queue.enqueue(faultfuncs.unpicklable_result)
    start_node(queue.url, "node", processes=1, burst=True).wait(PATIENCE)
    job = queue.get(job_id)
    assert (job.state, job.error.type) == (State.ERROR, "UnpicklableError")  # a PayloadError and a PicklingError
    assert "cannot serialize the job's result (a _thread.lock)" in job.error.message
    with pytest.raises(PayloadError, match=r"_thread\.lock"):
        queue.result(job_id)


def test_200_mb_argument_arrives_whole(queue, raw):
    """It travels as a blob beside the job (a file on SQLite, GridFS on MongoDB): the job's row stays small."""
    data = os.urandom(200 * 2**20)
    expected = faultfuncs.digest(data)
    job_id = queue.enqueue(faultfuncs.digest, data)
    del data
    assert len(raw.read(job_id)["payload"]) < 4096
    assert [b.size for b in queue.store.blobs.listing()] == [200 * 2**20]
    assert start_node(queue.url, "node", processes=1, burst=True).wait(3 * PATIENCE) == 0
    assert queue.result(job_id) == expected


def test_sqlite_payload_over_the_blob_limit_is_a_clear_error(sqlite_url):
    """A pickle that stays large in band (text, many small objects) still meets SQLite's blob limit."""
    with Queue(sqlite_url) as queue:
        queue.store._conn().setlimit(sqlite3.SQLITE_LIMIT_LENGTH, 2**20)  # SQLite's 1 GB maximum, scaled down
        with pytest.raises(PayloadError, match=r"over the embedded queue's size limit of 1 MB.*GridFS"):
            queue.enqueue(len, "x" * (2 * 2**20))
        assert sum(queue.counts().values()) == 0


def test_tampered_payload_is_never_unpickled(queue, raw, tmp_path):
    """The payload names side-A.txt; the stored bytes are changed to side-B.txt. Neither file may appear."""
    side_a, side_b = tmp_path / "side-A.txt", tmp_path / "side-B.txt"
    job_id = queue.enqueue(jobfuncs.touch, str(side_a))
    payload = raw.read(job_id)["payload"]
    raw.change(job_id, {"payload": payload.replace(b"side-A", b"side-B")})
    assert start_node(queue.url, "node", processes=1, burst=True).wait(PATIENCE) == 0
    job = queue.get(job_id)
    assert (job.state, job.error.type) == (State.ERROR, "SignatureError")
    assert "bytes were changed" in job.error.message
    assert not side_a.exists() and not side_b.exists()


def test_tampered_result_is_never_unpickled(queue, raw, tmp_path):
    """The result unpickles by creating side-A.txt; its stored bytes are changed to side-B.txt."""
    side_a, side_b = tmp_path / "side-A.txt", tmp_path / "side-B.txt"
    job_id = queue.enqueue(faultfuncs.make_trap, str(side_a))
    assert start_node(queue.url, "node", processes=1, burst=True).wait(PATIENCE) == 0
    result = raw.read(job_id)["result"]
    raw.change(job_id, {"result": result.replace(b"side-A", b"side-B")})
    with pytest.raises(SignatureError, match="bytes were changed"):
        queue.result(job_id)
    assert not side_a.exists() and not side_b.exists()
    raw.change(job_id, {"result": result})  # the control: untouched bytes do unpickle, and spring the trap
    queue.result(job_id)
    assert side_a.exists() and not side_b.exists()


# -- the key and the URL --------------------------------------------------------------------------

def test_key_file_readable_by_others_stops_the_node(queue, tmp_path):
    """The node refuses to start (exit 1, saying how to fix it); the job waits, untouched, and runs
    once the key file is private again."""
    marker = tmp_path / "ran.txt"
    job_id = queue.enqueue(jobfuncs.touch, str(marker))  # creates the key file, mode 600
    key = key_file_path()
    key.chmod(0o644)
    node = start_node(queue.url, "careless", processes=1)
    assert node.wait(PATIENCE) == 1
    text = node_log(node)
    assert f"key file {key} is accessible by other users (mode 644)" in text and f"chmod 600 {key}" in text
    assert "Traceback" not in text
    job = queue.get(job_id)
    assert (job.state, job.trial, queue.store.workers()) == (State.PENDING, 0, [])
    assert not marker.exists()
    key.chmod(0o600)
    assert start_node(queue.url, "careful", processes=1, burst=True).wait(PATIENCE) == 0
    assert queue.get(job_id).state == State.COMPLETE and marker.exists()


def test_url_credentials_are_never_printed(wire_server):
    db, port = f"c4t_{secrets.token_hex(4)}", wire_server.port
    # nx accepts PLAIN credentials without checking them; SCRAM (the default) it cannot do.
    good = f"mongodb://user:secret@127.0.0.1:{port}/{db}?collection_prefix=sys_&authMechanism=PLAIN"
    bad = {
        "handshake fails": f"mongodb://user:secret@127.0.0.1:{port}/{db}?collection_prefix=sys_",
        "unreachable": f"mongodb://user:secret@127.0.0.1:{free_port()}/{db}?serverSelectionTimeoutMS=300",
        "no database": f"mongodb://user:secret@127.0.0.1:{port}",
        "invalid": f"mongodb://user:secret/@127.0.0.1:{port}/{db}",
        "not a URL": "user:secret@127.0.0.1/db",
    }
    with Queue(good) as queue:
        job_id = queue.enqueue(jobfuncs.add, 1, 2)
    outputs = [cli("status", good), cli("status", good, "--json"), cli("jobs", good, "--json"),
               cli("status", env={"CORE4NB_URL": good}), cli("worker", good, "--burst", "--log-level", "DEBUG"),
               cli("kill", job_id, "--url", good)]
    assert [o.returncode for o in outputs] == [0] * 6
    assert "mongodb://user:***@127.0.0.1" in outputs[0].stdout and "serving mongodb://user:***@" in outputs[4].stderr
    for what, url in bad.items():
        out = cli("status", url)
        assert out.returncode == 1 and out.stderr.startswith("core4nb: error: "), (what, out.stderr)
        outputs.append(out)
        with pytest.raises(Exception) as info:
            Queue(url)
        outputs.append(subprocess.CompletedProcess([], 1, "".join(traceback.format_exception(info.value)), ""))
    for out in outputs:
        assert "secret" not in out.stdout + out.stderr
