"""The one background thread per executor that completes its futures.

Like dask's ``cfexecutor``: futures are stock ``concurrent.futures`` futures and
a single thread moves results into them. Each tick it asks the store which of
the oldest ``WINDOW`` tracked jobs are final (one query, blobs included, so a
finished job costs one round trip) and completes their futures; every
``PROGRESS_INTERVAL`` it instead reads all tracked jobs without blobs to refresh
progress snapshots, mark started futures running, notice removed jobs and
complete jobs that finished out of order beyond the window, and read what the
running ones printed so far (shown where they were submitted: executor/liveoutput.py).
A tick's cost so stays flat however many futures wait.

The interval adapts: ``LOCAL_MIN_INTERVAL`` for ``HOT_PERIOD`` after a submit or a
completion (a quick job's round trip on the embedded store is a few ms;
``REMOTE_MIN_INTERVAL`` for a database across the network), then growing by
``BACKOFF`` to ``MAX_INTERVAL`` while nothing happens (a long wait costs a few
queries per second). With nothing tracked the thread sleeps until the next submit, and at most
``PROGRESS_INTERVAL``: a submit need not wake it (see ``track``), and a crashed local node must be seen. The thread
sleeps on the store's "done" bell itself (one ``select`` with its own wake-up): a ring wakes the
thread that queries, and on the embedded store a submit does not query until a ring says something
finished.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import select
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import InvalidStateError

from core4nb.errors import JobNotFound, NodeStartFailed, StoreUnavailable
from core4nb.executor.futures import Core4Future, Progress
from core4nb.executor.liveoutput import JobOutput, submitters_sink
from core4nb.executor.local import LocalWorkers
from core4nb.job import FINAL_STATES, Job, State
from core4nb.remote import outcome
from core4nb.store import Store, redact_url
from core4nb.store.bell import Bell
from core4nb.store.outage import STORE_PATIENCE

log = logging.getLogger("core4nb.executor")

#: Seconds between the polls of a local SQLite file at the fastest: a query costs ~0.1 ms.
LOCAL_MIN_INTERVAL = 0.001
#: A database across the network serves every notebook and node of the cluster: poll it less eagerly.
REMOTE_MIN_INTERVAL = 0.005
MAX_INTERVAL = 0.2
BACKOFF = 1.5
#: For this long after a submit or a completion the poller stays at its minimum interval:
#: most short jobs finish within it, and ~50 cheap queries per burst cost nothing noticeable.
HOT_PERIOD = 0.05
PROGRESS_INTERVAL = 0.5
#: Ids per query: keeps each query's parameter small on both backends.
BATCH = 1000
#: Fast ticks look at the oldest this many tracked jobs only (jobs finish roughly in
#: submission order); the refresh every PROGRESS_INTERVAL looks at all of them.
WINDOW = 256
#: The fallback poll interval when the store rings on every finish.
BELL_MIN_INTERVAL = 0.05


def snapshot(job: Job) -> Progress:
    return Progress(job.state, job.progress_value, job.progress_message, job.trial)


def _batches(ids: list[str]) -> Iterator[list[str]]:
    for i in range(0, len(ids), BATCH):
        yield ids[i : i + BATCH]


class _Sleep:
    """What the poller thread sleeps on, in one ``select``: its own wake-up (a track, a stop) and the
    store's "done" bell. The thread that queries hears the ring itself: no second thread to hand it on."""

    def __init__(self, bell: Bell | None) -> None:
        self.bell = bell
        self.rings = 0  # rings heard so far: counted by the poller thread, read by submitters
        self._wake_in, self._wake_out = socket.socketpair()
        for end in (self._wake_in, self._wake_out):
            end.setblocking(False)

    def wake(self) -> None:
        """End the current or next wait (any thread; a full buffer means a wake-up is pending anyway)."""
        with contextlib.suppress(OSError):
            self._wake_out.send(b"!")

    def wait(self, timeout: float | None) -> bool:
        """Until woken, rung or ``timeout``; False when it timed out. Swallows the wake-ups and rings so far."""
        ends = [self._wake_in] if self.bell is None else [self._wake_in, self.bell]
        ready = select.select(ends, [], [], timeout)[0]
        if self._wake_in in ready:
            with contextlib.suppress(OSError):
                while self._wake_in.recv(4096):
                    pass
        if self.bell is not None and self.bell in ready:
            self.bell.drain()
            self.rings += 1
        return bool(ready)

    def close(self) -> None:
        self._wake_in.close()
        self._wake_out.close()
        if self.bell is not None:
            self.bell.close()


class FuturePoller:
    """Tracks futures by job id and completes them from one daemon thread."""

    def __init__(self, store: Store, key: bytes, local: LocalWorkers | None = None) -> None:
        self.store = store
        self.key = key
        self.local = local
        self.min_interval = LOCAL_MIN_INTERVAL if store.url.lower().startswith("sqlite:") else REMOTE_MIN_INTERVAL
        self._lock = threading.Lock()
        self._tracked: dict[str, list[Core4Future]] = {}
        self._printed: dict[str, JobOutput] = {}  # by job id: what its submitter has been shown
        self._stopping = threading.Event()
        # A store that rings when jobs finish wakes the loop at once. When every writer rings (the
        # embedded store) polling is only a fallback: a hot poll loop would take CPU from the workers
        # on the same machine. A MongoDB queue's bell hears this machine's nodes only: poll on.
        bell = store.listen("done")
        self._bell_hears_everyone = bell is not None and bell.hears_everyone
        if self._bell_hears_everyone:
            self.min_interval = BELL_MIN_INTERVAL
        self._sleep = _Sleep(bell)
        self._thread = threading.Thread(target=self._run, name="core4nb-poller", daemon=True)
        self._thread.start()

    @property
    def rings(self) -> int:
        """How many times the store's "done" bell woke the poller so far (see :meth:`track`)."""
        return self._sleep.rings

    def track(self, futures: Iterable[Core4Future], *, rings_seen: int | None = None) -> None:
        """Start watching these futures' jobs (insert the jobs first).

        ``rings_seen``: :attr:`rings` as it was before the jobs were inserted. When the store rings on
        every finish and no ring came since, none of them can be final yet: the poller waits for the bell
        rather than asking the store at once (a query that would find nothing, and on a small machine
        takes a core from the node claiming the job). A ring counted after this look wakes the poller
        with the futures tracked already."""
        sink = submitters_sink()  # in the submitting thread: a notebook's output goes to this cell
        with self._lock:
            for future in futures:
                self._tracked.setdefault(future.job_id, []).append(future)
                if future.job_id not in self._printed:
                    self._printed[future.job_id] = JobOutput(sink)
        if rings_seen is None or not self._bell_hears_everyone or self.rings != rings_seen:
            self._sleep.wake()

    def pending(self) -> list[Core4Future]:
        """The tracked futures that are not done yet."""
        with self._lock:
            return [f for fs in self._tracked.values() for f in fs if not f.done()]

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        self._sleep.wake()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)
        self._sleep.close()

    # -- the loop ---------------------------------------------------------------------------
    def _run(self) -> None:
        interval, next_refresh, failing_since = self.min_interval, 0.0, None
        active_at = time.monotonic()  # last submit or completion
        while not self._stopping.is_set():
            with self._lock:
                window = list(itertools.islice(self._tracked, WINDOW))
            if not window:
                # Bounded: track() may add futures without waking us (they wait for the bell), and a
                # local node that died before it could ring must still be noticed by _check_local.
                self._sleep.wait(PROGRESS_INTERVAL)
                interval, active_at = self.min_interval, time.monotonic()
                continue
            finished = 0
            try:
                if time.monotonic() >= next_refresh:
                    finished = self._refresh(self._open_ids())
                    self._check_local()
                    next_refresh = time.monotonic() + PROGRESS_INTERVAL
                else:
                    finished = self._complete(window)
                if failing_since is not None:
                    log.warning("the queue answers again after %.1f s", time.monotonic() - failing_since)
                    failing_since = None
            except Exception as exc:  # a store hiccup must not kill the only thread that completes futures
                if failing_since is None:  # log an outage once, not once per retry
                    failing_since = time.monotonic()
                    log.warning("polling the queue failed (%s: %s); retrying", type(exc).__name__, exc)
                if time.monotonic() - failing_since > STORE_PATIENCE:
                    self._store_failing(exc)
                interval = MAX_INTERVAL
            if finished:
                active_at = time.monotonic()
            if time.monotonic() - active_at < HOT_PERIOD:
                interval = self.min_interval
            else:
                interval = min(interval * BACKOFF, MAX_INTERVAL)
            if self._sleep.wait(interval):
                interval, active_at = self.min_interval, time.monotonic()

    def _open_ids(self) -> list[str]:
        """Every id still worth polling; forgets futures that were cancelled meanwhile."""
        with self._lock:
            for job_id in list(self._tracked):
                futures = [f for f in self._tracked[job_id] if not f.done()]
                if futures:
                    self._tracked[job_id] = futures
                else:
                    del self._tracked[job_id]
                    self._forget_output(job_id)
            return list(self._tracked)

    def _complete(self, ids: list[str]) -> int:
        """Complete the futures of those jobs among ``ids`` that are final; return how many."""
        jobs = [job for batch in _batches(ids) for job in self.store.find(ids=batch, states=FINAL_STATES, blobs=True)]
        for job in jobs:
            with self._lock:
                futures = self._tracked.pop(job.id, [])
            if not futures:
                continue
            try:
                value, error = outcome(job, self.store, self.key), None
            except BaseException as exc:  # the job's own exception, rebuilt: it belongs to the future
                value, error = None, exc
            self._show_output(job.id, job.output, futures, final=True)  # all of it before the result
            for future in futures:
                future._see(snapshot(job))
                future.output = job.output
                self._settle(future, value, error)
        return len(jobs)

    def _refresh(self, ids: list[str]) -> int:
        """Read every tracked job without blobs: progress, started, removed, and final beyond the window."""
        seen, final, running = set(), [], []
        for batch in _batches(ids):
            for job in self.store.find(ids=batch, blobs=False):
                seen.add(job.id)
                if job.is_final:
                    final.append(job.id)
                    continue
                with self._lock:
                    futures = list(self._tracked.get(job.id, ()))
                for future in futures:
                    future._see(snapshot(job))
                if job.state is State.RUNNING:
                    running.append(job.id)
        for batch in _batches(running):
            for job_id, printed in self.store.outputs(batch).items():
                with self._lock:
                    futures = list(self._tracked.get(job_id, ()))
                self._show_output(job_id, printed, futures)
        for job_id in set(ids) - seen:  # removed from the queue (`core4nb remove`): it will never finish
            with self._lock:
                futures = self._tracked.pop(job_id, [])
                self._forget_output(job_id)
            for future in futures:
                self._settle(future, None, JobNotFound(
                    f"job {job_id} was removed from queue {redact_url(self.store.url)} before it finished"))
        return self._complete(final) if final else 0

    def _show_output(self, job_id: str, printed: str, futures: list[Core4Future], *, final: bool = False) -> None:
        """Show what is new in a job's stored output where it was submitted (once its futures are
        settled, nothing of it is shown again)."""
        with self._lock:
            shown = self._printed.pop(job_id, None) if final else self._printed.get(job_id)
        if shown is None:
            return
        try:
            if futures:
                shown.see(printed, futures[0].label)
            if final:
                shown.close()
        except Exception as exc:  # a closed notebook display must not stop the futures' completion
            log.warning("cannot show the output of job %s: %s: %s", job_id, type(exc).__name__, exc)

    def _forget_output(self, job_id: str) -> None:
        """The job will be shown no more (cancelled, removed, failed here); the caller holds the lock."""
        shown = self._printed.pop(job_id, None)
        if shown is not None:
            shown.close()

    def _check_local(self) -> None:
        """A crashed local node is restarted; one that cannot start fails the waiting futures."""
        problem = self.local.check() if self.local is not None else None
        if problem:
            self._fail_all(lambda future: NodeStartFailed(f"job {future.job_id} cannot run here: {problem}"))

    def _store_failing(self, exc: Exception) -> None:
        self._fail_all(lambda future: StoreUnavailable(
            f"the queue {redact_url(self.store.url)} kept failing for {STORE_PATIENCE:g} s, so the result of job "
            f"{future.job_id} cannot be fetched: {type(exc).__name__}: {exc}; the job may still finish: "
            f"attach to it later with Core4Executor(url).attach({future.job_id!r})"))

    def _fail_all(self, error_for: Callable[[Core4Future], BaseException]) -> None:
        with self._lock:
            futures = [f for fs in self._tracked.values() for f in fs]
            self._tracked.clear()
            for job_id in list(self._printed):
                self._forget_output(job_id)
        for future in futures:
            self._settle(future, None, error_for(future))

    @staticmethod
    def _settle(future: Core4Future, value: object, error: BaseException | None) -> None:
        try:
            if error is None:
                future.set_result(value)
            else:
                future.set_exception(error)
        except InvalidStateError:  # cancelled by the user meanwhile
            pass
