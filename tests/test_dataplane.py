"""The data plane: large buffers travel once, out of band, as content-addressed blobs -- on both stores,
with real worker processes.

Proved here: a value used by many jobs is stored once (dedupe); every blob is checked against its
digest before it reaches the unpickler; a signed frame is bound to its job and kind (a swapped payload,
a moved result and a re-split frame are refused); arrays arrive mapped from the embedded store's files
(zero copy); a MongoDB node downloads a blob once however many jobs need it; blobs live exactly as
long as a job names them.
"""

from __future__ import annotations

import os
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from core4nb import Core4Executor, Queue, State, buffers, serialize
from core4nb.errors import BlobMissing, PayloadError, SignatureError
from core4nb.serialize import Kind
from tests import datafuncs
from tests.nodes import node_log, start_node, stop_node
from tests.test_faults import RawQueue, is_sqlite

MB = 2**20


@pytest.fixture
def queue(queue_url):
    with Queue(queue_url) as q:
        yield q


def stored(queue: Queue) -> dict[str, int]:
    """Every blob in the queue's store: digest → size."""
    return {b.digest: b.size for b in queue.store.blobs.listing()}


def run_burst(url: str, processes: int = 2, env: dict | None = None) -> str:
    node = start_node(url, "burst", processes=processes, burst=True, env=env)
    assert node.wait(180) == 0, node_log(node)
    return node_log(node)


# -- frames: signed for one job and one kind -------------------------------------------------------------

def test_a_resplit_frame_is_refused():
    """Moving the header/body boundary (the length prefix) breaks the MAC: it covers the prefix too."""
    frame = serialize.dumps({"a": 1}, key=b"k" * 32, job_id="j1", kind=Kind.RESULT).frame
    (size,) = struct.unpack(">I", frame[4:8])
    for moved in (-1, 1, 5):
        resplit = frame[:4] + struct.pack(">I", size + moved) + frame[8:]
        with pytest.raises(SignatureError):
            serialize.loads(resplit, key=b"k" * 32, job_id="j1", kinds={Kind.RESULT})
    assert serialize.loads(frame, key=b"k" * 32, job_id="j1", kinds={Kind.RESULT}) == {"a": 1}


def test_a_frame_of_another_job_or_kind_is_refused():
    key = b"k" * 32
    frame = serialize.dumps(42, key=key, job_id="j1", kind=Kind.RESULT).frame
    with pytest.raises(SignatureError, match="signed for result of job j1, not for call of job j2"):
        serialize.loads(frame, key=key, job_id="j2", kinds={Kind.CALL})
    with pytest.raises(SignatureError, match="not for call of job j1"):
        serialize.loads(frame, key=key, job_id="j1", kinds={Kind.CALL})


def test_swapped_payload_never_runs(queue, tmp_path):
    """An attacker with write access to the store but no key copies job A's payload into job B."""
    raw = RawQueue(queue.url)
    marker_a, marker_b = tmp_path / "a.txt", tmp_path / "b.txt"
    job_a = queue.enqueue(datafuncs.ran, str(marker_a), np.zeros(10), options={"priority": -1})
    job_b = queue.enqueue(datafuncs.ran, str(marker_b), np.zeros(10))
    raw.change(job_b, {"payload": raw.read(job_a)["payload"]})
    queue.kill(job_a)
    run_burst(queue.url)
    job = queue.get(job_b)
    assert (job.state, job.error.type) == (State.ERROR, "SignatureError")
    assert f"signed for call of job {job_a}, not for call of job {job_b}" in job.error.message
    assert not marker_a.exists() and not marker_b.exists()
    raw.close()


def test_result_moved_into_a_payload_is_refused(queue):
    raw = RawQueue(queue.url)
    done = queue.enqueue(datafuncs.total, np.ones(4))
    run_burst(queue.url, processes=1)
    job_id = queue.enqueue(datafuncs.total, np.ones(4))
    raw.change(job_id, {"payload": raw.read(done)["result"]})
    run_burst(queue.url, processes=1)
    job = queue.get(job_id)
    assert (job.state, job.error.type) == (State.ERROR, "SignatureError")
    assert f"signed for result of job {done}" in job.error.message
    raw.close()


# -- dedupe: stored once ------------------------------------------------------------------------------------

def test_a_closure_over_a_large_array_is_stored_once_for_every_chunk(queue_url):
    """The %%core4 broadcast case: a 16 MB global used by every one of 16 chunk jobs."""
    big = np.arange(2 * MB, dtype=np.float64)  # 16 MB

    def part(i):
        return float(big[i * 1000 : (i + 1) * 1000].sum())

    with Core4Executor(queue_url) as ex:
        it = ex.map(part, range(16), chunksize=1)
        queue = Queue(queue_url)
        blobs = stored(queue)
        assert list(blobs.values()) == [big.nbytes]  # one blob, though 16 payloads name it
        assert [j.payload is None for j in queue.store.find()] == [True] * 17  # listings never load payloads
        frames = [j.payload for j in queue.store.find(blobs=True) if not j.gather]  # the root carries none
        assert len(frames) == 16 and max(len(f) for f in frames) < 16 * 1024  # job documents stay small
        run_burst(queue_url)
        assert list(it) == [part(i) for i in range(16)]
        queue.close()


def test_share_stores_once_and_jobs_receive_the_value(queue_url):
    data = np.random.default_rng(1).random(MB)  # 8 MB
    with Core4Executor(queue_url) as ex:
        handle = ex.share(data)
        assert "1 blob(s), 8,388,608 bytes" in repr(handle)
        futures = [ex.submit(datafuncs.total, handle) for _ in range(6)]
        with Queue(queue_url) as queue:
            assert list(stored(queue).values()) == [data.nbytes]
        run_burst(queue_url)
        assert [f.result(60) for f in futures] == [float(data.sum())] * 6


def test_large_results_come_back_and_equal_ones_are_stored_once(queue_url):
    with Core4Executor(queue_url) as ex:
        futures = [ex.submit(datafuncs.filled, float(i % 2), MB) for i in range(6)]
        run_burst(queue_url)
        values = [f.result(60) for f in futures]
        assert [float(v[0]) for v in values] == [0.0, 1.0] * 3 and all(v.shape == (MB,) for v in values)
        with Queue(queue_url) as queue:
            assert sorted(stored(queue).values()) == [8 * MB, 8 * MB]


def test_buffers_that_cannot_be_exported_travel_in_band(queue):
    strided = np.arange(MB, dtype=np.float64)[::2]  # 4 MB, not contiguous
    job_id = queue.enqueue(datafuncs.total, strided)
    assert stored(queue) == {}
    run_burst(queue.url, processes=1)
    assert queue.result(job_id, timeout=60) == float(strided.sum())


def test_large_bytes_travel_as_blobs(queue):
    data = os.urandom(3 * MB)
    job_id = queue.enqueue(len, data)
    assert list(stored(queue).values()) == [len(data)]
    assert len(queue.store.get(job_id).payload) < 4096
    run_burst(queue.url, processes=1)
    assert queue.result(job_id, timeout=60) == len(data)


# -- integrity: every blob checked against its digest ----------------------------------------------------

def change_blob(queue: Queue, digest: str) -> None:
    """Flip the last byte of a stored blob, bypassing the store."""
    if is_sqlite(queue.url):
        path = queue.store.blobs.path(digest)
        path.chmod(0o600)
        data = bytearray(path.read_bytes())
        data[-1] ^= 0xFF
        path.write_bytes(bytes(data))
    else:  # an attacker replaces the GridFS file of the digest with other bytes
        bucket = queue.store.blobs.bucket
        meta = bucket.files().find_one({"metadata.digest": digest})
        data = bytearray(b"".join(bucket.read(meta, "test")))
        data[-1] ^= 0xFF
        bucket.delete([meta["_id"]])
        bucket.upload(f"{digest}.forged", digest, bytes(data), {"digest": digest, "stored_at": 0.0})


def test_a_changed_blob_is_refused_and_nothing_runs(queue, tmp_path):
    marker = tmp_path / "ran.txt"
    job_id = queue.enqueue(datafuncs.ran, str(marker), np.ones(MB // 4))  # 2 MB
    [digest] = stored(queue)
    change_blob(queue, digest)
    run_burst(queue.url, processes=1)
    job = queue.get(job_id)
    assert (job.state, job.error.type) == (State.ERROR, "SignatureError")
    assert digest[:16] in job.error.message and not marker.exists()


def test_a_changed_result_blob_is_refused_in_the_notebook(queue):
    job_id = queue.enqueue(datafuncs.filled, 3.0, MB // 4)
    run_burst(queue.url, processes=1)
    [digest] = stored(queue)
    change_blob(queue, digest)
    with pytest.raises(SignatureError, match=digest[:16]):
        queue.result(job_id)


def test_a_blob_stored_while_hashed_is_named_by_its_bytes(tmp_path):
    from core4nb.store.blobfiles import FileBlobs

    data = memoryview(os.urandom(9 * MB + 7))  # several pieces, the last one short
    blobs = FileBlobs(tmp_path)
    name = blobs.put_hashing(data)
    assert name == buffers.digest(data) and bytes(blobs.open(name, data.nbytes)) == bytes(data)
    assert blobs.put_hashing(data) == name and [b.digest for b in blobs.listing()] == [name]
    assert sorted(p.name for p in tmp_path.rglob("*.tmp")) == []


def test_a_blob_is_hashed_once_per_machine_and_again_once_changed(tmp_path, monkeypatch):
    from core4nb.store.blobfiles import FileBlobs

    data = np.arange(MB // 8, dtype=np.float64)
    name = buffers.digest(memoryview(data).cast("B"))
    FileBlobs(tmp_path).put({name: memoryview(data).cast("B")})
    hashed = []
    real_digest = buffers.digest
    monkeypatch.setattr(buffers, "digest", lambda view: hashed.append(1) or real_digest(view))
    reader = FileBlobs(tmp_path)  # another process's view of the same folder
    assert bytes(reader.open(name, data.nbytes)) == data.tobytes() and hashed == []  # the writer sealed it
    reader.touch(name)  # the cache's LRU moves the times: the seal goes with them
    assert bytes(FileBlobs(tmp_path).open(name, data.nbytes)) == data.tobytes() and hashed == []
    path = reader.path(name)
    path.chmod(0o600)
    with open(path, "r+b") as handle:  # same size, same inode, other bytes
        handle.seek(8)
        handle.write(b"\xff")
    with pytest.raises(SignatureError, match=name[:16]):
        FileBlobs(tmp_path).open(name, data.nbytes)
    assert hashed == [1]


def test_a_missing_blob_fails_the_job_naming_digest_and_job(queue, tmp_path):
    marker = tmp_path / "ran.txt"
    job_id = queue.enqueue(datafuncs.ran, str(marker), np.ones(MB // 4))
    [digest] = stored(queue)
    queue.store.blobs.delete([digest])
    run_burst(queue.url, processes=1)
    job = queue.get(job_id)
    assert (job.state, job.error.type) == (State.ERROR, "BlobMissing")
    assert digest in job.error.message and job_id in job.error.message and not marker.exists()


# -- zero copy on the embedded store; one download per node on MongoDB ---------------------------------------

def test_arrays_arrive_mapped_from_the_blob_file(sqlite_url):
    data = np.arange(MB, dtype=np.float64)
    with Queue(sqlite_url) as queue:
        job_id = queue.enqueue(datafuncs.where_is, data)
        [digest] = stored(queue)
        run_burst(sqlite_url, processes=1)
        total, writable, files = queue.result(job_id, timeout=60)
        assert total == float(data.sum()) and not writable
        assert files == [str(queue.store.blobs.path(digest))]  # the child's array is the mapped file
        result = queue.enqueue(datafuncs.filled, 7.0, MB)
        run_burst(sqlite_url, processes=1)
        value = queue.result(result, timeout=60)
        [result_digest] = set(stored(queue)) - {digest}
        assert datafuncs.mapped_files(value) == [str(queue.store.blobs.path(result_digest))]


def test_each_node_downloads_a_broadcast_once(mongo_url, tmp_path):
    big = np.arange(2 * MB, dtype=np.float64)  # 16 MB
    with Queue(mongo_url) as queue:
        ids = [queue.enqueue(datafuncs.total, big) for _ in range(12)]
        assert len(stored(queue)) == 1
        nodes = [start_node(mongo_url, f"n{i}", processes=2, burst=True,
                            env={"CORE4NB_BLOB_CACHE": str(tmp_path / f"cache-{i}")}) for i in range(2)]
        logs = [node_log(n) if n.wait(180) == 0 else stop_node(n) for n in nodes]
        assert [queue.result(i, timeout=60) for i in ids] == [float(big.sum())] * 12
    fetched = [log.count("fetched from GridFS") for log in logs]
    ran = [log.count("complete") for log in logs]
    assert all(f == (1 if r else 0) for f, r in zip(fetched, ran, strict=True)), (fetched, ran)


# -- lifetime ------------------------------------------------------------------------------------------------

def test_a_blob_in_use_survives_a_sweep_and_an_orphan_does_not(queue):
    pending = queue.enqueue(datafuncs.total, np.ones(MB // 4))
    [in_use] = stored(queue)
    orphan = np.full(MB // 4, 5.0)
    queue.store.blobs.put(serialize.dumps(orphan, key=b"-", job_id="x", kind=Kind.RESULT).blobs)
    assert len(stored(queue)) == 2
    dry = queue.store.sweep_blobs(0, dry_run=True)
    assert (dry.count, dry.size, len(stored(queue))) == (1, orphan.nbytes, 2)
    assert queue.store.sweep_blobs(3600).count == 0  # too young to be an orphan for sure
    swept = queue.store.sweep_blobs(0)
    assert (swept.count, list(stored(queue))) == (1, [in_use])
    run_burst(queue.url, processes=1)
    assert queue.result(pending, timeout=60) == float(MB // 4)


def test_remove_deletes_the_blobs_no_other_job_names(queue):
    shared, own = np.ones(MB // 4), np.zeros(MB // 4) + 2
    first = queue.enqueue(datafuncs.total, shared)
    second = queue.enqueue(np.add, shared, own)
    assert len(stored(queue)) == 2
    queue.remove(second)
    assert list(stored(queue)) == [buffers.digest(memoryview(shared).cast("B"))]  # the first job still names it
    queue.remove(first)
    assert stored(queue) == {}


def test_gc_command_sweeps_orphans(sqlite_url):
    with Queue(sqlite_url) as queue:
        queue.store.blobs.put(serialize.dumps(np.ones(MB), key=b"-", job_id="x", kind=Kind.RESULT).blobs)
    cmd = [str(Path(os.sys.executable).parent / "core4nb"), "gc", sqlite_url, "--older-than", "0s"]
    dry = subprocess.run([*cmd, "--dry-run"], capture_output=True, text=True, check=True)
    assert dry.stdout == "would delete 1 unreferenced blob(s), 8.0 MB\n"
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    assert done.stdout == "deleted 1 unreferenced blob(s), 8.0 MB\n"
    with Queue(sqlite_url) as queue:
        assert stored(queue) == {}


# -- bad input -----------------------------------------------------------------------------------------------

def test_a_full_disk_at_submit_is_a_clear_error_and_stores_nothing(tmp_path):
    blob_dir = tmp_path / "queue.db-blobs"
    blob_dir.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(blob_dir)],
                                            capture_output=True).returncode:
        pytest.skip("needs root to mount a 4 MB tmpfs as the full disk")
    try:
        with Queue(f"sqlite://{tmp_path / 'queue.db'}") as queue:
            with pytest.raises(PayloadError, match="the disk is full; nothing was stored"):
                queue.enqueue(datafuncs.total, np.ones(MB))  # 8 MB
            assert sum(queue.counts().values()) == 0
            assert [p for p in blob_dir.rglob("*") if p.is_file()] == []
    finally:
        subprocess.run(["umount", str(blob_dir)], check=True)


def test_restart_of_a_job_whose_blob_was_swept_says_so(queue):
    job_id = queue.enqueue(datafuncs.total, np.ones(MB // 4))
    run_burst(queue.url, processes=1)
    queue.store.blobs.delete(list(stored(queue)))
    with pytest.raises(BlobMissing, match="no longer"):
        queue.restart(job_id)


# -- hand-edited GridFS files (MongoDB) ------------------------------------------------------------------------

def test_hand_edited_gridfs_files_are_set_aside_not_run(mongo_url, tmp_path):
    """A frame file with chunkSize 0 and a blob chunk whose data is an integer: each job ends in error with
    MalformedJob, nothing of it runs, and the node goes on with the good job."""
    with Queue(mongo_url) as queue:
        bucket = queue.store.blobs.bucket
        marker = tmp_path / "ran.txt"
        framed = queue.enqueue(len, "x" * (9 * MB))  # a frame over 8 MB: a GridFS file of its own
        fake = f"{framed}.payload.forged"
        bucket.files().insert_one({"_id": fake, "filename": fake, "length": 9 * MB, "chunkSize": 0,
                                   "metadata": {"job_id": framed}})
        RawQueue(mongo_url).change(framed, {"payload_ref": fake})
        blobbed = queue.enqueue(datafuncs.ran, str(marker), np.ones(MB // 4))
        [digest] = stored(queue)
        meta = bucket.files().find_one({"metadata.digest": digest})
        bucket.delete([meta["_id"]])
        bucket.files().insert_one({**meta, "_id": f"{digest}.forged"})
        bucket._database()[f"{bucket.name}.chunks"].insert_one({"files_id": f"{digest}.forged", "n": 0, "data": 5})
        good = queue.enqueue(datafuncs.total, np.ones(4))
        run_burst(mongo_url, processes=1)
        first, second = queue.get(framed), queue.get(blobbed)
        assert (first.state, first.error.type) == (State.ERROR, "MalformedJob")
        assert "damaged description (chunkSize 0" in first.error.message
        assert (second.state, second.error.type) == (State.ERROR, "MalformedJob")
        assert "holds no bytes" in second.error.message and not marker.exists()
        assert queue.result(good) == 4.0
