"""A joblib parallel backend: scikit-learn (and every joblib user) on core4nb's worker nodes.

``import core4nb.joblib`` registers the backend ``"core4nb"``::

    import joblib, core4nb.joblib
    with joblib.parallel_config(backend="core4nb"):            # embedded queue, local workers
        GridSearchCV(model, grid, n_jobs=-1).fit(X, y)
    with joblib.parallel_config(backend="core4nb", url="mongodb://db.example/core4"):   # a cluster
        cross_val_score(model, X, y, n_jobs=-1)

Data flow of one ``Parallel`` call (a :class:`_Call`)::

    Parallel ── BatchedCalls ──► submit ── make_job (one DigestMemo per call) ──► store.insert
       ▲                                                                            │
       └── callback(future) ◄── Core4Future ◄── the executor's poller ◄── worker nodes run the batch

    job tree:  joblib:<function>  (JoblibRoot: completes once the call has ended and every batch is done)
                ├─ <function>      one job per joblib batch (joblib's auto-batching sizes them)
                └─ joblib:end      inserted when the call ends normally; the root waits for it

- ``n_jobs`` is mapped to the live worker slots of the queue (``-1``: all of them; 1 and None, as in joblib,
  run the calls here unless ``parallel_config(n_jobs=-1)`` makes -1 the default); more than exist is
  capped with one warning; none at all (a URL no node serves) is a :class:`~core4nb.errors.NoWorkers`
  error after ``wait_for_workers`` seconds.
- A large argument of every batch (the ``X`` of a grid search) is hashed once per call and stored once
  as a blob; a MongoDB node downloads it once (its blob cache), not once per batch.
- Nested joblib calls inside a job run sequentially in that job's process (no fork bombs).
- When joblib aborts (the first error, a timeout, a generator closed early, Ctrl-C) the call's tree is
  killed: pending batches at once, running ones by SIGTERM.
"""

from __future__ import annotations

import logging
import threading
import time
import warnings
from typing import Any

try:
    from joblib.parallel import (
        AutoBatchingMixin,
        ParallelBackendBase,
        SequentialBackend,
        register_parallel_backend,
    )
except ImportError as exc:  # joblib is an extra: say which
    raise ImportError(f"core4nb.joblib needs joblib ({exc}): pip install 'core4nb[joblib]'") from exc

from core4nb.calls import describe, make_job
from core4nb.errors import JobNotFound, NoWorkers, PayloadError
from core4nb.executor import Core4Executor
from core4nb.executor.chunks import OrderedIds
from core4nb.executor.handle import default_executor
from core4nb.job import Job
from core4nb.jobs import Core4Job
from core4nb.options import JobOptions
from core4nb.serialize import DigestMemo
from core4nb.store import redact_url

log = logging.getLogger("core4nb.joblib")

NAME = "core4nb"
#: Keyword arguments joblib's ``Parallel`` hands every backend's ``configure``; they mean nothing here
#: (core4nb's data plane does what joblib's memmapping does).
JOBLIB_KWARGS = frozenset({"max_nbytes", "temp_folder", "mmap_mode", "prefer", "require", "verbose", "context"})
#: How often a wait for the first worker node looks again.
NODE_POLL = 0.25

_last_call: CallHandle | None = None


class JoblibRoot(Core4Job):
    """The root of one joblib call's job tree: complete once the call ended and every batch is done.

    Only the notebook knows when joblib has no more batches to give, so it inserts the
    ``joblib:end`` job (``end_id``) when the call ends; a failed batch fails the root.
    """

    defer_time = 0.5  # cheap trials (a count and a lookup); the panel turns green within this

    def execute(self, end_id: str) -> None:
        open_batches = self.children_open()  # raises ChildFailed (killing the rest) if a batch failed
        if open_batches:
            self.defer(f"{open_batches} batches open")
        try:
            self.context.queue.store.get(end_id, blobs=False)
        except JobNotFound:
            self.defer("joblib is still dispatching batches")


def call_ended(batches: int) -> int:
    """The ``joblib:end`` job: its existence tells the root that the call has no more batches."""
    return batches


def run_batch(batch: Any) -> list:
    """Run one joblib batch in a worker child (joblib's ``BatchedCalls`` runs nested calls sequentially)."""
    return batch()


class CallHandle:
    """One joblib call's job tree: ``core4nb.progress(handle)`` watches it, ``kill()`` stops it.

    Attributes:
        job_id: the root job (``joblib:<function>``).
        url: the queue.
        batches: batches submitted so far.
        panel: the progress view shown for the call (see the backend's ``progress``), or None.
    """

    def __init__(self, job_id: str, url: str, executor: Core4Executor) -> None:
        self.job_id, self.url, self.batches = job_id, url, 0
        self.panel: Any = None
        self._executor = executor

    def kill(self) -> int:
        """Kill every job of the call; returns how many were killed or flagged."""
        return self._executor.store.request_kill(self.job_id, tree=True)

    def __repr__(self) -> str:
        return f"<core4nb joblib call {self.job_id}: {self.batches} batches on {redact_url(self.url)}>"


def last_call() -> CallHandle | None:
    """The most recent joblib call of this process on core4nb (``core4nb.progress(last_call())``)."""
    return _last_call


class _Call:
    """The state of one ``Parallel`` call: its tree, its digest memo, whether it was aborted."""

    def __init__(self, executor: Core4Executor, job_options: dict[str, Any]) -> None:
        self.executor = executor
        self.options = {**executor.job_options, **job_options}  # the executor's defaults, then the backend's
        self.ids = OrderedIds()
        self.root_id, self.end_id = self.ids.next(), self.ids.next()
        self.root_stub = Job(name="joblib", id=self.root_id)
        # Lives as long as the call: X, in every batch, is hashed once (the memo holds it till then).
        self.memo = DigestMemo()
        self.handle: CallHandle | None = None
        self.aborted = False
        self.lock = threading.Lock()  # a batch inserted after the abort's kill would run unwatched


def _function_of(batch: Any) -> Any:
    """The function a joblib batch calls (scikit-learn wraps it in ``_FuncWrapper``)."""
    items = getattr(batch, "items", None) or [(batch, (), {})]
    func = items[0][0]
    return getattr(func, "function", None) or getattr(func, "func", None) or func


class Core4Backend(AutoBatchingMixin, ParallelBackendBase):
    """joblib's ``ParallelBackendBase`` on a :class:`~core4nb.Core4Executor`.

    Args:
        url: the queue (default: ``CORE4NB_URL``, else the embedded queue with local workers). A live
            executor of this process on that queue is used, else one is made that lives until exit.
        executor: use this executor (wins over ``url``).
        wait_for_workers: seconds to wait for a first worker node before :class:`NoWorkers`.
        progress: show a progress panel per call: None (default) in a Jupyter kernel only, True also
            as a text line elsewhere, False never.
        **job_options: ``priority``, ``attempts``, ``wall_time``… for every batch job.

    Raises:
        TypeError: an unknown job option.
    """

    # joblib's rule: n_jobs=None is 1 (run here) unless parallel_config(n_jobs=…) says otherwise. Not -1 (Dask's
    # choice): then every inner n_jobs=None loop of an estimator (a forest's refit) would go to the cluster.
    default_n_jobs = 1
    supports_retrieve_callback = True  # and so timeouts and return_as="generator"
    uses_threads = False
    supports_sharedmem = False  # require="sharedmem" makes joblib fall back to threads here

    def __init__(self, url: str | None = None, *, executor: Core4Executor | None = None,
                 wait_for_workers: float = 10.0, progress: bool | None = None, nesting_level: int | None = None,
                 inner_max_num_threads: int | None = None, **job_options: Any) -> None:
        job_options = JobOptions.check(job_options)
        super().__init__(nesting_level=nesting_level, inner_max_num_threads=inner_max_num_threads)
        self.url, self.wait_for_workers, self.progress = url, float(wait_for_workers), progress
        self.job_options = job_options
        self._given, self._executor = executor, executor
        self._call: _Call | None = None
        self._warned: set[tuple[int, int]] = set()

    # -- the executor and its slots ---------------------------------------------------------
    def _executor_now(self) -> Core4Executor:
        """The executor the batches go to: the given one, else this process's on ``url`` (made on first use)."""
        if self._given is None and (self._executor is None or self._executor.is_shutdown):
            self._executor = default_executor(self.url)
        return self._executor

    def _live_slots(self) -> int:
        """Live worker slots, waiting up to ``wait_for_workers`` for a first node."""
        executor = self._executor_now()
        executor._runtime.check_open()
        deadline = time.monotonic() + self.wait_for_workers
        while not (slots := executor._runtime.live_slots()):
            if time.monotonic() >= deadline:
                url = redact_url(executor.url)
                raise NoWorkers(f"no worker node serves queue {url} (waited {self.wait_for_workers:g} s): start "
                                f"one with `core4nb worker {url}`, or leave out url= for the embedded queue")
            time.sleep(NODE_POLL)
        return slots

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        """``n_jobs`` mapped to the live worker slots: ``-1`` all, ``-2`` all but one, …; 1 runs here."""
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 in Parallel has no meaning")
        n_jobs = self.default_n_jobs if n_jobs is None else int(n_jobs)
        if n_jobs == 1:
            return 1  # joblib's meaning: run the calls sequentially in this process
        slots = self._live_slots()
        if n_jobs < 0:
            return max(slots + 1 + n_jobs, 1)
        if n_jobs > slots and (n_jobs, slots) not in self._warned:
            self._warned.add((n_jobs, slots))
            warnings.warn(f"n_jobs={n_jobs} but queue {redact_url(self._executor.url)} has {slots} live worker "
                          f"slot(s): using {slots}; start more with `core4nb worker URL`", stacklevel=2)
        return min(n_jobs, slots)

    # -- joblib's call protocol ---------------------------------------------------------------
    def configure(self, n_jobs: int = 1, parallel: Any = None, prefer: str | None = None,
                  require: str | None = None, **backend_kwargs: Any) -> int:
        unknown = sorted(set(backend_kwargs) - JOBLIB_KWARGS)
        if unknown:
            raise TypeError(f"Parallel() got argument(s) {', '.join(unknown)} the core4nb backend does not take: "
                            f"pass them as parallel_config(backend='core4nb', {unknown[0]}=…)")
        self.parallel = parallel
        return self.effective_n_jobs(n_jobs)

    def start_call(self) -> None:
        self._call = _Call(self._executor_now(), self.job_options)

    def stop_call(self) -> None:
        call, self._call = self._call, None
        if call is None or call.handle is None:
            return
        with call.lock:
            if call.aborted:
                return
            end = make_job(call_ended, (call.handle.batches,), name="joblib:end", parent=call.root_stub,
                           key=call.executor._runtime.key, job_id=call.end_id)
            try:
                call.executor._runtime.insert_and_track([end], [end])  # tracked: shutdown waits for the tree
            except Exception as exc:  # every result is in: the call must not fail for its panel's sake
                log.warning("the joblib call's tree %s stays open (its end could not be recorded: %s: %s); "
                            "`core4nb kill %s` closes it", call.root_id, type(exc).__name__, exc, call.root_id)

    def terminate(self) -> None:
        self.reset_batch_stats()

    def get_nested_backend(self) -> tuple[ParallelBackendBase, int | None]:
        # Inside a job every core of the node is another job's: nested calls run sequentially there.
        return SequentialBackend(nesting_level=(self.nesting_level or 0) + 1), None

    def submit(self, func: Any, callback: Any = None) -> Any:
        """Insert one joblib batch as a job of the call's tree; ``callback`` runs when it is done."""
        call = self._call
        if call is None:  # joblib calls start_call first, and dispatches nothing after stop_call
            return _with_callback(_failed(RuntimeError("submit() outside a joblib call: no start_call()")), callback)
        with call.lock:  # a batch dispatched while joblib aborts must not be inserted after the kill
            future = _failed(RuntimeError("the joblib call was aborted")) if call.aborted else self._insert(call, func)
        return _with_callback(future, callback)

    def _insert(self, call: _Call, batch: Any) -> Any:
        """Insert the batch's job (with the root, the first time); a batch that cannot be pickled is a
        failed future naming the culprit, so joblib raises it in the notebook whichever thread dispatched."""
        runtime, fn = call.executor._runtime, _function_of(batch)
        try:
            job = make_job(run_batch, (batch,), name=describe(fn), parent=call.root_stub, key=runtime.key,
                           job_id=call.ids.next(), memo=call.memo, options=call.options)
        except PayloadError:
            return _failed(_diagnose(batch, call.memo))
        except Exception as exc:  # raised from the poller thread it would be lost: joblib raises it instead
            return _failed(exc)
        jobs = [job]
        if call.handle is None:
            priority = (call.options.get("priority") or 0) - 1  # batches are claimed before their root
            jobs.insert(0, make_job(JoblibRoot, (call.end_id,), name=f"joblib:{describe(fn)}", key=runtime.key,
                                    job_id=call.root_id, options={"priority": priority}))
        try:
            futures = runtime.insert_and_track(jobs, jobs)  # the root tracked too: shutdown waits for it
        except Exception as exc:
            return _failed(exc)
        if call.handle is None:
            global _last_call
            call.handle = _last_call = CallHandle(call.root_id, call.executor.url, call.executor)
            self._show_progress(call.handle)
        call.handle.batches += 1
        return futures[-1]

    def _show_progress(self, handle: CallHandle) -> None:
        from core4nb.widgets import progress
        from core4nb.widgets.api import widgets_available

        if self.progress is False or (self.progress is None and not widgets_available()):
            return
        handle.panel = progress(handle, url=handle.url, unit="batches")

    def retrieve_result_callback(self, future: Any) -> list:
        return future.result()  # a batch's exception is raised as its own type, the remote traceback its cause

    def abort_everything(self, ensure_ready: bool = True) -> None:
        """Kill the call's tree: pending batches at once, running ones by SIGTERM (joblib ignores them now)."""
        call = self._call
        if call is None:
            return
        with call.lock:
            call.aborted = True
            if call.handle is not None:
                call.handle.kill()


def _with_callback(future: Any, callback: Any) -> Any:
    if callback is not None:
        future.add_done_callback(callback)
    return future


def _failed(error: BaseException) -> Any:
    from concurrent.futures import Future

    future: Future = Future()
    future.set_exception(error)
    return future


def _diagnose(batch: Any, memo: DigestMemo) -> PayloadError:
    """Name the call of the batch that cannot be pickled, and its part (function or argument)."""
    for func, args, kwargs in getattr(batch, "items", ()):
        try:
            make_job(func, args, kwargs, key=b"-", memo=memo)
        except PayloadError as exc:
            return PayloadError(f"{exc} (in a joblib call of {describe(_function_of(batch))})")
    return PayloadError(f"cannot send a joblib batch of {describe(_function_of(batch))} to a worker: it cannot be "
                        "pickled")


def register() -> None:
    """Register the backend under ``"core4nb"`` (done by ``import core4nb.joblib``)."""
    register_parallel_backend(NAME, Core4Backend)


register()

__all__ = ["NAME", "CallHandle", "Core4Backend", "JoblibRoot", "last_call", "register"]
