"""The live progress panel, headless: real SQLite stores, real widget models, no browser.

Trees are built the way workers build them: jobs inserted with ``store.insert``,
moved through their states with ``claim`` / ``finish``; one test runs a real
worker node process. Assertions read widget state (``value``, ``max``,
``bar_style``, HTML) as the notebook frontend would receive it.
"""

from __future__ import annotations

import dataclasses
import io
import re
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import pytest

from core4nb import Core4Executor, Queue, State, progress
from core4nb.errors import ConfigError, JobNotFound
from core4nb.executor.handle import JobHandle
from core4nb.job import Job, JobError, Lease
from core4nb.store import Claimant, open_store
from core4nb.widgets import MAX_FAILURES, MAX_RUNNING, TextProgress, TreePanel, resolve_target, take_snapshot
from tests import jobfuncs
from tests.nodes import PATIENCE, start_node, stop_node

TRACEBACK = ('Traceback (most recent call last):\n  File "<cell>", line 2, in <module>\n'
             "ZeroDivisionError: division by zero\n")


@pytest.fixture
def store(sqlite_url):
    with open_store(sqlite_url) as s:
        yield s


@pytest.fixture(autouse=True)
def _no_poller_outlives_a_test():
    yield
    leaked = [t.name for t in threading.enumerate() if t.name.startswith("core4nb-progress")]
    assert not leaked, f"progress threads still running: {leaked}"


# -- building trees like a worker does -----------------------------------------------------------
# Children get a higher priority than their parent (depth), so a claim takes the deepest waiting
# job first and a deferred parent is only claimed again once its children are all taken: the
# order in which a node would run a divide-and-conquer tree.
def run(store, n: int, state: State, worker: str = "node-a", **fields) -> list[Job]:
    """Claim the next ``n`` claimable jobs as ``worker`` and move them to ``state`` (running: leave them)."""
    jobs = []
    for _ in range(n):
        job = store.claim(Claimant(worker, "host", 1))
        assert job is not None, "nothing left to claim"
        if state is not State.RUNNING:
            assert store.finish(job.id, job.lease.token, state, **fields)
        jobs.append(job)
    return jobs


def start_tree(store, name: str = "tests.jobfuncs.fan_out", args: str = "n=10") -> Job:
    """A root that ran once and deferred: a divide-and-conquer parent waiting for its children."""
    root = Job(name=name, args_summary=args)
    store.insert([root])
    (claimed,) = run(store, 1, State.DEFERRED, progress_message="waiting for children")
    assert claimed.id == root.id
    return root


def add_children(store, parent: Job, n: int, name: str = "tests.jobfuncs.square") -> list[Job]:
    kids = [Job(name=name, args_summary=f"{i}", parent_id=parent.id, root_id=parent.root_id,
                priority=parent.priority + 1) for i in range(n)]
    store.insert(kids)
    return kids


def finish_root(store, root: Job, state: State = State.COMPLETE) -> None:
    """The deferred root runs its last trial (the reduce) once no child is left to claim."""
    (claimed,) = run(store, 1, state)
    assert claimed.id == root.id


def simple_tree(store, n: int, complete: int, running: int) -> Job:
    root = start_tree(store, args=f"n={n}")
    add_children(store, root, n)
    run(store, complete, State.COMPLETE)
    run(store, running, State.RUNNING)
    return root


def cells(table_html: str) -> dict[str, int]:
    """``{state: count}`` from the counts table's ``data-state`` cells."""
    return {s: int(n) for s, n in re.findall(r'<td data-state="(\w+)"[^>]*>(\d+)</td>', table_html)}


def at(snapshot, seconds_after_enqueue: float):
    """The same snapshot, taken a fixed time after the root was enqueued (for exact timings)."""
    return dataclasses.replace(snapshot, taken_at=snapshot.root.enqueued_at + seconds_after_enqueue)


@pytest.fixture
def running_tree(store):
    """Root deferred; 10 children: 4 complete, 2 running (node-a, node-b), 1 failed (retrying later), 3 pending."""
    root = start_tree(store)
    add_children(store, root, 10)
    run(store, 1, State.RUNNING, worker="node-a")
    run(store, 1, State.RUNNING, worker="node-b")
    run(store, 4, State.COMPLETE)
    run(store, 1, State.FAILED, query_at=time.time() + 3600,
        error=JobError("ValueError", "flaky", "Traceback…\nValueError: flaky\n"))
    return root


# -- the data layer --------------------------------------------------------------------------------
def test_snapshot_counts_and_derived_values(store, running_tree):
    snap = take_snapshot(store, running_tree.id)
    assert snap.counts == {State.PENDING: 3, State.RUNNING: 2, State.DEFERRED: 0, State.FAILED: 1, State.GATHERING: 0,
                           State.COMPLETE: 4, State.ERROR: 0, State.INACTIVE: 0, State.KILLED: 0}
    assert snap.tree_counts[State.DEFERRED] == 1  # the root itself
    assert (snap.total, snap.done, snap.fraction, snap.child_count) == (10, 4, 0.4, 10)
    assert snap.nodes == (("node-a", 1), ("node-b", 1))
    assert [j.error.message for j in snap.failures] == ["flaky"]
    assert snap.subtrees == ()
    assert (snap.status, snap.is_final, snap.is_broken) == ("running", False, False)
    timed = at(snap, 2.0)
    assert (timed.elapsed, timed.throughput, timed.eta) == (2.0, 2.0, 3.0)


def test_snapshot_is_the_same_on_every_backend(queue_url):
    with open_store(queue_url) as store:
        root = start_tree(store)
        (parent,) = add_children(store, root, 1, name="tests.jobfuncs.fan_out")
        add_children(store, root, 2)
        run(store, 1, State.DEFERRED, query_at=time.time() + 3600)  # the fan_out child waits for its own
        add_children(store, parent, 3)
        run(store, 1, State.RUNNING, worker="node-x")
        run(store, 1, State.ERROR, error=JobError("ZeroDivisionError", "division by zero", TRACEBACK))
        snap = take_snapshot(store, root.id)
    assert snap.counts == {State.PENDING: 3, State.RUNNING: 1, State.DEFERRED: 1, State.FAILED: 0, State.GATHERING: 0,
                           State.COMPLETE: 0, State.ERROR: 1, State.INACTIVE: 0, State.KILLED: 0}
    assert (snap.total, snap.done, snap.child_count, snap.status) == (6, 1, 3, "broken")
    assert [(s.job.id, s.total, s.done) for s in snap.subtrees] == [(parent.id, 3, 1)]
    assert snap.nodes == (("node-x", 1),)
    assert [j.error.traceback for j in snap.failures] == [TRACEBACK]


def test_single_job_counts_itself(store):
    job = Job(name="tests.jobfuncs.square", args_summary="3")
    store.insert([job])
    snap = take_snapshot(store, job.id)
    assert (snap.total, snap.done, snap.status, snap.eta) == (1, 0, "pending", None)
    run(store, 1, State.COMPLETE)
    snap = take_snapshot(store, job.id)
    assert (snap.total, snap.done, snap.status, snap.is_final) == (1, 1, "complete", True)
    assert snap.elapsed == snap.root.finished_at - snap.root.enqueued_at  # frozen at the finish


def test_text_line_and_repr(store, running_tree):
    snap = at(take_snapshot(store, running_tree.id), 2.0)
    expected = ("running: fan_out [########------------] 4/10 chunks  pending 3  running 2  failed 1  "
                "complete 4  elapsed 2.0 s  2.0/s  ETA 3.0 s  ValueError: flaky")
    view = TextProgress(snap, unit="chunks")
    assert repr(view) == str(view) == view.line == expected
    assert running_tree.id not in repr(view)  # no ids: saved notebook output only varies in timings


def test_text_progress_prints_on_change_only_off_a_terminal(store, running_tree):
    out = io.StringIO()
    view = TextProgress(stream=out)
    snap = take_snapshot(store, running_tree.id)
    view.update(snap)
    view.update(snap)  # same status, same tenth: nothing new
    assert out.getvalue().count("\n") == 1
    run(store, 3, State.COMPLETE)
    view.update(take_snapshot(store, running_tree.id))  # 4/10 → 7/10: another tenth
    assert out.getvalue().count("\n") == 2 and "7/10 jobs" in out.getvalue().splitlines()[-1]


def test_text_progress_redraws_in_place_on_a_terminal(store):
    class Tty(io.StringIO):
        def isatty(self):
            return True

    out, job = Tty(), Job(name="m.work")
    store.insert([job])
    view = TextProgress(take_snapshot(store, job.id), stream=out)
    run(store, 1, State.COMPLETE)
    view.update(take_snapshot(store, job.id))
    view.update(take_snapshot(store, job.id))  # final line already ended: not repeated
    text = out.getvalue()
    assert text.startswith("\rpending: work [--------------------] 0/1 jobs")
    assert text.count("\r") == 2 and text.endswith("\n") and text.count("\n") == 1
    assert "complete: work [####################] 1/1 jobs  complete 1" in text


# -- the panel -------------------------------------------------------------------------------------
def test_panel_while_running(store, running_tree):
    panel = TreePanel(take_snapshot(store, running_tree.id), unit="chunks")
    assert (panel.bar.value, panel.bar.max, panel.bar.bar_style) == (4.0, 10.0, "info")
    assert panel.bar.description == "fan_out"
    assert cells(panel.counts.value) == {"pending": 3, "running": 2, "deferred": 0, "failed": 1,
                                         "complete": 4, "error": 0, "killed": 0}
    assert "<b>4</b>/10 chunks" in panel.label.value and "ETA" in panel.label.value
    assert "fan_out(n=10)</b> deferred: waiting for children" in panel.info.value
    assert "nodes: node-a (1), node-b (1)" in panel.info.value
    assert panel.subtrees.layout.display == "none"  # flat tree: no nested subtrees
    assert panel.failures.layout.display == ""
    assert "ValueError: flaky" in panel.failures.value
    assert repr(panel).startswith("running: fan_out [########------------] 4/10 chunks")


def test_a_pending_root_of_a_busy_tree_reads_as_the_tree_does(store):
    root = Job(name="tests.jobfuncs.fan_out", args_summary="n=10")  # a map's root: claimed after its chunks
    store.insert([root])
    add_children(store, root, 32)
    run(store, 24, State.COMPLETE)
    assert store.get(root.id).state is State.PENDING
    panel = TreePanel(take_snapshot(store, root.id), unit="chunks")
    assert "fan_out(n=10)</b> running" in panel.info.value and "pending" not in panel.info.value
    assert "<b>24</b>/32 chunks" in panel.label.value


def test_panel_success(store):
    root = simple_tree(store, 10, complete=7, running=3)
    panel = TreePanel(take_snapshot(store, root.id))
    assert (panel.bar.value, panel.bar.max, panel.bar.bar_style) == (7.0, 10.0, "info")
    for job in store.find(root_id=root.id, states=[State.RUNNING]):
        assert store.finish(job.id, job.lease.token, State.COMPLETE)
    finish_root(store, root)
    panel.update(take_snapshot(store, root.id))
    assert (panel.bar.value, panel.bar.max, panel.bar.bar_style) == (10.0, 10.0, "success")
    assert cells(panel.counts.value)["complete"] == 10
    assert panel.snapshot.is_final and panel.snapshot.status == "complete"
    assert panel.failures.layout.display == "none"
    assert repr(panel).startswith("complete: fan_out [####################] 10/10 jobs  complete 10  elapsed ")


def test_panel_failure_shows_traceback_and_stays_red(store, running_tree):
    (bad,) = run(store, 1, State.ERROR, error=JobError("ZeroDivisionError", "division by zero", TRACEBACK))
    panel = TreePanel(take_snapshot(store, running_tree.id))
    assert panel.bar.bar_style == "danger"
    assert cells(panel.counts.value)["error"] == 1
    failures = panel.failures.value
    assert "ZeroDivisionError: division by zero" in failures
    assert failures.count("<details") == 2  # the error and the retrying failure
    assert "line 2, in &lt;module&gt;\nZeroDivisionError: division by zero" in failures  # escaped traceback
    assert "broken: fan_out" in repr(panel) and "ZeroDivisionError: division by zero" in repr(panel)
    store.remove(bad.id)  # the tree looks healthy again: the bar stays red
    panel.update(take_snapshot(store, running_tree.id))
    assert not panel.snapshot.is_broken and panel.bar.bar_style == "danger"
    assert TreePanel(panel.snapshot).bar.bar_style == "info"  # a fresh panel would not be red


def test_panel_kill(store, running_tree):
    assert store.request_kill(running_tree.id) == 7  # root, 3 pending, 1 failed killed; 2 running flagged
    snap = take_snapshot(store, running_tree.id)
    assert (snap.status, snap.is_final) == ("killed", False)  # its running jobs are still being stopped
    panel = TreePanel(snap)
    assert panel.bar.bar_style == "danger"
    assert cells(panel.counts.value) == {"pending": 0, "running": 2, "deferred": 0, "failed": 0, "complete": 4,
                                         "error": 0, "killed": 4}
    for job in store.find(root_id=running_tree.id, states=[State.RUNNING]):  # the nodes stop them
        assert store.finish(job.id, job.lease.token, State.KILLED, error=JobError("Killed", "on request"))
    panel.update(take_snapshot(store, running_tree.id))
    assert panel.snapshot.is_final and panel.bar.bar_style == "danger"
    assert (panel.bar.value, panel.bar.max) == (4.0, 10.0)  # as long as the work done, not the jobs ended
    assert "<b>4</b>/10 jobs" in panel.label.value
    assert repr(panel).startswith("killed: fan_out [########------------] 4/10 jobs  complete 4  killed 6")


def test_nested_subtrees(store):
    root = start_tree(store, "tests.jobfuncs.PrimeJob", "start=1, end=1000, chunksize=100")
    add_children(store, root, 3, name="tests.jobfuncs.PrimeJob")
    first, second, _leaf_parent = run(store, 3, State.DEFERRED, progress_message="children open",
                                      query_at=time.time() + 3600)  # each waits; the next claim takes a sibling
    add_children(store, store.get(first.id), 4)
    run(store, 3, State.COMPLETE)
    run(store, 1, State.RUNNING, worker="node-c")
    add_children(store, store.get(second.id), 2)
    snap = take_snapshot(store, root.id)
    assert (snap.child_count, snap.total, snap.done) == (3, 9, 3)
    assert [(s.job.id, s.total, s.done) for s in snap.subtrees] == [(first.id, 4, 3), (second.id, 2, 0)]
    panel = TreePanel(snap)
    assert panel.subtrees.layout.display == ""
    assert len(panel.subtrees.children) == 2
    assert panel.subtrees.titles == ("PrimeJob(0) deferred 3/4", "PrimeJob(1) deferred 0/2")
    assert cells(panel.subtrees.children[0].value) == {"pending": 0, "running": 1, "deferred": 0, "failed": 0,
                                                       "complete": 3, "error": 0, "killed": 0}
    assert cells(panel.subtrees.children[1].value)["pending"] == 2
    assert "children open" in panel.subtrees.children[0].value
    panel.subtrees.selected_index = 1  # the user opened a pane; a refresh keeps it open
    pane = panel.subtrees.children[1]
    run(store, 1, State.COMPLETE)
    panel.update(take_snapshot(store, root.id))
    assert panel.subtrees.selected_index == 1 and panel.subtrees.children[1] is pane
    assert panel.subtrees.titles[1] == "PrimeJob(1) deferred 1/2"
    store.remove(first.id)  # a subtree before the open one goes: the open pane follows its subtree
    panel.update(take_snapshot(store, root.id))
    assert panel.subtrees.children == (pane,) and panel.subtrees.selected_index == 0


def test_ten_thousand_children_cost_a_few_bounded_calls(store):
    root = start_tree(store, "tests.jobfuncs.count_primes", "chunks=10000")
    states = ([State.COMPLETE] * 6000 + [State.PENDING] * 3600 + [State.RUNNING] * 300
              + [State.ERROR] * 30 + [State.FAILED] * 70)
    kids = []
    for i, state in enumerate(states):
        kid = Job(name="tests.jobfuncs.square", args_summary=str(i), parent_id=root.id, root_id=root.id,
                  state=state)
        if state in (State.ERROR, State.FAILED):
            kid.error = JobError("ValueError", f"bad chunk {i}", TRACEBACK)
        if state is State.RUNNING:
            kid.lease = Lease(f"node-{i % 4}", "host", 1, "t", time.time() + 60)
        kids.append(kid)
    store.insert(kids)
    calls = []

    class Counting:  # the store, counting the calls a snapshot makes
        def __getattr__(self, name):
            calls.append(name)
            return getattr(store, name)

    snap = take_snapshot(Counting(), root.id)
    assert sorted(calls) == ["counts", "counts", "find", "find", "get"]
    assert snap.counts == {State.PENDING: 3600, State.RUNNING: 300, State.DEFERRED: 0, State.FAILED: 70,
                           State.GATHERING: 0, State.COMPLETE: 6000, State.ERROR: 30, State.INACTIVE: 0,
                           State.KILLED: 0}
    assert (snap.total, snap.done, snap.child_count) == (10000, 6030, 10000)
    assert len(snap.failures) == MAX_FAILURES and len(snap.running) == MAX_RUNNING
    assert sum(n for _, n in snap.nodes) == MAX_RUNNING and len(snap.nodes) == 4
    panel = TreePanel(snap)
    assert (panel.bar.value, panel.bar.max, panel.bar.bar_style) == (6000.0, 10000.0, "danger")
    assert "(20 of 100)" in panel.failures.value and panel.failures.value.count("<details") == 20
    assert cells(panel.counts.value)["complete"] == 6000


def test_job_inside_a_tree_shows_its_children(store):
    root = start_tree(store)
    (child,) = add_children(store, root, 1, name="tests.jobfuncs.fan_out")
    run(store, 1, State.DEFERRED, query_at=time.time() + 3600)
    add_children(store, store.get(child.id), 3)
    run(store, 2, State.COMPLETE)
    snap = take_snapshot(store, child.id)
    assert (snap.total, snap.done, snap.child_count, snap.subtrees) == (3, 2, 3, ())


# -- polling and the entry point -------------------------------------------------------------------
def test_poller_stops_once_the_tree_is_final(store, sqlite_url):
    root = simple_tree(store, 5, complete=2, running=1)
    panel = progress(root.id, url=sqlite_url, widget=True, display=False, unit="chunks")
    assert isinstance(panel, TreePanel) and panel.is_polling
    assert (panel.bar.value, panel.bar.max) == (2.0, 5.0)  # polled before returning
    run(store, 2, State.COMPLETE)
    for job in store.find(root_id=root.id, states=[State.RUNNING]):
        assert store.finish(job.id, job.lease.token, State.COMPLETE)
    finish_root(store, root)
    snap = panel.wait(timeout=PATIENCE)
    assert snap.is_final and not panel.poller.is_alive and not panel.is_polling
    assert (panel.bar.value, panel.bar.max, panel.bar.bar_style) == (5.0, 5.0, "success")
    assert panel.poller._store is None  # its own store, closed with the thread
    assert panel.refresh() is snap  # after the end: the last snapshot, no new poll


def test_close_stops_polling_a_running_tree(sqlite_url, running_tree):
    view = progress(running_tree.id, url=sqlite_url, widget=False, display=False)
    assert isinstance(view, TextProgress) and view.is_polling
    view.close()
    assert view.poller.join(5) and not view.is_polling
    assert view.snapshot.status == "running"


def test_final_tree_starts_no_thread(store, sqlite_url):
    job = Job(name="m.done")
    store.insert([job])
    run(store, 1, State.COMPLETE)
    view = progress(job, url=sqlite_url, widget=True, display=False)
    assert view.bar.bar_style == "success" and not view.is_polling and view.wait(0) is view.snapshot


def test_progress_text_view_prints_to_stdout(sqlite_url, running_tree, capsys):
    view = progress(running_tree.id, url=sqlite_url)  # no Jupyter kernel here: the text view
    view.close()
    assert isinstance(view, TextProgress)
    assert capsys.readouterr().out.startswith("running: fan_out [########------------] 4/10 jobs")


def test_progress_targets_and_bad_input(sqlite_url, running_tree):
    class Future:
        job_id, url = running_tree.id, sqlite_url

    class Executor:
        url = sqlite_url

    class ExecutorFuture:
        job_id, _executor = running_tree.id, Executor()

    assert resolve_target(running_tree.id, url=sqlite_url) == (running_tree.id, sqlite_url)
    assert resolve_target(Future()) == (running_tree.id, sqlite_url)
    assert resolve_target(ExecutorFuture()) == (running_tree.id, sqlite_url)
    assert resolve_target(JobHandle(SimpleNamespace(job_id=running_tree.id), sqlite_url)) == (
        running_tree.id, sqlite_url)
    assert resolve_target(running_tree, url="sqlite:///x") == (running_tree.id, "sqlite:///x")
    with pytest.raises(TypeError, match="job id, a Job or a future"):
        progress(42, url=sqlite_url)
    with pytest.raises(JobNotFound, match="no job with id nope"):
        progress("nope", url=sqlite_url, display=False)
    with pytest.raises(ConfigError, match=r"at least 0\.5 s"):
        progress(Future(), interval=0.1, display=False)


def test_panel_displays_widget_with_text_plain(store, running_tree):
    panel = TreePanel(take_snapshot(store, running_tree.id))
    bundle = panel._repr_mimebundle_()
    assert bundle["application/vnd.jupyter.widget-view+json"]["model_id"] == panel.box.model_id
    assert bundle["text/plain"] == repr(panel)


def test_import_core4nb_does_not_import_ipywidgets():
    code = "import sys, core4nb; core4nb.progress; print('ipywidgets' in sys.modules, 'IPython' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


# -- a real worker node ----------------------------------------------------------------------------
def wait_with_burst_node(panel, url: str, name: str):
    """Run the queue's jobs on a real burst node (2 processes) while ``panel`` polls; its final snapshot."""
    node = start_node(url, name, processes=2, burst=True)
    try:
        snap = panel.wait(timeout=60)
        assert node.wait(60) == 0
    finally:
        stop_node(node)
    return snap


def test_real_worker_tree_to_success(sqlite_url):
    with Core4Executor(sqlite_url, defer_time=0.1) as ex:  # a URL: no local workers, the node does the work
        future = ex.submit(jobfuncs.fan_out, 8, None, 1, 0.3)  # 8 chunks of 0.3 s: ~1.2 s on 2 processes
        panel = progress(future, widget=True, display=False, unit="chunks")  # the URL comes from the future
        values, infos = [], []
        panel.bar.observe(lambda change: values.append(change["new"]), "value")
        panel.info.observe(lambda change: infos.append(change["new"]), "value")
        snap = wait_with_burst_node(panel, sqlite_url, "node-w")
        assert future.result(10) == sum(i * i for i in range(8))
    assert snap.is_final and not panel.is_polling
    assert (panel.bar.value, panel.bar.max, panel.bar.bar_style) == (8.0, 8.0, "success")
    assert values == sorted(values) and values[-1] == 8.0  # drawn live, never going back
    assert any("node-w (" in info for info in infos)  # a tick saw the node at work
    assert cells(panel.counts.value)["complete"] == 8
    assert repr(panel).startswith("complete: fan_out [####################] 8/8 chunks  complete 8")


def test_real_worker_tree_failure(sqlite_url):
    with Queue(sqlite_url) as queue:
        root = queue.enqueue(jobfuncs.fan_out, 4, 2, options={"defer_time": 0.1})
        panel = progress(root, url=sqlite_url, widget=True, display=False)
        snap = wait_with_burst_node(panel, sqlite_url, "node-f")
    assert snap.is_final and snap.root.state is State.ERROR
    assert panel.bar.bar_style == "danger"
    failures = panel.failures.value
    assert "ValueError: chunk 2 is bad" in failures
    assert 'in fail\n    raise ValueError(message)' in failures  # the remote traceback, behind <details>
    assert "ChildFailed" in failures  # the root failed because of its child
    assert repr(panel).endswith("ValueError: chunk 2 is bad")  # the root cause, not the root's ChildFailed


def test_live_output_shows_what_is_new_once_even_when_the_stored_tail_was_cut():
    from core4nb.executor.liveoutput import TerminalSink, new_text

    assert new_text("", "a\n") == "a\n"
    assert new_text("a\n", "a\nb\n") == "b\n"
    assert new_text("a\nb\n", "a\nb\n") == ""
    printed = "".join(f"line {i}\n" for i in range(20000))  # more than the 64 KiB the store keeps
    shown, later = printed[-65536:], (printed + "one more\n")[-65536:]  # the tail, before and after a line
    assert new_text(shown, later) == "one more\n"
    assert new_text("old trial\n", "new trial\n") == "new trial\n"  # a retry prints afresh
    stream = io.StringIO()
    sink = TerminalSink(stream)
    sink.write("chunk 1/2", "half a ")
    sink.write("chunk 2/2", "b\n")
    sink.write("chunk 1/2", "line\nnext\n")
    sink.write("chunk 1/2", "no newline at the end")
    assert stream.getvalue() == "[chunk 2/2] b\n[chunk 1/2] half a line\n[chunk 1/2] next\n"
    sink.closed("chunk 1/2")  # its job is done: the last line is not held back
    assert stream.getvalue().endswith("[chunk 1/2] next\n[chunk 1/2] no newline at the end\n")
