"""The ``core4nb`` command as a user runs it: a real process, real stores, real output."""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys

import pytest

from core4nb import Queue, State
from core4nb.keys import key_id, load_key
from core4nb.report import cut
from tests import jobfuncs
from tests.nodes import ROOT, start_node, stop_node, wait_for


def core4nb(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "core4nb", *args], capture_output=True, text=True, timeout=120,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})


@pytest.fixture
def queue(queue_url):
    with Queue(queue_url) as q:
        yield q


def test_status_lists_counts_per_state(queue):
    for i in range(3):
        queue.enqueue(jobfuncs.add, i, 1)
    queue.kill(queue.enqueue(jobfuncs.add, 9, 9))
    done = core4nb("status", queue.url)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[1:3] == [
        "nodes  0",
        "jobs   pending 3  running 0  deferred 0  failed 0  gathering 0  complete 0  error 0  inactive 0  killed 1",
    ]
    # the killed job is a finished tree of its own, waiting for retention
    assert lines[3].startswith("store  ") and lines[3].endswith(" MB; 1 finished tree(s) waiting (kept 7 days)")
    data = json.loads(core4nb("status", queue.url, "--json").stdout)
    assert data["counts"] == {"pending": 3, "running": 0, "deferred": 0, "failed": 0, "gathering": 0, "complete": 0,
                              "error": 0, "inactive": 0, "killed": 1}
    assert data["store"]["finished_trees"] == 1 and data["store"]["retention_s"] == 7 * 86400
    assert data["store"]["size"] > 0


def test_jobs_kill_restart_remove_round_trip(queue):
    job_id = queue.enqueue(jobfuncs.add, 2, 3)
    listed = json.loads(core4nb("jobs", queue.url, "--json").stdout)
    assert [(j["id"], j["state"], j["name"], j["args_summary"]) for j in listed] == [
        (job_id, "pending", "tests.jobfuncs.add", "2, 3")]
    assert core4nb("kill", job_id, "--url", queue.url).stdout == "kill requested for 1 job(s)\n"
    assert queue.get(job_id).state == State.KILLED
    restarted = core4nb("restart", job_id, "--url", queue.url).stdout.strip()
    again = queue.get(restarted)
    assert (again.state, again.restarted_from, again.name) == (State.PENDING, job_id, "tests.jobfuncs.add")
    start_node(queue.url, "node", processes=1, burst=True).wait(60)
    assert queue.result(restarted) == 5
    table = core4nb("jobs", queue.url, "--state", "complete").stdout.splitlines()
    assert len(table) == 2 and table[1].startswith(f"{restarted} complete")
    assert core4nb("remove", job_id, "--url", queue.url).stdout == "removed 1 job(s)\n"
    assert [j.id for j in queue.jobs()] == [restarted]


def test_output_prints_what_the_job_printed(queue):
    job_id = queue.enqueue(jobfuncs.chatty, "hello", "careful")
    start_node(queue.url, "node", processes=1, burst=True).wait(60)
    done = core4nb("output", job_id, "--url", queue.url)
    assert (done.returncode, done.stdout) == (0, "hello\ncareful\n")


def test_restart_of_an_open_job_is_refused(queue):
    job_id = queue.enqueue(jobfuncs.add, 1, 1)
    done = core4nb("restart", job_id, "--url", queue.url)
    assert done.returncode == 1
    assert done.stderr == f"core4nb: error: job {job_id} is pending; only a finished job can be restarted " \
                          f"(kill it first)\n"


@pytest.mark.parametrize("args, message", [
    (("status", "nowhere"), "queue URL 'nowhere' is not a URL: use sqlite:///path/to/queue.db or mongodb://"),
    (("status", "redis://127.0.0.1/0"), "has unknown scheme 'redis'"),
    (("jobs", "mongodb://user:secret@127.0.0.1:9/db?serverSelectionTimeoutMS=300"), "user:***@127.0.0.1:9"),
])
def test_bad_urls_are_one_line_errors(args, message):
    done = core4nb(*args)
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.startswith("core4nb: error: ") and done.stderr.count("\n") == 1
    assert message in done.stderr and "secret" not in done.stderr


@pytest.mark.parametrize("command", ["kill", "restart", "remove", "output"])
def test_unknown_job_id_is_an_error_and_changes_nothing(queue, command):
    kept = queue.enqueue(jobfuncs.add, 1, 1)
    done = core4nb(command, "0" * 24, "--url", queue.url)
    assert done.returncode == 1
    assert done.stderr.startswith(f"core4nb: error: no job with id {'0' * 24}")
    assert [(j.id, j.state) for j in queue.jobs()] == [(kept, State.PENDING)]


def test_bad_worker_option_is_usage_error(queue):
    done = core4nb("worker", queue.url, "--processes", "0")
    assert done.returncode == 1
    assert done.stderr == "core4nb: error: --processes must be at least 1, got 0\n"


def test_demo_counts_primes_both_ways(tmp_path):
    done = core4nb("demo", "--end", "30000", "--workers", "2", env={"CORE4NB_HOME": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "counting primes below 30,000 in 64 chunks"
    assert "serial Python" in lines[1] and "3,245 primes" in lines[1]
    assert "core4nb, 2 workers" in lines[2] and "3,245 primes" in lines[2]
    assert lines[3].startswith("speed-up over serial: ") and lines[3].endswith("x on 2 workers")


def test_status_shows_each_nodes_python_and_key_id(queue):
    node = start_node(queue.url, "node-py", processes=1)
    try:
        wait_for(lambda: queue.store.workers(), what="the node to register")
        done = core4nb("status", queue.url)
        (listed,) = json.loads(core4nb("status", queue.url, "--json").stdout)["nodes"]
    finally:
        stop_node(node)
    assert done.returncode == 0, done.stderr
    header, row = done.stdout.splitlines()[2:4]
    assert header.split() == ["NAME", "HOST", "SLOTS", "BUSY", "HEARTBEAT", "PYTHON", "KEY", "ID", "STATE"]
    assert row.split()[:3] == ["node-py", cut(socket.gethostname(), 16).strip(), "1"]
    assert row.split()[-3:] == [platform.python_version(), key_id(load_key()), "running"]
    assert (listed["python"], listed["key_id"]) == (platform.python_version(), key_id(load_key()))


@pytest.mark.parametrize("command", ["status", "jobs", "runs"])
def test_a_missing_embedded_queue_is_an_error_and_nothing_is_created(tmp_path, command):
    missing = tmp_path / "no" / "such" / "dir" / "q.db"
    done = core4nb(command, f"sqlite://{missing}")
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr == (f"core4nb: error: no queue at {missing}: the file does not exist; check the URL (the "
                           "first Core4Executor, enqueue or `core4nb worker` on a URL creates its queue)\n")
    assert list(tmp_path.iterdir()) == []


def test_a_missing_mongodb_queue_is_an_error_and_nothing_is_created(mongo_url):
    done = core4nb("status", mongo_url)
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr.startswith("core4nb: error: no queue at mongodb://") and done.stderr.count("\n") == 1
    assert "has no collection 'sys_queue'" in done.stderr
    import pymongo

    from core4nb.store.mongo_connect import parse_url

    driver_url, database, _, _ = parse_url(mongo_url)
    client = pymongo.MongoClient(driver_url)
    try:
        assert client[database].list_collection_names() == []
    finally:
        client.close()


def finished_runs(url: str) -> tuple[str, str]:
    """The root ids of a map of 5 squares in chunks of 2 and of a failing job, run by a burst node."""
    from core4nb import Core4Executor

    with Core4Executor(url) as ex:  # with a URL: no local node, the burst node below does the work
        squares = ex.map(jobfuncs.square, range(5), chunksize=2)
        failing = ex.submit(jobfuncs.fail, "the input was bad\nsecond line")
        start_node(url, "node", processes=1, burst=True).wait(120)
        assert list(squares) == [0, 1, 4, 9, 16]
        assert isinstance(failing.exception(timeout=60), Exception)
        return squares.job_id, failing.job_id


def test_jobs_show_readable_names_chunks_and_the_first_error_line(queue):
    map_root, _ = finished_runs(queue.url)
    done = core4nb("jobs", queue.url)
    assert done.returncode == 0, done.stderr
    rows = [line.split(None, 3) for line in done.stdout.splitlines()[1:]]
    assert [row[3].split() for row in rows] == [
        ["map:tests.jobfuncs.square", "3", "chunks,", "5", "items"],
        ["tests.jobfuncs.square", "#0-1", "0,", "1"],
        ["tests.jobfuncs.square", "#2-3", "2,", "3"],
        ["tests.jobfuncs.square", "#4", "4"],
        ["tests.jobfuncs.fail", "'the", "input", "was", "bad\\nsecond", "line'", "ValueError:", "the", "input",
         "was", "bad"],
    ]
    assert done.stdout.splitlines()[0].split() == ["ID", "STATE", "TRIAL", "NAME", "ARGS", "ERROR"]
    tree = core4nb("jobs", queue.url, "--tree", map_root).stdout.splitlines()[1:]
    assert sorted(line.split()[0] for line in tree) == sorted(j.id for j in queue.store.find(root_id=map_root))
    one_chunk = tree[0].split()[0]
    assert core4nb("jobs", queue.url, "--tree", one_chunk).stdout.splitlines()[1:] == tree  # any job names its tree


def test_runs_list_one_line_per_tree_with_counts_age_and_first_error(queue):
    map_root, failed = finished_runs(queue.url)
    done = core4nb("runs", queue.url)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["ROOT", "NAME", "AGE", "JOBS", "FIRST", "ERROR"]
    by_root = {line.split()[0]: line.split()[1:] for line in lines[1:]}
    assert set(by_root) == {map_root, failed}
    name, age, *rest = by_root[map_root]
    assert (name, rest) == ("map:tests.jobfuncs.square", ["complete", "4"]) and age.endswith("s")
    name, age, *rest = by_root[failed]
    assert (name, rest) == ("tests.jobfuncs.fail", ["error", "1", "ValueError:", "the", "input", "was", "bad"])
    (newest,) = core4nb("runs", queue.url, "--limit", "1").stdout.splitlines()[1:]
    assert newest.split()[0] == lines[-1].split()[0] == failed
    listed = json.loads(core4nb("runs", queue.url, "--json").stdout)
    assert [(r["root_id"], r["name"], r["counts"], r["first_error"]) for r in listed] == [
        (map_root, "map:tests.jobfuncs.square", {"complete": 4}, ""),
        (failed, "tests.jobfuncs.fail", {"error": 1}, "ValueError: the input was bad")]


def test_long_names_are_cut_from_the_right(queue):
    job_id = queue.enqueue(jobfuncs.add, 1, 2, name="a.very.long.module.path.with.a.function_name_at_the_end")
    row = core4nb("jobs", queue.url).stdout.splitlines()[1]
    assert row.split()[:4] == [job_id, "pending", "0", "a.very.long.module.path.wit…"]


def test_a_failed_maps_first_error_is_its_chunks_not_the_roots(queue):
    from core4nb import Core4Executor

    with Core4Executor(queue.url) as ex:
        failing = ex.map(jobfuncs.fail, ["chunk trouble"])
        start_node(queue.url, "node", processes=1, burst=True).wait(120)
        with pytest.raises(ValueError, match="chunk trouble"):
            list(failing)
    root, (chunk,) = queue.get(failing.job_id), queue.store.find(parent_id=failing.job_id)
    assert root.finished_at >= chunk.finished_at and root.error.summary() != chunk.error.summary()  # the same write
    (run,) = json.loads(core4nb("runs", queue.url, "--json").stdout)
    assert (run["counts"], run["first_error"]) == ({"error": 2}, chunk.error.summary().splitlines()[0])
    assert "chunk trouble" in run["first_error"]


def test_unknown_tree_is_an_error(queue):
    done = core4nb("jobs", queue.url, "--tree", "0" * 24)
    assert done.returncode == 1
    assert done.stderr.startswith(f"core4nb: error: no job with id {'0' * 24}") and done.stderr.count("\n") == 1


def test_a_long_argument_list_is_summarized_from_its_first_items_only():
    from core4nb.calls import summarize_args

    class Counted:
        looked_at = 0

        def __repr__(self) -> str:
            Counted.looked_at += 1
            return "item"

    text = summarize_args(tuple(Counted() for _ in range(10_000)), {}, limit=40)
    assert text == "item, item, item, item, item, item, ite…" and Counted.looked_at == 7  # 40 characters
    assert summarize_args((1, 2), {"b": 3}) == "1, 2, b=3"
