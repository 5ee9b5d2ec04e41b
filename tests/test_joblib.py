"""The joblib backend ``core4nb`` with real worker processes: joblib's semantics, scikit-learn, the data plane.

Most tests use the embedded default with two local workers (the ``ex`` fixture of test_executor); the
ones where the store matters run on both stores, and scikit-learn also on the MongoDB wire-protocol test
server with two worker nodes. Results are compared with joblib's own loky backend, exactly.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from pathlib import Path

import joblib
import numpy as np
import pytest
from joblib import Parallel, delayed
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.datasets import make_classification
from sklearn.ensemble import RandomForestClassifier
from sklearn.model_selection import GridSearchCV, cross_val_score

import core4nb
import core4nb.joblib
from core4nb import Core4Executor, PayloadError, Queue, State, buffers
from core4nb.errors import NoWorkers
from core4nb.remote import RemoteTraceback, outcome
from tests.nodes import start_node, stop_node, wait_for
from tests.test_executor import assert_all_gone, process_tree, square, wait_for_file

#: Buffers from 32 KiB on are blobs here, so the small X of these tests (96 KB) is one and y is not.
THRESHOLD = str(32 * 1024)
FIT = "sklearn.model_selection._validation._fit_and_score"


# -- job functions (importable by the workers as tests.test_joblib) ---------------------------------
def fail_on(x: int, bad: int) -> int:
    if x == bad:
        raise ValueError(f"bad element {x}")
    return x


def nested(i: int) -> tuple:
    """A job that makes its own joblib call: it must run here, sequentially."""
    pids = Parallel(n_jobs=-1)(delayed(os.getpid)() for _ in range(4))
    backend, _ = joblib.parallel.get_active_backend()
    return os.getpid(), pids, type(backend).__name__, i


class LockedClassifier(ClassifierMixin, BaseEstimator):
    """An estimator that cannot be pickled (it holds a lock), as some wrapped models do."""

    def __init__(self, C: float = 1.0) -> None:
        self.C = C
        self._lock = threading.Lock()

    def fit(self, X, y):
        return self


def children(store, root_id: str) -> list:
    return store.find(parent_id=root_id, blobs=True)


def batch_jobs(store, root_id: str) -> list:
    return [j for j in children(store, root_id) if j.name != "joblib:end"]


def search_and_score(X, y) -> tuple:
    """A grid search (4 candidates × 3 folds) and a cross validation, as scikit-learn users write them."""
    model = RandomForestClassifier(n_estimators=5, random_state=0)
    search = GridSearchCV(model, {"max_depth": [2, 4], "max_features": ["sqrt", 0.5]}, cv=3, n_jobs=-1).fit(X, y)
    scores = cross_val_score(model, X, y, cv=3, n_jobs=-1)
    return search.cv_results_["mean_test_score"], search.best_params_, scores


@pytest.fixture
def ex(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The embedded default (its queue in tmp) with two local workers; no process outlives the test."""
    monkeypatch.setenv("CORE4NB_HOME", str(tmp_path / "home"))
    executor = Core4Executor(workers=2)
    procs = process_tree(executor.local_workers.pid)
    yield executor
    executor.shutdown(cancel_futures=True)
    assert_all_gone(procs)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    return make_classification(n_samples=600, n_features=20, random_state=0)  # X: 96,000 bytes


@pytest.fixture(scope="module")
def loky_results(data) -> tuple:
    from joblib.externals.loky import get_reusable_executor

    with joblib.parallel_config(backend="loky", n_jobs=2):
        expected = search_and_score(*data)
    get_reusable_executor().shutdown(wait=True)  # no loky worker outlives the module
    return expected


def assert_same(got: tuple, expected: tuple) -> None:
    assert np.array_equal(got[0], expected[0]) and got[1] == expected[1] and np.array_equal(got[2], expected[2])


# -- joblib's semantics ------------------------------------------------------------------------------
def test_results_come_back_in_order_from_one_job_per_batch(ex):
    with joblib.parallel_config(backend="core4nb"):
        assert Parallel(n_jobs=-1, batch_size=3)(delayed(square)(i) for i in range(50)) == [i * i for i in range(50)]
    call = core4nb.joblib.last_call()
    root = ex.store.get(call.job_id)
    assert (root.name, root.root_id) == ("joblib:tests.test_executor.square", call.job_id)
    batches = batch_jobs(ex.store, call.job_id)
    assert len(batches) == call.batches and {b.name for b in batches} == {"tests.test_executor.square"}
    values = [v for b in batches for v in outcome(b, ex.store)]  # batches hold the calls in order
    assert values == [i * i for i in range(50)]
    assert max(len(outcome(b, ex.store)) for b in batches) == 3


def test_n_jobs_is_the_live_slots(ex):
    with joblib.parallel_config(backend="core4nb"):
        assert [joblib.effective_n_jobs(n) for n in (-1, -2, 1, 2)] == [2, 1, 1, 2]
        with pytest.warns(UserWarning, match=r"n_jobs=5 but queue sqlite://.* has 2 live worker slot\(s\): "
                                             r"using 2; start more with `core4nb worker URL`") as seen:
            assert joblib.effective_n_jobs(5) == 2
            assert Parallel(n_jobs=5)(delayed(square)(i) for i in range(6)) == [i * i for i in range(6)]
        assert len(seen) == 1  # said once
        with pytest.raises(ValueError, match="n_jobs == 0"):
            joblib.effective_n_jobs(0)


def test_n_jobs_1_runs_here_and_makes_no_jobs(ex):
    with joblib.parallel_config(backend="core4nb"):
        assert Parallel(n_jobs=1)(delayed(os.getpid)() for _ in range(3)) == [os.getpid()] * 3
    assert sum(ex.store.counts().values()) == 0


def test_generator_returns_in_order_and_unordered_returns_them_all(ex):
    with joblib.parallel_config(backend="core4nb"):
        gen = Parallel(n_jobs=2, return_as="generator")(delayed(square)(i) for i in range(12))
        assert not isinstance(gen, list) and list(gen) == [i * i for i in range(12)]
        unordered = Parallel(n_jobs=2, return_as="generator_unordered")(delayed(square)(i) for i in range(12))
        assert sorted(unordered) == [i * i for i in range(12)]


def test_an_error_is_raised_as_its_type_and_the_other_jobs_are_killed(ex, tmp_path):
    gate = str(tmp_path / "never")
    calls = [delayed(fail_on)(0, 0)] + [delayed(wait_for_file)(gate, i) for i in range(5)]
    with joblib.parallel_config(backend="core4nb"), pytest.raises(ValueError, match=r"^bad element 0$") as info:
        Parallel(n_jobs=2, batch_size=1, pre_dispatch="all")(calls)
    assert isinstance(info.value.__cause__, RemoteTraceback) and "in fail_on" in info.value.__cause__.tb
    call = core4nb.joblib.last_call()

    def states():
        return sorted(str(b.state) for b in batch_jobs(ex.store, call.job_id))

    wait_for(lambda: states() == ["error"] + ["killed"] * 5, timeout=60, what="the other batches to be killed")
    assert ex.store.get(call.job_id).state in (State.KILLED, State.ERROR)


def test_a_timeout_raises_and_kills_the_late_jobs(ex, tmp_path):
    calls = [delayed(wait_for_file)(str(tmp_path / "never"), i) for i in range(3)]
    with joblib.parallel_config(backend="core4nb"), pytest.raises(multiprocessing.TimeoutError):  # joblib's type
        Parallel(n_jobs=2, batch_size=1, timeout=2)(calls)
    call = core4nb.joblib.last_call()
    wait_for(lambda: {str(b.state) for b in batch_jobs(ex.store, call.job_id)} == {"killed"}, timeout=60,
             what="the timed-out batches to be killed")


def test_a_generator_closed_early_kills_what_is_left(ex, tmp_path):
    gate = str(tmp_path / "never")
    calls = [delayed(square)(3)] + [delayed(wait_for_file)(gate, i) for i in range(4)]
    with joblib.parallel_config(backend="core4nb"):
        gen = Parallel(n_jobs=2, batch_size=1, pre_dispatch="all", return_as="generator")(calls)
        assert next(gen) == 9
        with pytest.warns(UserWarning, match="cancelled"):
            gen.close()
    call = core4nb.joblib.last_call()
    wait_for(lambda: sorted(str(b.state) for b in batch_jobs(ex.store, call.job_id)) == ["complete"] + ["killed"] * 4,
             timeout=60, what="the unfinished batches to be killed")


def test_nested_calls_run_sequentially_inside_the_job(ex):
    with joblib.parallel_config(backend="core4nb"):
        results = Parallel(n_jobs=2, batch_size=1)(delayed(nested)(i) for i in range(4))
    assert [r[3] for r in results] == [0, 1, 2, 3]
    for pid, pids, backend, _ in results:
        assert (pids, backend) == ([pid] * 4, "SequentialBackend")
    assert os.getpid() not in {r[0] for r in results}


# -- bad input --------------------------------------------------------------------------------------------
def test_an_unpicklable_estimator_is_named_before_anything_is_stored(ex, data):
    search = GridSearchCV(LockedClassifier(), {"C": [1.0, 2.0]}, cv=3, n_jobs=-1)
    with joblib.parallel_config(backend="core4nb"), pytest.raises(
            PayloadError, match=rf"^cannot send argument 0 \(a LockedClassifier\) to a worker: cannot pickle "
                                rf"'_thread.lock' object \(in a joblib call of {FIT}\)$"):
        search.fit(*data)
    assert sum(ex.store.counts().values()) == 0


def test_an_unpicklable_argument_of_a_later_batch_is_raised_in_the_notebook(ex):
    """The fifth batch is dispatched by the poller thread (a completion's callback): its error still arrives."""
    calls = [delayed(square)(i) for i in range(4)] + [delayed(square)(threading.Lock())]
    with joblib.parallel_config(backend="core4nb"), pytest.raises(
            PayloadError, match=r"^cannot send argument 0 \(a lock\) to a worker: cannot pickle '_thread.lock' object "
                                r"\(in a joblib call of tests.test_executor.square\)$"):
        Parallel(n_jobs=2, batch_size=1)(calls)
    assert len(batch_jobs(ex.store, core4nb.joblib.last_call().job_id)) == 4


def test_job_options_reach_every_batch(ex):
    with joblib.parallel_config(backend="core4nb", priority=3, attempts=2, wall_time=60):
        assert Parallel(n_jobs=2)(delayed(square)(i) for i in range(4)) == [0, 1, 4, 9]
    call = core4nb.joblib.last_call()
    assert {(b.priority, b.attempts, b.wall_time) for b in batch_jobs(ex.store, call.job_id)} == {(3, 2, 60.0)}
    assert ex.store.get(call.job_id).priority == 2  # the root after its batches


def test_no_worker_node_is_a_clear_error_naming_the_command(sqlite_url):
    with Core4Executor(sqlite_url) as executor:
        with joblib.parallel_config(backend="core4nb", url=sqlite_url, wait_for_workers=1), pytest.raises(
                NoWorkers, match=rf"^no worker node serves queue {sqlite_url} \(waited 1 s\): start one with "
                                 rf"`core4nb worker {sqlite_url}`, or leave out url= for the embedded queue$"):
            Parallel(n_jobs=-1)(delayed(square)(i) for i in range(4))
        assert sum(executor.store.counts().values()) == 0


def test_unknown_options_are_refused():
    with pytest.raises(TypeError, match=r"unknown job option.*bogus"):
        core4nb.joblib.Core4Backend(bogus=1)
    with pytest.raises(TypeError, match=r"does not take: pass them as parallel_config\(backend='core4nb', url=…\)"):
        Parallel(n_jobs=2, backend="core4nb", url="sqlite:///tmp/x.db")(delayed(square)(1) for _ in range(2))


# -- the data plane: X hashed once, stored once ---------------------------------------------------------------
def test_a_grid_search_hashes_and_stores_x_once(queue_url, data, monkeypatch):
    monkeypatch.setenv("CORE4NB_BLOB_THRESHOLD", THRESHOLD)
    hashed = []
    real_digest = buffers.digest
    monkeypatch.setattr(buffers, "digest", lambda view: hashed.append(view.nbytes) or real_digest(view))
    X, y = data
    with Core4Executor(queue_url, workers=2) as executor, joblib.parallel_config(backend="core4nb", url=queue_url):
        search = GridSearchCV(RandomForestClassifier(n_estimators=3, random_state=0), {"max_depth": [2, 3, 4]},
                              cv=3, n_jobs=-1).fit(X, y)
        call = core4nb.joblib.last_call()
        assert len(batch_jobs(executor.store, call.job_id)) == call.batches >= 2
        assert hashed == [X.nbytes]  # once for the call, though every batch names it
        with Queue(queue_url) as queue:
            assert {b.digest: b.size for b in queue.store.blobs.listing()} == {
                buffers.digest(memoryview(X).cast("B")): X.nbytes}
    assert search.best_params_ in [{"max_depth": d} for d in (2, 3, 4)]


# -- scikit-learn: the same numbers as loky ---------------------------------------------------------------------
def test_scikit_learn_on_the_embedded_queue_matches_loky(ex, data, loky_results):
    with joblib.parallel_config(backend="core4nb"):
        assert_same(search_and_score(*data), loky_results)


def test_scikit_learn_on_two_mongo_nodes_matches_loky_and_each_node_fetches_x_once(mongo_url, data, loky_results,
                                                                                    tmp_path: Path, monkeypatch):
    monkeypatch.setenv("CORE4NB_BLOB_THRESHOLD", THRESHOLD)
    nodes = [start_node(mongo_url, f"n{i}", processes=1, env={"CORE4NB_BLOB_CACHE": str(tmp_path / f"cache-{i}")})
             for i in range(2)]
    try:
        with Core4Executor(mongo_url) as executor, joblib.parallel_config(backend="core4nb", url=mongo_url):
            wait_for(lambda: executor._runtime.live_slots() == 2, timeout=60, what="both nodes")
            assert joblib.effective_n_jobs(-1) == 2
            assert_same(search_and_score(*data), loky_results)
    finally:
        logs = [stop_node(n) for n in nodes]
    ran = [log.count(FIT) for log in logs]  # "claimed <id> <name> (trial 1)" per batch a node ran
    fetched = [log.count("fetched from GridFS") for log in logs]
    assert sum(ran) >= 2 and fetched == [1 if r else 0 for r in ran], (ran, fetched, logs)


# -- progress: one tree per call -------------------------------------------------------------------------------
def test_one_tree_per_call_and_a_panel_shows_it(ex, monkeypatch):
    shown = []
    monkeypatch.setattr("core4nb.widgets.api.widgets_available", lambda: True)  # as in a Jupyter kernel
    monkeypatch.setattr("IPython.display.display", lambda obj, **options: shown.append(obj))  # display_id=True
    with joblib.parallel_config(backend="core4nb"):
        Parallel(n_jobs=2, batch_size=2)(delayed(square)(i) for i in range(8))
    call = core4nb.joblib.last_call()
    assert shown == [call.panel]
    snapshot = call.panel.wait(60)
    assert (snapshot.status, snapshot.root_id, call.panel.bar.bar_style) == ("complete", call.job_id, "success")
    assert snapshot.counts[State.COMPLETE] == call.batches + 1  # the batches and joblib:end
    text = core4nb.progress(call, widget=False, display=False).wait(60)
    assert (text.status, text.name) == ("complete", "square")  # the root's short name
