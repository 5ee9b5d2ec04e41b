"""The ``core4nb`` command as a user runs it: a real process, real stores, real output."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from core4nb import Queue, State
from tests import jobfuncs
from tests.nodes import ROOT, start_node


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
        "jobs   pending 3  running 0  deferred 0  failed 0  complete 0  error 0  inactive 0  killed 1",
    ]
    # the killed job is a finished tree of its own, waiting for retention
    assert lines[3].startswith("store  ") and lines[3].endswith(" MB; 1 finished tree(s) waiting (kept 7 days)")
    data = json.loads(core4nb("status", queue.url, "--json").stdout)
    assert data["counts"] == {"pending": 3, "running": 0, "deferred": 0, "failed": 0, "complete": 0, "error": 0,
                              "inactive": 0, "killed": 1}
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
