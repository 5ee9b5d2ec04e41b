"""Reliability round 2 (issue 11), part 2: what is on disk and in the URL -- with real processes.

File modes, doorbell directories, secrets in URL options, hand-edited documents and one-line
errors for bad keys and foreign files; on both stores where the store matters. The helpers and
the autouse ``no_process_left`` check come from ``tests/test_faults.py``; part 1 (nodes, clocks,
outages) is ``tests/test_reliability.py``.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time

import psutil
import pytest

from core4nb import Core4Executor, Queue, State
from core4nb.store import Claimant, bell, redact_url
from tests import jobfuncs
from tests.nodes import PATIENCE, start_node, stop_node, wait_for
from tests.servers import free_port
from tests.test_faults import cli, is_sqlite, no_process_left, queue, raw  # noqa: F401 - fixtures, found by name

# -- 7. file modes ------------------------------------------------------------------------------------

def mode(path) -> str:
    return f"{os.stat(path).st_mode & 0o777:o}"


def test_queue_directories_and_files_are_private(tmp_path):
    home = tmp_path / "home" / ".core4nb"
    out = cli("worker", "--burst", env={"CORE4NB_HOME": str(home)})  # the embedded default, made from nothing
    assert out.returncode == 0, out.stderr
    assert [mode(home.parent), mode(home), mode(home / "queue.db")] == ["700", "700", "600"]
    url = f"sqlite://{tmp_path / 'a' / 'b' / 'queue.db'}"
    with Queue(url) as q:
        q.enqueue(jobfuncs.add, 1, 2)
        files = [tmp_path / "a" / "b" / name for name in ("queue.db", "queue.db-wal", "queue.db-shm")]
        assert [mode(tmp_path / "a"), mode(tmp_path / "a" / "b"), *map(mode, files)] == ["700"] * 2 + ["600"] * 3
    files[0].chmod(0o644)
    out = cli("status", url)
    assert out.returncode == 0 and f"queue file {files[0]} is open to other users (mode 644): they can read job " \
        f"arguments and results; run `chmod 600 {files[0]}`" in out.stderr


@pytest.mark.parametrize("how", ["file writable", "directory writable", "another owner"])
def test_a_queue_others_can_write_is_refused(tmp_path, how):
    directory = tmp_path / "q"
    url = f"sqlite://{directory / 'queue.db'}"
    Queue(url).close()
    target = directory / "queue.db" if how != "directory writable" else directory
    if how == "another owner":
        if os.geteuid() != 0:
            pytest.skip("giving a file to another user needs root")
        os.chown(target, 65534, -1)
        expected = f"core4nb: error: queue file {target} belongs to another user (uid 65534), who could change"
    else:
        target.chmod(0o666 if target.is_file() else 0o777)
        kind = "file" if target.is_file() else "directory"
        expected = f"core4nb: error: queue {kind} {target} is writable by other users (mode {mode(target)}), who"
    out = cli("status", url)
    assert out.returncode == 1 and out.stderr.startswith(expected) and out.stderr.count("\n") == 1, out.stderr
    assert "e.g. sqlite://~/.core4nb/queue.db" in out.stderr


def test_a_queue_in_a_shared_directory_like_tmp_is_refused():
    path = f"/tmp/core4nb-test-{os.getpid()}-{time.monotonic_ns()}.db"
    out = cli("status", f"sqlite://{path}")
    assert out.returncode == 1 and out.stderr.startswith("core4nb: error: queue directory /tmp is writable by other")
    assert not os.path.exists(path)


# -- 8. doorbell directory squatting ----------------------------------------------------------------

@pytest.mark.parametrize("squat", ["directory open to all", "file in the way"])
def test_a_squatted_doorbell_directory_never_breaks_enqueue(queue_url, tmp_path, monkeypatch, squat):
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    with Queue(queue_url) as q:
        bells = bell.bell_dir(q.store.path if is_sqlite(queue_url) else redact_url(queue_url))
        assert bells.parent.parent == runtime
        if squat == "file in the way":
            bells.parent.mkdir(mode=0o700)
            bells.write_text("not a directory")
        else:  # made first by someone else, open to everyone
            bells.mkdir(parents=True)
            bells.parent.chmod(0o777)
            bells.chmod(0o777)
        assert q.store.listen("work") is None  # not trusted: listeners poll
        job_id = q.enqueue(jobfuncs.add, 1, 2)  # rings, and must not raise after committing
        assert start_node(queue_url, "poller", processes=1, burst=True).wait(PATIENCE) == 0
        assert q.result(job_id) == 3
    if squat == "directory open to all":
        assert list(bells.iterdir()) == []  # nothing of ours was put there


# -- 9. secrets in URL options ----------------------------------------------------------------------

def test_url_option_values_are_redacted_everywhere(wire_server, tmp_path):
    """A token in the URL's options never shows: not in status, jobs, a worker's log, an error, nor the
    command line of a node an executor starts."""
    db, port = f"c4t_{os.getpid()}_{time.monotonic_ns()}", wire_server.port
    options = "collection_prefix=sys_&authMechanism=PLAIN&appName=core4nb-test"
    url = f"mongodb://user:hunter1@127.0.0.1:{port}/{db}?{options}&authMechanismProperties=AWS_SESSION_TOKEN:hunter2"
    shown = f"mongodb://user:***@127.0.0.1:{port}/{db}?{options}&authMechanismProperties=***"
    assert redact_url(url) == shown
    with Core4Executor(url, workers=1) as executor:
        command_lines = [" ".join(p.cmdline()) for p in psutil.Process().children(recursive=True)]
        assert executor.submit(jobfuncs.add, 1, 2).result(timeout=PATIENCE) == 3
    unreachable = url.replace(str(port), str(free_port())) + "&serverSelectionTimeoutMS=300"
    outputs = [cli("status", url), cli("status", url, "--json"), cli("jobs", url, "--json"),
               cli("worker", url, "--burst", "--log-level", "DEBUG"), cli("status", unreachable)]
    assert [o.returncode for o in outputs] == [0, 0, 0, 0, 1]
    assert shown in outputs[0].stdout and f"serving {shown}" in outputs[3].stderr
    for text in [*command_lines, *(o.stdout + o.stderr for o in outputs)]:
        assert "hunter1" not in text and "hunter2" not in text, text
    assert any("core4nb worker" in line or "-m core4nb worker" in line for line in command_lines)


# -- 10. hand-edited documents ----------------------------------------------------------------------

def test_kill_and_remove_end_on_a_job_that_is_its_own_parent(queue, raw):
    root = queue.enqueue(jobfuncs.add, 1, 1)
    loop, pair = queue.enqueue(jobfuncs.add, 2, 2), queue.enqueue(jobfuncs.add, 3, 3)
    raw.change(loop, {"parent_id": loop, "root_id": root})  # its own parent, inside root's tree
    raw.change(pair, {"parent_id": loop, "root_id": root})
    killed = cli("kill", loop, "--url", queue.url)
    assert (killed.returncode, killed.stdout) == (0, "kill requested for 2 job(s)\n"), killed.stderr
    assert [queue.get(i).state for i in (root, loop, pair)] == [State.PENDING, State.KILLED, State.KILLED]
    removed = cli("remove", loop, "--url", queue.url)
    assert (removed.returncode, removed.stdout) == (0, "removed 2 job(s)\n"), removed.stderr
    assert [j.id for j in queue.jobs()] == [root]


def test_a_malformed_worker_document_breaks_neither_status_nor_map(queue, raw):
    if raw.sqlite:
        raw.conn.execute("INSERT INTO worker (name, doc) VALUES ('bad-json', '{oops'), "
                         "('bad-pid', '{\"name\": \"bad-pid\", \"host\": \"h\", \"pid\": \"x\", \"slots\": 2}')")
    else:
        workers = raw.col.database[raw.col.name.replace("queue", "worker")]
        workers.insert_many([{"_id": "bad-json", "name": "bad-json"},
                             {"_id": "bad-pid", "name": "bad-pid", "host": "h", "pid": "x", "slots": 2}])
    node = start_node(queue.url, "good", processes=1)
    try:
        wait_for(lambda: "good" in [w.name for w in queue.store.workers()], what="the node's document")
        status, as_json = cli("status", queue.url), cli("status", queue.url, "--json")
        with Core4Executor(queue.url) as executor:
            assert list(executor.map(jobfuncs.add, [1, 2, 3], [1, 1, 1])) == [2, 3, 4]
    finally:
        stop_node(node)
    assert (status.returncode, as_json.returncode) == (0, 0), status.stderr + as_json.stderr
    states = {n["name"]: n["state"] for n in json.loads(as_json.stdout)["nodes"]}
    assert states["bad-json"] == ("malformed: the document is str, not an object" if raw.sqlite
                                  else "malformed: field 'host' is missing")
    assert states["bad-pid"] == "malformed: field 'pid' is str 'x'"
    assert "malformed: field 'pid' is str 'x'" in status.stdout


# -- 11. one-line errors for a short key, a dangling key link, another application's database -------

def test_a_short_key_is_refused(sqlite_url):
    out = cli("worker", sqlite_url, "--burst", env={"CORE4NB_KEY": "short-key"})
    assert out.returncode == 1 and out.stderr == (
        "core4nb: error: the cluster key in $CORE4NB_KEY has 9 characters, fewer than 16: use a long random one, "
        "e.g. python -c 'import secrets; print(secrets.token_hex(32))'\n")


def test_a_dangling_key_symlink_is_a_one_line_error(sqlite_url, tmp_path):
    link = tmp_path / "key-link"
    link.symlink_to(tmp_path / "gone" / "key")
    out = cli("worker", sqlite_url, "--burst", env={"CORE4NB_KEY_FILE": str(link)})
    assert out.returncode == 1 and out.stderr == (
        f"core4nb: error: key file {link} is a symbolic link to {tmp_path / 'gone' / 'key'}, which does not exist: "
        "fix the link, or remove it (a new key is then made), or set CORE4NB_KEY\n")


def test_another_applications_database_is_refused_untouched(tmp_path):
    path = tmp_path / "app.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE queue (id INTEGER PRIMARY KEY, payload TEXT)")
        conn.execute("INSERT INTO queue (payload) VALUES ('theirs')")
    conn.close()
    path.chmod(0o600)
    before = path.read_bytes()
    out = cli("status", f"sqlite://{path}")
    assert out.returncode == 1 and out.stderr == (
        f"core4nb: error: {path} is not a core4nb queue: its table 'queue' has no column 'args_summary' (another "
        "application's database?); leave it alone and point the queue URL at another file, e.g. "
        "sqlite://~/.core4nb/queue.db\n")
    assert path.read_bytes() == before


def test_a_job_name_that_is_not_a_string_never_breaks_the_claim_walk(queue, raw):
    """MongoDB's claim walks the candidates when the best one's max_parallel slot is held; a document
    whose name is a list (written by hand) is set aside there, and the node serves the next job."""
    if raw.sqlite:
        pytest.skip("the slot walk is the MongoDB claim's; SQLite cannot even store a list")
    holder = Claimant(worker="elsewhere", node="other-host", pid=1)
    queue.enqueue(jobfuncs.add, 0, 0, name="lim", options={"max_parallel": 1})
    assert queue.store.claim(holder, lease_seconds=600).name == "lim"  # its only slot is held elsewhere
    blocked = queue.enqueue(jobfuncs.add, 1, 1, name="lim", options={"max_parallel": 1, "priority": 5})  # tried first
    bad = queue.enqueue(jobfuncs.add, 2, 2)
    raw.change(bad, {"name": [1, 2]})
    sentinel = queue.enqueue(jobfuncs.add, 2, 3)
    node = start_node(queue.url, "walker", processes=1)
    try:
        assert queue.result(sentinel, timeout=PATIENCE) == 5
        assert node.poll() is None
    finally:
        text = stop_node(node)
    doc = raw.read(bad)
    assert doc["state"] == "error" and "field 'name' is list [1, 2], expected str" in doc["error"]["message"]
    assert queue.get(blocked).state == State.PENDING and "Traceback" not in text
