"""``Core4Executor``: ``concurrent.futures`` on the core4nb queue.

Data flow (the executor never runs user code: worker nodes do, README "How a job runs")::

    submit/map ──► make_job (pickle + sign) ──► store.insert ──► sys.queue ◄── worker nodes
        │                                                          │   (local ones: local.py)
        └──► Core4Future ◄── set_result/set_exception ── FuturePoller ◄──┘   (one thread, adaptive polling)

An executor and every view made by :meth:`Core4Executor.options` share one
:class:`~core4nb.executor.runtime.Runtime`: the store connection, the poller
thread and the local worker node.
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import Callable, Iterable
from concurrent import futures as cf
from typing import Any

from core4nb import keys, serialize
from core4nb.calls import make_job
from core4nb.executor.futures import Core4Future
from core4nb.executor.local import LocalWorkers, acquire_node
from core4nb.executor.runtime import Runtime
from core4nb.options import JobOptions
from core4nb.store import Store, default_url, env_url, open_store, redact_url

_live: weakref.WeakSet[Core4Executor] = weakref.WeakSet()


def find_live_executor(url: str) -> Core4Executor | None:
    """An executor of this process on ``url`` that is not shut down (for ``enqueue``)."""
    return next((ex for ex in list(_live) if ex.url == url and not ex.is_shutdown), None)


class Core4Executor(cf.Executor):
    """A ``concurrent.futures`` executor whose work runs on core4nb worker nodes.

    Args:
        url: the queue URL. None and no ``CORE4NB_URL``: the embedded SQLite
            queue in ``$CORE4NB_HOME`` served by local workers that start and
            stop with this executor.
        workers: local worker processes (embedded default: the process's running
            local node for this queue, else one per core; with a URL: none, the
            cluster's nodes do the work). A number other than the running node's
            starts a node of this executor's own.
        max_workers: the same as ``workers`` (the name ``concurrent.futures`` users type); > 0.
        share_workers: False: start a local node of this executor's own even if
            one of this process already serves the queue.
        mp_context: accepted for ProcessPoolExecutor compatibility, as None only: worker nodes
            start their own processes.
        **job_defaults: job options (:class:`~core4nb.options.JobOptions`: ``priority``, ``attempts``,
            ``wall_time``…) for every job; ``submit``'s keywords all go to the function.

    Raises:
        TypeError: an unknown job option, a URL that is not a string, both ``workers`` and ``max_workers``.
        ConfigError: a job option's value of the wrong type or out of range.
        ValueError: ``workers`` < 1 for the embedded default, ``max_workers`` < 1, an ``mp_context``.
    """

    def __init__(self, url: str | None = None, *, workers: int | None = None, max_workers: int | None = None,
                 share_workers: bool = True, mp_context: None = None, **job_defaults: Any) -> None:
        job_defaults = JobOptions.check(job_defaults)
        if url is not None and not isinstance(url, str):
            raise TypeError(f"Core4Executor({url!r}): the first argument is the queue URL; "
                            f"give the worker count as max_workers={url!r}")
        if mp_context is not None:
            raise ValueError("Core4Executor takes no mp_context: worker nodes start their own processes "
                             "(drop the argument)")
        if max_workers is not None:
            if workers is not None:
                raise TypeError("give the worker count once: workers= or max_workers=, not both")
            if max_workers <= 0:
                raise ValueError("max_workers must be greater than 0")
            workers = max_workers
        embedded = url is None and env_url() is None
        if workers is not None and (workers < 0 or (embedded and workers < 1)):
            raise ValueError("workers must be greater than 0")
        url = url or default_url()
        store = open_store(url)
        try:
            key = keys.load_key()  # a bad key file fails here, not in the poller thread
            local = acquire_node(url, workers, share=share_workers) if embedded or workers else None
        except BaseException:
            store.close()
            raise
        self._runtime = Runtime(url, store, key, local)
        self._options = job_defaults
        _live.add(self)

    # -- properties -------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return self._runtime.url

    @property
    def store(self) -> Store:
        return self._runtime.store

    @property
    def local_workers(self) -> LocalWorkers | None:
        """The worker node this executor started, if any."""
        return self._runtime.local

    @property
    def is_shutdown(self) -> bool:
        return self._runtime.is_shutdown

    @property
    def job_options(self) -> dict[str, Any]:
        """The options every job of this executor (view) gets."""
        return dict(self._options)

    # -- concurrent.futures ---------------------------------------------------------------
    def options(self, **options: Any) -> Core4Executor:
        """A view with more job options that shares this executor's store, poller and workers.

        ``ex.options(priority=5).submit(fn, x)``. Shutting a view down shuts the
        executor down. Raises TypeError for an unknown option, ConfigError for a bad value.
        """
        view = copy.copy(self)  # the same runtime; only the options differ
        view._options = {**self._options, **JobOptions.check(options)}
        return view

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> Core4Future:
        """Enqueue ``fn(*args, **kwargs)`` (a function or a Core4Job class); return its future.

        Raises:
            RuntimeError: the executor is shut down.
            PayloadError: ``fn`` or an argument cannot be pickled (named); nothing is enqueued.
        """
        self._runtime.check_open()
        memo = serialize.DigestMemo(self._runtime.store.blobs.put_hashing)  # large arguments stored as they are hashed
        job = make_job(fn, args, kwargs, key=self._runtime.key, memo=memo, options=self._options)
        return self._runtime.insert_and_track([job], [job])[0]

    def map(self, fn: Callable, *iterables: Iterable, timeout: float | None = None, chunksize: int | None = None,
            buffersize: int | None = None):
        """Like ``ProcessPoolExecutor.map`` (with Python 3.14's ``buffersize``), as one job tree.

        Args:
            chunksize: items per job; None picks about four chunks per worker slot.
            buffersize: at most this many chunks are submitted ahead of the consumer.

        Returns:
            An iterator of the results in order, with ``.job_id``: the map's root
            job, whose result (also after ``attach``) is the list of all results.
        """
        from core4nb.executor.mapping import MapIterator

        if chunksize is not None and chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        if buffersize is not None and not isinstance(buffersize, int):
            raise TypeError("buffersize must be an integer or None")
        if buffersize is not None and buffersize < 1:
            raise ValueError("buffersize must be None or > 0")
        return MapIterator(self._runtime, fn, iterables, self._options, timeout, chunksize, buffersize)

    def share(self, value: Any) -> serialize.Shared:
        """Store ``value`` once and return a small handle to pass to any number of jobs and cells.

        Like ``ray.put`` or Dask's ``scatter``: its large buffers (numpy arrays, DataFrame columns,
        bytes) are hashed and stored now; each job the handle is passed to (as an argument, in a
        list, in a closure) receives the value itself, mapped from the store without a copy on the
        embedded queue and downloaded once per machine from a MongoDB queue. Jobs see the value as
        it was when shared; arrays arrive read-only. The stored blobs live while any job names them
        (``remove`` of the tree deletes them) and, unnamed, until ``core4nb gc`` sweeps them; while
        the handle lives in this process, a swept blob is stored again when a job needs it.
        """
        handle = serialize.Shared(value, self._runtime.store.blobs.put_hashing)  # stored as they are hashed
        return handle

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._runtime.shutdown(wait, cancel_futures)

    shutdown.__doc__ = cf.Executor.shutdown.__doc__

    # -- beyond concurrent.futures ---------------------------------------------------------
    def attach(self, job_id: str) -> Core4Future:
        """A future for a job submitted earlier, by any process (result, progress, kill).

        Raises:
            JobNotFound: no such job in this queue.
        """
        self._runtime.store.get(job_id, blobs=False)
        return self._runtime.attach(job_id)

    def __repr__(self) -> str:
        """The shape of a future's repr: ``<Core4Executor at 0x… url=… max_workers=2 state=running>``."""
        local = f" max_workers={self.local_workers.processes}" if self.local_workers else ""
        state = "shutdown" if self.is_shutdown else "running"
        return f"<{type(self).__name__} at {id(self):#x} url={redact_url(self.url)}{local} state={state}>"
