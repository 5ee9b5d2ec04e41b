"""MongoDB-only behaviour of ``MongoStore``: what the shared contract suite cannot see.

GridFS blobs, URL handling, the unreachable-server error, round trips per verb, the
unique-slot ``max_parallel`` under racing processes, fork safety. Runs on the nx-27017
wire-protocol server, and on a real MongoDB when ``CORE4NB_TEST_MONGO_URL`` is set.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import time

import gridfs
import pymongo
import pytest
from pymongo import monitoring

from core4nb.errors import ConfigError, StoreUnavailable
from core4nb.job import Job, State
from core4nb.store import Claimant, WorkerInfo, open_store
from core4nb.store import mongo as mongo_module
from core4nb.store.mongo import MongoStore
from core4nb.store.mongo_blobs import FRAME_LIMIT
from tests.conftest import REAL_MONGO_URL, _mongo_url
from tests.servers import WireServer, free_port

CLAIMANT = Claimant("w1", "node-a", 4242)
BIG = FRAME_LIMIT + 12 * 1024 * 1024  # 20 MB: over the inline limit and over MongoDB's 16 MB document limit


@pytest.fixture(params=["mongo-wire"] + (["mongo-real"] if REAL_MONGO_URL else []))
def url(request: pytest.FixtureRequest):
    if request.param == "mongo-wire":
        yield _mongo_url(request.getfixturevalue("wire_server").url, "sys_")
        return
    url = _mongo_url(REAL_MONGO_URL, "sys.")
    yield url
    client = pymongo.MongoClient(url.split("?")[0])
    client.drop_database(client.get_default_database().name)
    client.close()


@pytest.fixture
def store(url: str):
    with open_store(url) as s:
        yield s


def raw_db(store: MongoStore):
    """The store's database through a client of our own, to look at documents and files."""
    return pymongo.MongoClient(store._driver_url)[store.database]


def blob_files(store: MongoStore) -> list:
    return list(gridfs.GridFSBucket(raw_db(store), bucket_name=store.collections["blobs"]).find())


# -- GridFS ------------------------------------------------------------------------------------------

def test_large_payload_and_result_round_trip_through_gridfs(store: MongoStore) -> None:
    payload, result = os.urandom(BIG), os.urandom(BIG)
    job = Job(name="big", payload=payload)
    store.insert([job])
    doc = raw_db(store)[store.collections["queue"]].find_one({"_id": job.id})
    assert doc["payload"] is None and doc["payload_ref"]  # the document keeps a reference only
    assert store.get(job.id).payload == payload
    assert store.get(job.id, blobs=False).payload is None

    claimed = store.claim(CLAIMANT)
    assert claimed.payload == payload
    assert store.finish(claimed.id, claimed.lease.token, State.COMPLETE, result=result)
    [done] = store.find(ids=[job.id], blobs=True)
    assert (done.payload, done.result) == (payload, result)
    assert len(blob_files(store)) == 2

    assert store.remove(job.id) == 1
    assert blob_files(store) == []


def test_document_of_an_earlier_version_without_output_reads_and_runs(store: MongoStore) -> None:
    job = Job(name="old", payload=b"p")
    store.insert([job])
    raw_db(store)[store.collections["queue"]].update_one({"_id": job.id}, {"$unset": {"output": ""}})
    assert store.get(job.id).output == ""
    claimed = store.claim(CLAIMANT)
    assert store.finish(claimed.id, claimed.lease.token, State.COMPLETE, output="done\n")
    assert store.get(job.id).output == "done\n"


def test_fenced_off_finish_leaves_no_blob_behind(store: MongoStore) -> None:
    store.insert([Job(name="big", payload=b"p")])
    job = store.claim(CLAIMANT)
    assert not store.finish(job.id, "stale-token", State.COMPLETE, result=os.urandom(BIG))
    assert blob_files(store) == []


def test_failed_insert_removes_its_files_and_only_its_files(store: MongoStore) -> None:
    first = Job(name="big", payload=os.urandom(BIG))
    store.insert([first])
    again = Job(name="big", id=first.id, payload=os.urandom(BIG))
    with pytest.raises(ValueError, match="already in queue"):
        store.insert([Job(name="other", payload=os.urandom(BIG)), again])
    assert [f.metadata["job_id"] for f in blob_files(store)] == [first.id]
    assert store.get(first.id).payload == first.payload
    assert store.counts()[State.PENDING] == 1


# -- URLs and connection -------------------------------------------------------------------------------

def test_collection_prefix_is_stripped_and_names_the_collections(url: str) -> None:
    prefix = url.split("collection_prefix=")[1]
    with open_store(url + "&readPreference=secondaryPreferred") as store:
        assert "collection_prefix" not in store._driver_url
        assert store._client.read_preference.mongos_mode == "secondaryPreferred"  # other options pass through
        store.insert([Job(name="x")])
        store.save_worker(WorkerInfo("n1", "host", 1, 2))
        names = set(raw_db(store).list_collection_names())
    assert {f"{prefix}queue", f"{prefix}worker"} <= names


def test_url_without_database_is_a_config_error() -> None:
    for bad in ("mongodb://127.0.0.1:1", "mongodb://127.0.0.1:1/", "mongodb://127.0.0.1:1/?collection_prefix=x_"):
        with pytest.raises(ConfigError, match="names no database"):
            MongoStore(bad)


def test_malformed_url_error_never_shows_the_password() -> None:
    with pytest.raises(ConfigError) as info:
        MongoStore("mongodb://alice:s3cret@127.0.0.1:notaport/db")
    assert "s3cret" not in str(info.value) and "alice:***@" in str(info.value)


def test_unreachable_server_is_store_unavailable_at_construction() -> None:
    url = f"mongodb://alice:s3cret@127.0.0.1:{free_port()}/core4?serverSelectionTimeoutMS=300&collection_prefix=t_"
    start = time.monotonic()
    with pytest.raises(StoreUnavailable) as info:
        open_store(url)
    message = str(info.value)
    assert time.monotonic() - start < 5  # the URL's own timeout wins over the 5 s default
    assert "s3cret" not in message and "mongodb://alice:***@127.0.0.1" in message
    assert "start the server" in message and "\n" not in message
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_server_gone_mid_session_is_store_unavailable(tmp_path) -> None:
    server = WireServer(tmp_path / "nx").start()
    try:
        store = open_store(f"{server.url}/core4?collection_prefix=t_&serverSelectionTimeoutMS=300")
        store.insert([Job(name="x")])
    finally:
        server.stop()
    with pytest.raises(StoreUnavailable, match=r"cannot reach MongoDB for queue mongodb://127\.0\.0\.1"):
        store.claim(CLAIMANT)
    store.close()


# -- round trips -------------------------------------------------------------------------------------

class _Commands(monitoring.CommandListener):
    def __init__(self) -> None:
        self.names: list[str] = []

    def started(self, event) -> None:
        self.names.append(event.command_name)

    def succeeded(self, event) -> None:
        pass

    def failed(self, event) -> None:
        pass

    def take(self) -> list[str]:
        names, self.names = self.names, []
        return names


@pytest.fixture
def counted(url: str, monkeypatch: pytest.MonkeyPatch):
    commands = _Commands()
    monkeypatch.setattr(mongo_module, "MongoClient", functools.partial(pymongo.MongoClient,
                                                                     event_listeners=[commands]))
    with open_store(url) as store:
        commands.take()
        yield store, commands


def test_one_round_trip_per_verb_for_a_plain_job(counted) -> None:
    store, commands = counted
    store.insert([Job(name="plain", payload=b"p") for _ in range(3)])
    assert commands.take() == ["insert"]
    job = store.claim(CLAIMANT)
    assert commands.take() == ["findAndModify"]
    assert store.finish(job.id, job.lease.token, State.COMPLETE, result=b"r")
    assert commands.take() == ["update"]
    assert store.get(job.id).result == b"r"
    assert commands.take() == ["find"]
    assert store.heartbeat({}) == set()
    assert commands.take() == []


def test_an_idle_claim_reads_first_and_remembers_whether_more_were_ready(counted) -> None:
    """An idle node's claim reads before it writes. Having taken the only job its read found (one job
    submitted at a time), the next claim reads again: one round trip to find nothing, not two. With
    more ready, the next claim writes at once; so does one the work bell woke."""
    store, commands = counted
    assert store.claim(CLAIMANT) is None
    assert commands.take() == ["findAndModify", "find"]  # a fresh store is not idle: the empty claim's two
    assert store.claim(CLAIMANT) is None
    assert commands.take() == ["find"]
    store.insert([Job(name="one", payload=b"p")])
    commands.take()
    assert store.claim(CLAIMANT).name == "one"
    assert commands.take() == ["find", "findAndModify"]
    assert store.claim(CLAIMANT) is None
    assert commands.take() == ["find"]
    store.insert([Job(name="two", payload=b"p") for _ in range(2)])
    commands.take()
    assert store.claim(CLAIMANT) and store.claim(CLAIMANT)
    assert commands.take() == ["find", "findAndModify", "findAndModify"]
    assert store.claim(CLAIMANT) is None  # idle again
    store.insert([Job(name="rung", payload=b"p")])
    commands.take()
    assert store.claim(CLAIMANT, rung=True).name == "rung"  # woken by the work bell: no look first
    assert commands.take() == ["findAndModify"]


def test_finishing_a_limited_job_rings_work_in_one_round_trip(counted) -> None:
    """The store that claimed a limited job knows its max_parallel: its finish rings "work" for the
    freed slot without reading the document, and a kill-flagged job that would wait is killed in two."""
    store, commands = counted
    store.insert([Job(name="lim", max_parallel=1) for _ in range(2)])
    work = store.listen("work")
    try:
        job = store.claim(CLAIMANT)
        commands.take()
        work.drain()
        assert store.finish(job.id, job.lease.token, State.COMPLETE)
        assert commands.take() == ["update"]
        assert work.wait(1)
        job = store.claim(CLAIMANT)
        assert store.request_kill(job.id) == 1
        commands.take()
        assert store.finish(job.id, job.lease.token, State.FAILED)
        assert commands.take() == ["update", "update"]
        assert store.get(job.id).state is State.KILLED
    finally:
        work.close()


def test_a_map_chunk_settles_its_gathering_root_in_the_writes_right_after_its_own(counted) -> None:
    """While a sibling is open a chunk's finish costs one read more (a sibling is open); the last chunk's
    reads that none is, that its root is gathering and that no chunk failed, and completes the root."""
    store, commands = counted
    root = Job(name="map:fn", state=State.GATHERING, gather=True)
    store.insert([Job(name="fn", parent_id=root.id, root_id=root.id) for _ in range(2)] + [root])
    first, last = store.claim(CLAIMANT), store.claim(CLAIMANT)
    commands.take()
    assert store.finish(first.id, first.lease.token, State.COMPLETE)
    assert commands.take() == ["update", "find"]
    assert store.finish(last.id, last.lease.token, State.COMPLETE)
    assert commands.take() == ["update", "find", "find", "find", "update"]
    assert store.get(root.id).state is State.COMPLETE


def test_a_chunk_whose_finish_claims_a_sibling_skips_the_check_of_its_root(counted) -> None:
    """finish_and_claim claims before it checks the root; a claimed sibling is open under this node's
    lease, so the root cannot be done and is not read. The node's last chunk checks it and completes it."""
    store, commands = counted
    root = Job(name="map:fn", state=State.GATHERING, gather=True)
    store.insert([Job(name="fn", parent_id=root.id, root_id=root.id) for _ in range(2)] + [root])
    first = store.claim(CLAIMANT)
    commands.take()
    done, second = store.finish_and_claim(first.id, first.lease.token, State.COMPLETE, CLAIMANT)
    assert done and second.parent_id == root.id
    assert commands.take() == ["update", "findAndModify"]
    assert store.get(root.id).state is State.GATHERING
    commands.take()
    assert store.finish_and_claim(second.id, second.lease.token, State.COMPLETE, CLAIMANT) == (True, None)
    claim_of_nothing, check_and_complete = ["findAndModify", "find"], ["find", "find", "find", "update"]
    assert commands.take() == ["update", *claim_of_nothing, *check_and_complete]
    assert store.get(root.id).state is State.COMPLETE


def test_settle_roots_completes_a_root_whose_last_childs_writer_stopped_short(store: MongoStore) -> None:
    """Without a transaction the root is settled in the write after its last child's: a node that dies (or
    loses the store) in between leaves it gathering, and housekeeping's sweep settles it."""
    root = Job(name="map:fn", state=State.GATHERING, gather=True)
    kid = Job(name="fn", parent_id=root.id, root_id=root.id)
    store.insert([kid, root])
    raw_db(store)[store.collections["queue"]].update_one({"_id": kid.id}, {"$set": {"state": "complete"}})
    assert store.get(root.id).state is State.GATHERING
    assert store.settle_roots() == 1
    assert store.get(root.id).state is State.COMPLETE
    assert store.settle_roots() == 0


def test_limited_job_whose_slot_is_free_claims_in_one_round_trip(counted) -> None:
    store, commands = counted
    store.insert([Job(name="lim", max_parallel=2) for _ in range(2)])  # slots lim#0 and lim#1
    commands.take()
    assert store.claim(CLAIMANT) and store.claim(CLAIMANT)
    assert commands.take() == ["findAndModify", "findAndModify"]


def test_limited_job_finds_another_free_slot(store: MongoStore) -> None:
    # Three batches: every job was given slot #0 first, so claims 2 and 3 take the contended path.
    jobs = [Job(name="lim", max_parallel=2) for _ in range(3)]
    for job in jobs:
        store.insert([job])
    first, second = store.claim(CLAIMANT), store.claim(CLAIMANT)
    assert [first.id, second.id] == [jobs[0].id, jobs[1].id]
    assert store.claim(CLAIMANT) is None  # both slots held
    # A reaped job gives its slot back too.
    assert store.finish(first.id, first.lease.token, State.FAILED, query_at=0.0)
    third = store.claim(CLAIMANT)
    assert third.id == first.id  # failed, claimable again, older than jobs[2]
    queue = raw_db(store)[store.collections["queue"]]
    assert sorted(d["slot"] for d in queue.find({"state": "running"})) == ["lim#0", "lim#1"]


def test_reap_frees_the_slot(store: MongoStore) -> None:
    store.insert([Job(name="solo", max_parallel=1, attempts=2, error_time=0.0)])
    job = store.claim(CLAIMANT, lease_seconds=0.1)
    time.sleep(0.2)
    [reaped] = store.reap()
    assert reaped.state is State.FAILED and reaped.error.type == "WorkerLost"
    assert store.claim(CLAIMANT).id == job.id


def test_save_worker_upserts_by_name(store: MongoStore) -> None:
    store.save_worker(WorkerInfo("n1", "host", 1, 2))
    store.save_worker(WorkerInfo("n1", "host", 1, 4, running=["a", "b"]))
    docs = list(raw_db(store)[store.collections["worker"]].find())
    assert [(d["_id"], d["slots"], d["running"]) for d in docs] == [("n1", 4, ["a", "b"])]


# -- processes ---------------------------------------------------------------------------------------

def _work_limited(url: str, worker: str, barrier, out) -> None:
    """Child: claim until the queue is empty, holding each job briefly; report (id, name, start, end)."""
    try:
        spans = []
        with open_store(url) as store:
            barrier.wait(timeout=120)
            idle_since = None
            while True:
                job = store.claim(Claimant(worker, "race-node", os.getpid()))
                if job is None:
                    idle_since = idle_since or time.monotonic()
                    if time.monotonic() - idle_since > 1.0:
                        break
                    time.sleep(0.01)
                    continue
                idle_since, start = None, time.time()
                time.sleep(0.03)
                end = time.time()
                assert store.finish(job.id, job.lease.token, State.COMPLETE, result=worker.encode())
                spans.append((job.id, job.name, start, end))
        out.put((worker, spans, None))
    except BaseException as exc:
        out.put((worker, [], repr(exc)))


def test_max_parallel_is_hard_under_four_racing_processes(url: str) -> None:
    limit, n_limited, n_free = 2, 16, 8
    ctx = multiprocessing.get_context("spawn")
    with open_store(url) as store:
        # Small batches: many jobs start on the same slot, so the contended path gets exercised.
        for _ in range(4):
            store.insert([Job(name="lim", max_parallel=limit) for _ in range(n_limited // 4)])
            store.insert([Job(name="free") for _ in range(n_free // 4)])
        barrier, out = ctx.Barrier(4), ctx.Queue()
        procs = [ctx.Process(target=_work_limited, args=(url, f"racer-{i}", barrier, out)) for i in range(4)]
        for p in procs:
            p.start()
        try:
            results = [out.get(timeout=240) for _ in procs]
        finally:
            for p in procs:
                p.join(timeout=60)
        assert [err for _, _, err in results if err] == []
        spans = [span for _, worker_spans, _ in results for span in worker_spans]
        assert sorted(s[0] for s in spans) == sorted(j.id for j in store.find())  # each job exactly once
        assert store.counts()[State.COMPLETE] == n_limited + n_free
    # Inside [start, end] a job was certainly running: more than `limit` overlapping is a breach.
    events = sorted((t, +1 if kind == "start" else -1) for _, name, *times in spans if name == "lim"
                    for kind, t in zip(("start", "end"), times, strict=True))
    concurrent = peak = 0
    for _, step in events:
        concurrent += step
        peak = max(peak, concurrent)
    assert 1 <= peak <= limit


def _use_store_in_child(store: MongoStore) -> int:
    pid = os.fork()
    if pid == 0:  # the child: the inherited store must reconnect, not reuse the parent's sockets
        code = 0 if store.counts()[State.PENDING] == 1 and store.claim(CLAIMANT) is not None else 1
        os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def test_store_survives_fork(store: MongoStore) -> None:
    store.insert([Job(name="x")])
    assert store.counts()[State.PENDING] == 1  # the parent's client is connected before the fork
    assert _use_store_in_child(store) == 0
    assert store.counts()[State.RUNNING] == 1  # the parent's client still works
