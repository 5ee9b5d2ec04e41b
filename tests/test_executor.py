"""Core4Executor against real worker processes: the concurrent.futures contract and beyond.

Most tests use the embedded default (``Core4Executor(workers=2)`` with
``CORE4NB_HOME`` in tmp); a few run on every backend through ``queue_url``.
Every executor is shut down inside its test and checked for leftover processes.
"""

from __future__ import annotations

import gc
import json
import linecache
import multiprocessing
import os
import pickle
import re
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
import time
import weakref
from concurrent.futures import FIRST_EXCEPTION, Future, ProcessPoolExecutor, as_completed, wait
from concurrent.futures._base import CANCELLED, CANCELLED_AND_NOTIFIED
from pathlib import Path

import psutil
import pytest

from core4nb import ChildFailed, Core4Executor, Core4Future, JobFailed, PayloadError, Queue, State
from core4nb.context import current_job
from core4nb.executor.futures import Progress
from core4nb.remote import RemoteTraceback, outcome
from tests.jobfuncs import add, fail
from tests.nodes import PATIENCE, start_node, wait_for

ROOT = Path(__file__).resolve().parent.parent


# -- job functions (importable by the workers as tests.test_executor) -------------------------
def square(x: int) -> int:
    return x * x


def wait_for_file(path: str, value: object = None, timeout: float = 60.0) -> object:
    """Block until ``path`` exists: a job the test releases when it is ready."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.01)
    return value


def progress_then_wait(path: str) -> str:
    current_job().progress(0.5, "half way")
    wait_for_file(path)
    return "released"


def fail_at_seven(x: int) -> int:
    if x == 7:
        raise ValueError(f"bad element {x}")
    return x


def fail_or_wait(what: str) -> str:
    """``"fail"`` raises; any other value is a file to wait for."""
    if what == "fail":
        raise ValueError("bad input")
    return str(wait_for_file(what, what))


def sleep_return(seconds: float, value: object) -> object:
    time.sleep(seconds)
    return value


class Dropped:
    """A map result the test drops: it must be freed then."""


def make_dropped(_: object) -> Dropped:
    return Dropped()


class ExitWhenPickled:
    def __reduce__(self):
        sys.exit(3)


class ExitWhenUnpickled:
    def __reduce__(self):
        return sys.exit, (4,)


class RefusesPickle:
    def __reduce__(self):
        raise pickle.PicklingError("refuses")


def make(cls: type) -> object:
    return cls()


# -- fixtures --------------------------------------------------------------------------------------
def process_tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def _is_gone(proc: psutil.Process) -> bool:
    try:  # an orphaned zombie has exited; init reaps it
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def assert_all_gone(procs: list[psutil.Process], timeout: float = PATIENCE) -> None:
    """No process of the local node's tree outlives the executor (the leak check)."""
    deadline = time.monotonic() + timeout
    while (alive := [p for p in procs if not _is_gone(p)]) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert alive == [], f"processes left after shutdown: {[(p.pid, p.cmdline()) for p in alive]}"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The embedded default's queue lives in tmp, never in ~/.core4nb."""
    monkeypatch.setenv("CORE4NB_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def ex(home: Path):
    executor = Core4Executor(workers=2)
    yield executor
    procs = process_tree(executor.local_workers.pid) if executor.local_workers.is_alive() else []
    executor.shutdown(cancel_futures=True)
    assert_all_gone(procs)
    # 0: drained and exited; -SIGTERM: stopped before it installed its handler (it had claimed nothing).
    assert executor.local_workers.process.returncode in (0, -15)
    assert not executor._runtime.poller._thread.is_alive()


def release(tmp_path: Path) -> str:
    return str(tmp_path / "release")


def wait_running(*futures: Core4Future) -> None:
    wait_for(lambda: all(f.running() for f in futures), what="jobs to start")


# -- embedded default ---------------------------------------------------------------------------------
def test_embedded_default_uses_home_queue_and_local_node(ex, home):
    assert ex.url == f"sqlite://{home / 'queue.db'}"
    assert (home / "queue.db").exists()
    assert ex.local_workers.processes == 2
    assert ex.local_workers.name == f"local-{socket.gethostname()}-{os.getpid()}"
    node = wait_for(lambda: [w for w in ex.store.workers() if w.name == ex.local_workers.name], what="node")
    assert node[0].slots == 2


def test_env_url_means_no_local_workers(sqlite_url, monkeypatch):
    monkeypatch.setenv("CORE4NB_URL", sqlite_url)
    executor = Core4Executor()
    assert (executor.url, executor.local_workers) == (sqlite_url, None)
    executor.shutdown()


# -- submit and futures --------------------------------------------------------------------------------
def test_submit_returns_a_real_future_with_the_result(ex):
    future = ex.submit(add, 2, 3)
    assert isinstance(future, Future)
    assert future.result(timeout=60) == 5
    assert ex.store.get(future.job_id).state == State.COMPLETE
    assert future.progress == Progress(State.COMPLETE, 1.0, "", 1)


def test_exception_comes_back_as_its_type_with_remote_traceback(ex):
    future = ex.submit(fail, "boom")
    with pytest.raises(ValueError, match=r"^boom$") as info:
        future.result(timeout=60)
    cause = info.value.__cause__
    assert isinstance(cause, RemoteTraceback)
    assert 'raise ValueError(message)' in cause.tb
    assert future.exception() is info.value


def test_as_completed_and_wait_first_exception(ex, tmp_path):
    gate = release(tmp_path)
    slow = ex.submit(wait_for_file, gate, "slow")
    bad = ex.submit(fail, "first")
    done, not_done = wait([slow, bad], timeout=60, return_when=FIRST_EXCEPTION)
    assert (done, not_done) == ({bad}, {slow})
    Path(gate).touch()
    quick = [ex.submit(add, i, i) for i in range(5)]
    assert sorted(f.result() for f in as_completed([*quick, slow], timeout=60) if f is not slow) == [0, 2, 4, 6, 8]
    assert slow.result() == "slow"


def test_done_callback_runs(ex):
    seen = threading.Event()
    future = ex.submit(add, 1, 1)
    future.add_done_callback(lambda f: seen.set() if f.result() == 2 else None)
    assert seen.wait(60)


def test_progress_snapshot_and_running_state(ex, tmp_path):
    future = ex.submit(progress_then_wait, release(tmp_path))
    wait_for(lambda: future.progress.value == 0.5, what="progress")
    assert future.progress.message == "half way"
    assert future.progress.state == State.RUNNING
    assert future.running()
    Path(release(tmp_path)).touch()
    assert future.result(timeout=60) == "released"


def test_cancel_pending_kills_its_job_and_running_returns_false(ex, tmp_path):
    gate = release(tmp_path)
    running = [ex.submit(wait_for_file, gate, i) for i in range(2)]  # both slots busy
    wait_running(*running)
    pending = ex.submit(add, 1, 2)
    assert pending.cancel() is True
    assert pending.cancelled() and pending.done()
    assert wait([pending], timeout=0).done == {pending}  # waiters see it at once
    assert ex.store.get(pending.job_id).state == State.KILLED
    assert running[0].cancel() is False
    Path(gate).touch()
    assert [f.result(timeout=60) for f in running] == [0, 1]


def test_kill_stops_a_running_job(ex, tmp_path):
    future = ex.submit(wait_for_file, release(tmp_path))
    wait_running(future)
    assert future.kill() == 1
    with pytest.raises(JobFailed, match=f"job {future.job_id} .* is killed: Killed: killed on request"):
        future.result(timeout=60)


def test_shutdown_cancel_futures_cancels_pending_and_waits_for_running(home, tmp_path):
    executor = Core4Executor(workers=2)
    procs = process_tree(executor.local_workers.pid)
    gate = release(tmp_path)
    running = [executor.submit(wait_for_file, gate, i) for i in range(2)]
    wait_running(*running)
    pending = [executor.submit(add, i, 0) for i in range(3)]
    executor.shutdown(wait=False, cancel_futures=True)
    assert [f.cancelled() for f in pending] == [True, True, True]
    assert {executor.store.get(f.job_id).state for f in pending} == {State.KILLED}
    with pytest.raises(RuntimeError, match=r"^cannot schedule new futures after shutdown$"):
        executor.submit(add, 1, 1)
    Path(gate).touch()
    executor.shutdown(wait=True)  # waits for the running two, then stops the node
    assert [f.result(timeout=0) for f in running] == [0, 1]
    assert_all_gone(procs)


def test_closed_executor_raises_what_process_pool_raises(ex):
    pool = ProcessPoolExecutor(1)
    pool.shutdown()
    with pytest.raises(RuntimeError) as expected:
        pool.submit(add, 1, 1)
    ex.shutdown()
    with pytest.raises(RuntimeError) as got:
        ex.submit(add, 1, 1)
    assert str(got.value) == str(expected.value)
    with pytest.raises(RuntimeError, match=str(expected.value)):
        ex.map(square, [1, 2])
    assert list(ex.map(square, [])) == []  # nothing to submit, as with map()


def test_context_manager_shuts_down(home):
    with Core4Executor(workers=1) as executor:
        procs = process_tree(executor.local_workers.pid)
        assert executor.submit(square, 9).result(timeout=60) == 81
    assert executor.is_shutdown
    assert_all_gone(procs)


# -- bad input ------------------------------------------------------------------------------------------
def test_unpicklable_function_or_item_is_named_and_nothing_enqueued(ex):
    lock = threading.Lock()

    def holds_lock(x):
        return lock, x

    with pytest.raises(PayloadError, match=r"cannot send function .*holds_lock to a worker"):
        ex.submit(holds_lock, 1)
    with pytest.raises(PayloadError, match=r"cannot send function .*holds_lock to a worker"):
        ex.map(holds_lock, [1, 2])
    with pytest.raises(PayloadError, match=r"cannot send element 2 of the map \(a lock\) to a worker"):
        ex.map(square, [1, 2, lock], chunksize=10)
    assert sum(ex.store.counts().values()) == 0


def test_unknown_option_non_iterable_and_bad_chunksize(ex):
    with pytest.raises(TypeError, match=r"unknown job option.*bogus"):
        ex.options(bogus=1)
    with pytest.raises(TypeError, match=r"unknown job option.*bogus"):
        Core4Executor(bogus=1)
    with pytest.raises(TypeError, match=r"^'int' object is not iterable$"):
        ex.map(square, 5)
    with pytest.raises(ValueError, match=r"^chunksize must be >= 1\.$"):
        ex.map(square, [1], chunksize=0)
    with pytest.raises(ValueError, match=r"^buffersize must be None or > 0$"):
        ex.map(square, [1], buffersize=0)
    assert sum(ex.store.counts().values()) == 0


def test_options_view_shares_the_runtime_and_sets_job_options(ex):
    view = ex.options(priority=5, attempts=3, wall_time=60)
    assert view._runtime is ex._runtime and view.job_options == {"priority": 5, "attempts": 3, "wall_time": 60}
    future = view.submit(add, 1, 2)
    assert future.result(timeout=60) == 3
    job = ex.store.get(future.job_id)
    assert (job.priority, job.attempts, job.wall_time) == (5, 3, 60.0)
    assert ex.store.get(ex.submit(add, 0, 0).job_id).priority == 0  # the executor itself is unchanged


# -- map --------------------------------------------------------------------------------------------------
def test_map_keeps_order_over_several_iterables_and_is_one_tree(ex):
    it = ex.map(pow, range(50), [2] * 60, chunksize=7)
    assert list(it) == [i**2 for i in range(50)]
    root = ex.attach(it.job_id)
    assert root.result(timeout=60) == [i**2 for i in range(50)]  # the root gathers every result
    chunks = ex.store.find(parent_id=it.job_id)
    assert len(chunks) == 8
    assert {c.state for c in chunks} == {State.COMPLETE}
    assert ex.store.counts(root_id=it.job_id)[State.COMPLETE] == 9


def test_map_auto_chunks_a_large_input(ex):
    values = list(ex.map(square, range(20_000)))
    assert values == [x * x for x in range(20_000)]


def test_map_yields_earlier_elements_then_raises_the_original(ex):
    got = []
    # The exception is the job's own; a note names its chunk and item.
    with pytest.raises(ValueError, match=r"^bad element 7\nchunk 2/4 \(items 5-9\), item 7 raised ValueError$") as info:
        for value in ex.map(fail_at_seven, range(20), chunksize=5):
            got.append(value)
    assert got == [0, 1, 2, 3, 4, 5, 6]
    assert isinstance(info.value.__cause__, RemoteTraceback)
    assert "in fail_at_seven" in info.value.__cause__.tb


def test_map_timeout_counts_from_the_call(ex):
    assert ex.submit(add, 0, 0).result(timeout=60) == 0  # the node is up: the timeout measures the map only
    it = ex.map(sleep_return, [0, 30], ["fast", "slow"], chunksize=1, timeout=3)
    assert next(it) == "fast"
    with pytest.raises(TimeoutError):
        next(it)
    with pytest.raises(StopIteration):  # a map that timed out is over
        next(it)
    ex.store.request_kill(it.job_id)  # the slow chunk runs; stop it instead of waiting 30 s


def test_map_buffersize_bounds_what_is_submitted_ahead(ex):
    pulled = []

    def source():
        for i in range(10):
            pulled.append(i)
            yield i

    it = ex.map(square, source(), chunksize=1, buffersize=2)
    assert len(pulled) == 2
    assert next(it) == 0
    assert len(pulled) == 3  # one more chunk in before one came out
    assert len(ex.store.find(parent_id=it.job_id)) == 3
    assert list(it) == [x * x for x in range(1, 10)]
    assert ex.attach(it.job_id).result(timeout=60) == [x * x for x in range(10)]


def test_map_buffersize_over_a_generator_grows_its_chunks(ex):
    it = ex.map(square, (x for x in range(20)), buffersize=3)
    assert list(it) == [x * x for x in range(20)]
    chunks = ex.store.find(parent_id=it.job_id, blobs=True)
    assert [len(outcome(c, ex.store)) for c in chunks] == [1, 2, 4, 8, 5]  # early results fast, later ones cheap


def test_a_maps_root_runs_nowhere_and_completes_in_the_write_of_its_last_chunk(ex):
    it = ex.map(sleep_return, [0.3, 0.05, 0.2, 0.1], range(4), chunksize=1)
    assert list(it) == [0, 1, 2, 3]
    root, chunks = ex.store.get(it.job_id), ex.store.find(parent_id=it.job_id)
    assert (root.state, root.trial, root.gather, root.payload) == (State.COMPLETE, 0, True, None)
    assert root.finished_at == max(c.finished_at for c in chunks)  # the same write, on SQLite
    assert root.args_summary == "4 chunks, 4 items"
    assert ex.attach(it.job_id).result(timeout=60) == [0, 1, 2, 3]


def test_a_failed_chunk_fails_the_root_and_kills_the_chunks_not_started(ex, tmp_path):
    gate = release(tmp_path)
    it = ex.map(fail_or_wait, ["fail", gate, gate, gate, gate], chunksize=1)
    with pytest.raises(ValueError, match=r"^bad input\nchunk 1/5 "):
        list(it)
    root = wait_for(lambda: (job := ex.store.get(it.job_id)).is_final and job, PATIENCE)
    assert (root.state, root.error.type) == (State.ERROR, "ChildFailed")
    chunks = ex.store.find(parent_id=it.job_id)
    assert root.error.message.startswith(f"child job {chunks[0].id} (tests.test_executor.fail_or_wait) ended error")
    Path(gate).touch()  # the chunk that was running finishes (it was flagged); no chunk waits to run
    wait_for(lambda: all(c.is_final for c in ex.store.find(parent_id=it.job_id)), PATIENCE)
    assert {c.state for c in ex.store.find(parent_id=it.job_id)[1:]} <= {State.KILLED, State.COMPLETE}
    assert State.KILLED in {c.state for c in ex.store.find(parent_id=it.job_id)}
    with pytest.raises(ChildFailed, match=r"ended error: ChunkError: chunk 1/5 raised ValueError: bad input$"):
        ex.attach(it.job_id).result(timeout=60)


def test_a_map_that_fails_between_two_stored_groups_leaves_nothing_to_run(ex, monkeypatch):
    """Chunks carrying large data are stored in groups; one that cannot be pickled after a group was
    stored kills the stored ones (with their root), so no part of the map runs without the rest."""
    import numpy as np

    from core4nb.executor import mapping

    monkeypatch.setattr(mapping, "STREAM_BYTES", 1)  # every chunk is a group of its own
    items = [np.full(300_000, i) for i in range(3)] + [threading.Lock()]
    with pytest.raises(PayloadError, match="element 3 of the map"):
        ex.map(np.sum, items, chunksize=1)
    (root,) = [job for job in ex.store.find() if job.gather]
    chunks = ex.store.find(parent_id=root.id)
    assert len(chunks) == 3 and {job.state for job in chunks} <= {State.KILLED, State.COMPLETE}
    # Killed with its tree -- unless the workers were quicker than the failing pickle, and all three are done.
    assert root.state is (State.COMPLETE if {job.state for job in chunks} == {State.COMPLETE} else State.KILLED)


def test_map_of_a_job_class_is_refused(ex):
    from core4nb.examples import PrimeJob

    with pytest.raises(TypeError, match=r"is a job class: submit"):
        ex.map(PrimeJob, [1])


# -- reattach, __main__ code, other backends, wrong key --------------------------------------------------
def run_script(code: str, tmp_path: Path, timeout: float = 120) -> dict:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(code))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_reattach_from_a_new_process(ex, tmp_path):
    gate = release(tmp_path)
    waiting = ex.submit(progress_then_wait, gate)
    finished = ex.submit(add, 20, 22)
    it = ex.map(square, range(6), chunksize=2)
    assert list(it) == [0, 1, 4, 9, 16, 25]
    assert finished.result(timeout=60) == 42
    out = run_script(f"""
        import json, time
        from core4nb import Core4Executor, JobFailed
        ex = Core4Executor({ex.url!r})
        waiting = ex.attach({waiting.job_id!r})
        deadline = time.monotonic() + 60
        while waiting.progress.value is None and time.monotonic() < deadline:
            time.sleep(0.05)
        out = {{"progress": [waiting.progress.value, waiting.progress.message]}}
        out["killed"] = waiting.kill()
        try:
            waiting.result(60)
        except JobFailed as exc:
            out["error"] = str(exc)
        out["finished"] = ex.attach({finished.job_id!r}).result(60)
        out["map"] = ex.attach({it.job_id!r}).result(60)
        ex.shutdown()
        print(json.dumps(out))
    """, tmp_path)
    assert out["progress"] == [0.5, "half way"]
    assert out["killed"] == 1
    assert out["error"].startswith(f"job {waiting.job_id} (tests.test_executor.progress_then_wait) is killed")
    assert (out["finished"], out["map"]) == (42, [0, 1, 4, 9, 16, 25])
    with pytest.raises(JobFailed, match=r"is killed"):
        waiting.result(timeout=60)


def test_lambdas_closures_classes_and_exceptions_from_main(home, tmp_path):
    out = run_script("""
        import json
        from core4nb import Core4Executor

        class Point:
            def __init__(self, x, y):
                self.x, self.y = x, y
            def norm2(self):
                return self.x ** 2 + self.y ** 2

        class Oops(Exception):
            pass

        def explode(x):
            if x == 3:
                raise Oops(f"oops {x}")
            return x

        def main():
            base = 10
            def scale(x):
                return x * base
            out = {}
            with Core4Executor(workers=2) as ex:
                out["lambda"] = ex.submit(lambda x: x * 2, 21).result(60)
                out["closure"] = list(ex.map(scale, range(4)))
                out["method"] = ex.submit(Point(3, 4).norm2).result(60)
                point = ex.submit(Point, 1, 2).result(60)
                out["instance"] = [type(point) is Point, point.x, point.y]
                try:
                    ex.submit(explode, 3).result(60)
                except Oops as exc:
                    out["exception"] = [type(exc).__module__, str(exc), "in explode" in exc.__cause__.tb]
                got = []
                try:
                    for value in ex.map(explode, range(6), chunksize=6):
                        got.append(value)
                except Oops as exc:
                    out["map"] = [got, str(exc)]
            print(json.dumps(out))

        if __name__ == "__main__":
            main()
    """, tmp_path)
    assert out == {"lambda": 42, "closure": [0, 10, 20, 30], "method": 25, "instance": [True, 1, 2],
                   "exception": ["__main__", "oops 3", True], "map": [[0, 1, 2], "oops 3"]}


def test_executor_with_local_workers_on_every_backend(queue_url):
    with Core4Executor(queue_url, workers=2) as executor:
        procs = process_tree(executor.local_workers.pid)
        assert executor.submit(add, 2, 3).result(timeout=120) == 5
        assert list(executor.map(square, range(10), chunksize=5)) == [x * x for x in range(10)]
        with pytest.raises(ValueError, match=r"^boom$"):
            executor.submit(fail, "boom").result(timeout=120)
    assert_all_gone(procs)


def test_worker_with_another_key_leaves_the_future_to_a_worker_with_the_key(sqlite_url):
    with Core4Executor(sqlite_url) as executor:
        future = executor.submit(add, 1, 2)
        wrong = start_node(sqlite_url, "wrong-key", processes=1, burst=True,
                           env={"CORE4NB_KEY": "not-the-notebook-key"})
        assert wrong.wait(60) == 0  # nothing it can claim: a burst node leaves at once
        with Queue(sqlite_url) as queue:
            assert not future.done() and queue.get(future.job_id).trial == 0
        assert start_node(sqlite_url, "right-key", processes=1, burst=True).wait(60) == 0
        assert future.result(timeout=60) == 3


# -- the local node's life ---------------------------------------------------------------------------
def test_interpreter_exit_finishes_submitted_work_and_stops_the_node(home, tmp_path):
    out = run_script(f"""
        import json, sys
        sys.path.insert(0, {str(ROOT)!r})
        from core4nb import Core4Executor
        from tests.jobfuncs import touch
        ex = Core4Executor(workers=2)
        for i in range(3):
            ex.submit(touch, {str(tmp_path)!r} + f"/done{{i}}")
        print(json.dumps({{"node": ex.local_workers.pid}}))  # no shutdown: exit must finish the work
    """, tmp_path)
    assert sorted(p.name for p in tmp_path.glob("done*")) == ["done0", "done1", "done2"]
    assert not psutil.pid_exists(out["node"]) or _is_gone(psutil.Process(out["node"]))


def test_a_crashed_local_node_is_started_again(ex):
    first = process_tree(ex.local_workers.pid)
    wait_for(lambda: len(process_tree(ex.local_workers.pid)) >= 4, what="node children")  # forkserver + 2 + tracker
    first = process_tree(ex.local_workers.pid)
    first[0].kill()
    assert ex.submit(add, 4, 5).result(timeout=60) == 9
    assert ex.local_workers.pid != first[0].pid
    assert_all_gone(first)


def test_a_node_that_cannot_start_is_reported_not_restarted_forever(tmp_path):
    from core4nb.executor.local import MAX_QUICK_DEATHS, LocalWorkers

    node = LocalWorkers(f"sqlite://{tmp_path}", 1)  # a directory: the node exits at once
    problems = []
    for _ in range(MAX_QUICK_DEATHS + 1):
        node.process.wait(60)
        problems.append(node.check())
    assert problems[:MAX_QUICK_DEATHS] == [None] * MAX_QUICK_DEATHS
    assert problems[-1].startswith(f"the local worker node {node.name} exited with code 1 within 5 s of starting, "
                                   f"3 times")
    node.stop()


def test_a_local_node_that_crashes_at_import_fails_the_waiting_future(tmp_path, monkeypatch):
    """The future waits for the bell after submit; a node that dies before it ever rings must still be
    noticed (the poller's idle wait is bounded), restarted, and then reported, not waited for forever."""
    from core4nb.errors import NodeStartFailed

    broken = tmp_path / "broken"
    shutil.copytree(ROOT / "core4nb", broken / "core4nb")
    with open(broken / "core4nb" / "worker" / "child.py", "a") as child:
        child.write("\ndef broken(:\n")
    monkeypatch.syspath_prepend(str(broken))  # the node's PYTHONPATH; this process has core4nb already
    monkeypatch.chdir(tmp_path)  # `python -m` puts the working directory (this checkout) first
    with Core4Executor(f"sqlite://{tmp_path}/q.db", workers=1) as ex:
        future = ex.submit(abs, -1)
        with pytest.raises(NodeStartFailed, match=f"job {future.job_id} cannot run here: the local worker node "
                           r".* exited with code 1 within 5 s of starting, 3 times; its error is in "):
            future.result(timeout=PATIENCE)
        assert "SyntaxError" in ex.local_workers.log_path.read_text()


def test_future_and_map_keep_what_the_jobs_printed(ex):
    from tests.jobfuncs import chatty

    future = ex.submit(chatty, "out", "err")
    assert future.result(timeout=60) == 3 and future.output == "out\nerr\n"
    results = ex.map(chatty, ["a", "bb"], ["x", "y"], chunksize=1, timeout=60)
    assert list(results) == [1, 2]
    assert results.outputs == ["a\nx\n", "bb\ny\n"]


# -- CPython's own concurrent.futures tests found these (tests/test_stdlib_futures.py) ----------------
def test_map_frees_each_result_once_the_caller_drops_it(ex):
    seen = 0
    for value in ex.map(make_dropped, range(6), chunksize=3):  # three values per chunk job
        ref = weakref.ref(value)
        del value
        gc.collect()
        assert ref() is None
        seen += 1
    assert seen == 6


def test_system_exit_while_pickling_a_result_or_unpickling_a_payload_reaches_result(ex):
    assert ex.submit(square, 2).result(timeout=60) == 4  # both children started
    children = {p.pid for p in process_tree(ex.local_workers.pid)}
    pickled = ex.submit(make, ExitWhenPickled)
    with pytest.raises(SystemExit) as raised:
        pickled.result(timeout=60)
    assert raised.value.code == 3
    unpickled = ex.submit(id, ExitWhenUnpickled())
    with pytest.raises(SystemExit) as raised:
        unpickled.result(timeout=60)
    assert raised.value.code == 4
    assert [ex.store.get(f.job_id).error.type for f in (pickled, unpickled)] == ["SystemExit", "SystemExit"]
    assert {p.pid for p in process_tree(ex.local_workers.pid)} == children  # no child died of it
    assert ex.submit(square, 5).result(timeout=60) == 25


def test_remote_traceback_shows_the_line_of_a_function_whose_file_only_the_notebook_has(ex):
    source = "def cell_fn(x):\n    raise ValueError(x)  # the user's own line\n"
    filename = f"/nonexistent-{os.getpid()}/ipykernel_1/3021.py"  # as IPython names a cell: no such file
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    try:
        namespace = {"__name__": "__main__"}  # travels by value, like a notebook's function
        exec(compile(source, filename, "exec"), namespace)
        with pytest.raises(ValueError, match=r"^boom$") as raised:
            ex.submit(namespace["cell_fn"], "boom").result(timeout=60)
    finally:
        del linecache.cache[filename]
    assert (f'File "{filename}", line 2, in cell_fn\n    raise ValueError(x)  # the user\'s own line\n'
            in raised.value.__cause__.tb)


def test_unpicklable_arguments_and_results_are_pickling_errors(ex):
    with pytest.raises(pickle.PicklingError, match=r"^cannot send argument 0 \(a RefusesPickle\) to a worker: "
                                                   r"refuses$") as raised:
        ex.submit(id, RefusesPickle())
    assert isinstance(raised.value, PayloadError)
    with pytest.raises(pickle.PicklingError, match=r"^cannot send element 1 of the map \(a RefusesPickle\)"):
        ex.map(id, [1, RefusesPickle()])
    with pytest.raises(pickle.PicklingError, match=r"^cannot serialize the job's result \(a tests.test_executor."
                                                   r"RefusesPickle\): PicklingError: refuses$"):
        ex.submit(make, RefusesPickle).result(timeout=60)


def test_max_workers_is_the_worker_count(home):
    with Core4Executor(max_workers=1) as executor:
        assert executor.local_workers.processes == 1
        assert executor.submit(square, 4).result(timeout=60) == 16
    for bad in (0, -1):
        with pytest.raises(ValueError, match=r"^max_workers must be greater than 0$"):
            Core4Executor(max_workers=bad)
    with pytest.raises(TypeError, match=r"^Core4Executor\(4\): the first argument is the queue URL; give the "
                                        r"worker count as max_workers=4$"):
        Core4Executor(4)
    with pytest.raises(TypeError, match=r"^give the worker count once: workers= or max_workers=, not both$"):
        Core4Executor(workers=1, max_workers=1)
    with pytest.raises(ValueError, match=r"^Core4Executor takes no mp_context: worker nodes start their own"):
        Core4Executor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))


def test_future_and_executor_reprs_have_the_stock_shape(ex):
    future = ex.submit(square, 3)
    assert future.result(timeout=60) == 9
    assert re.fullmatch(rf"<Core4Future at 0x[0-9a-f]+ state=finished returned int job={future.job_id}>",
                        repr(future)), repr(future)
    assert re.fullmatch(r"<Core4Executor at 0x[0-9a-f]+ url=sqlite:///\S+/queue\.db max_workers=2 state=running>",
                        repr(ex)), repr(ex)


def test_cancel_goes_through_cancelled_then_notifies_waiters(ex, tmp_path):
    gate = release(tmp_path)
    running = [ex.submit(wait_for_file, gate, i) for i in range(2)]  # both slots busy
    wait_running(*running)
    pending = ex.submit(add, 1, 2)
    states = []
    pending.add_done_callback(lambda f: states.append(f._state))
    assert pending.cancel() is True
    assert states == [CANCELLED]  # done callbacks run in CANCELLED, as Future.cancel() runs them
    # The job is killed in the store, so the executor has acknowledged it (set_running_or_notify_cancel):
    assert pending._state == CANCELLED_AND_NOTIFIED
    assert wait([pending], timeout=0).done == {pending}
    assert ex.store.get(pending.job_id).state == State.KILLED
    Path(gate).touch()
    assert [f.result(timeout=60) for f in running] == [0, 1]
