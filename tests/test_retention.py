"""Retention: finished trees are removed with their blobs once past the queue's retention, the space
is given back, and nothing open, recent or pinned is touched -- on both stores, with real worker nodes."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from core4nb import Core4Executor, Queue, State
from core4nb.errors import JobNotFound
from tests import datafuncs, jobfuncs
from tests.nodes import node_log, start_node, stop_node, wait_for
from tests.test_faults import RawQueue, is_sqlite

MB = 2**20
CLI = [sys.executable, "-m", "core4nb"]


@pytest.fixture
def queue(queue_url):
    with Queue(queue_url) as q:
        yield q


def run_burst(url: str) -> None:
    node = start_node(url, "burst", processes=2, burst=True)
    assert node.wait(180) == 0, node_log(node)


def finished_map(url: str, values: list, **options) -> str:
    """A map tree run to completion; returns its root id."""
    with Core4Executor(url, **options) as ex:
        it = ex.map(datafuncs.total, values)
        run_burst(url)
        assert list(it) == [float(v.sum()) for v in values]
        return it.job_id


def age(queue: Queue, root: str, days: float) -> None:
    """Make a finished tree look as if it finished ``days`` ago (the store's clock is the job's)."""
    raw = RawQueue(queue.url)
    for job in queue.store.find(root_id=root):
        raw.change(job.id, {"finished_at": time.time() - days * 86400})
    raw.close()


def disk(queue: Queue) -> int:
    return queue.store.usage(queue.store.retention()).size


def test_a_tree_past_retention_goes_with_its_blobs_and_space(queue):
    old = finished_map(queue.url, [np.full(MB // 2, float(i)) for i in range(4)])  # 4 blobs of 4 MB
    text = queue.enqueue(len, "x" * (8 * MB))  # 8 MB in band: the SQLite file itself must shrink
    run_burst(queue.url)
    age(queue, old, 8)
    age(queue, text, 8)
    before = disk(queue)
    blobs_before = len(list(queue.store.blobs.listing()))
    report = queue.store.prune(queue.store.retention())
    assert sorted(report.roots) == sorted([old, text]) and report.jobs == 6  # root + 4 chunks, and the text job
    assert report.blobs.count == blobs_before == 4
    assert list(queue.store.blobs.listing()) == []
    if is_sqlite(queue.url):
        assert disk(queue) < before - 20 * MB  # 16 MB of blobs and the 8 MB payload given back
        path = Path(queue.url.partition("://")[2])
        assert path.stat().st_size < 2 * MB and Path(f"{path}-wal").stat().st_size < 2 * MB
    else:  # GridFS holds nothing: not the blobs, not the 8 MB frame (a file of its own over 8 MB)
        assert report.freed == 16 * MB and list(queue.store.blobs.bucket.files().find({}, {"_id": 1})) == []
    with pytest.raises(JobNotFound, match=r"was pruned .* on \d{4}-\d\d-\d\d.*8\.0 days after it finished"):
        queue.get(old)


def test_recent_pinned_and_open_trees_survive(queue, tmp_path):
    recent = finished_map(queue.url, [np.ones(MB // 4)])
    pinned = finished_map(queue.url, [np.ones(MB // 4) * 2], keep=True)
    age(queue, pinned, 30)
    waiting = queue.enqueue(jobfuncs.add, 1, 2)  # pending: never touched, whatever its age
    age(queue, waiting, 30)
    assert queue.store.prune(7 * 86400).roots == []
    assert queue.store.prune(0).roots == [recent]  # only the unpinned finished one, once retention is 0
    assert {j.root_id for j in queue.store.find()} == {pinned, waiting}
    assert queue.get(waiting).state == State.PENDING
    assert queue.store.usage(7 * 86400).finished_trees == 0  # the pinned tree is not waiting for retention


def test_dry_run_changes_nothing(queue):
    root = finished_map(queue.url, [np.ones(MB // 4)])
    age(queue, root, 8)
    before = (sorted(j.id for j in queue.store.find()), sorted(b.digest for b in queue.store.blobs.listing()))
    out = subprocess.run([*CLI, "prune", queue.url, "--dry-run"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("would prune 1 finished tree(s) older than 7 days: 2 job(s), 1 blob(s) of 2.0 MB")
    assert (sorted(j.id for j in queue.store.find()), sorted(b.digest for b in queue.store.blobs.listing())) == before
    out = subprocess.run([*CLI, "prune", queue.url], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("pruned 1 finished tree(s) older than 7 days: 2 job(s), 1 blob(s) of 2.0 MB")
    assert queue.store.find() == []


def test_retention_setting_and_status(queue):
    out = subprocess.run([*CLI, "retention", queue.url, "2d"], capture_output=True, text=True, check=True)
    assert out.stdout == "finished trees are kept for 2 days\n"
    finished_map(queue.url, [np.ones(4)])
    status = subprocess.run([*CLI, "status", queue.url], capture_output=True, text=True, check=True).stdout
    assert "1 finished tree(s) waiting (kept 2 days)" in status
    assert queue.store.retention() == 2 * 86400


def test_two_nodes_housekeeping_at_once_prune_each_tree_once_and_spare_running_work(queue, tmp_path):
    queue.store.set_setting("retention", "0")
    done = [finished_map(queue.url, [np.ones(MB // 4) * i]) for i in range(3)]
    marker = tmp_path / "slow.txt"
    slow = queue.enqueue(jobfuncs.record, str(marker), "slow", 4.0)  # running while the nodes housekeep
    env = {"CORE4NB_HOUSEKEEPING_INTERVAL": "0.2"}
    nodes = [start_node(queue.url, f"hk{i}", processes=1, lease=1.2, env=env) for i in range(2)]
    try:
        wait_for(lambda: queue.store.find(root_id=slow) and queue.get(slow).state == State.RUNNING, timeout=60,
                 what="the slow job running")
        wait_for(lambda: all(not queue.store.find(root_id=r) for r in done), timeout=60, what="the prunes")
        assert queue.get(slow).state == State.RUNNING  # final trees only: the running one is untouched
        wait_for(lambda: marker.exists() and not queue.store.find(root_id=slow), timeout=60,
                 what="the slow job to finish and, with retention 0, be pruned too")
    finally:
        logs = [stop_node(n) for n in nodes]
    pruned = sum(int(line.split("pruned ")[1].split()[0]) for log in logs for line in log.splitlines()
                 if "finished tree(s)" in line and "pruned " in line)
    assert pruned == 4  # each of the four trees removed by exactly one node's prune
    assert marker.read_text().count("slow") == 1
    assert list(queue.store.blobs.listing()) == []
    assert "housekeeping of" not in " ".join(logs)  # no failure was logged


def test_an_existing_queue_file_is_converted_to_give_space_back(tmp_path):
    import sqlite3

    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)  # a queue file from before: auto_vacuum off
    conn.execute("CREATE TABLE filler (x BLOB)")
    conn.execute("INSERT INTO filler VALUES (zeroblob(4000000))")
    conn.commit()
    assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 0
    conn.close()
    with Queue(f"sqlite://{path}") as queue:
        assert queue.store._conn().execute("PRAGMA auto_vacuum").fetchone()[0] == 2
        assert sum(queue.counts().values()) == 0
