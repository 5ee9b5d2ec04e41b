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
queries per second). With nothing tracked the thread sleeps until the next submit.
"""

from __future__ import annotations

import itertools
import logging
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
#: How often the doorbell thread looks whether the poller is stopping.
BELL_CHECK = 0.25


def snapshot(job: Job) -> Progress:
    return Progress(job.state, job.progress_value, job.progress_message, job.trial)


def _batches(ids: list[str]) -> Iterator[list[str]]:
    for i in range(0, len(ids), BATCH):
        yield ids[i : i + BATCH]


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
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="core4nb-poller", daemon=True)
        self._thread.start()
        # A store that rings when jobs finish wakes the loop at once. When every writer rings (the
        # embedded store) polling is only a fallback: a hot poll loop would take CPU from the workers
        # on the same machine. A MongoDB queue's bell hears this machine's nodes only: poll on.
        self._bell = store.listen("done")
        self._bell_thread = None
        if self._bell is not None:
            if self._bell.hears_everyone:
                self.min_interval = BELL_MIN_INTERVAL
            self._bell_thread = threading.Thread(target=self._listen, name="core4nb-bell", daemon=True)
            self._bell_thread.start()

    def _listen(self) -> None:
        while not self._stopping.is_set():
            if self._bell.wait(BELL_CHECK):
                self._wake.set()  # rings that come while the poller queries are read by its next query

    def track(self, futures: Iterable[Core4Future]) -> None:
        """Start watching these futures' jobs (insert the jobs first)."""
        sink = submitters_sink()  # in the submitting thread: a notebook's output goes to this cell
        with self._lock:
            for future in futures:
                self._tracked.setdefault(future.job_id, []).append(future)
                if future.job_id not in self._printed:
                    self._printed[future.job_id] = JobOutput(sink)
        self._wake.set()

    def pending(self) -> list[Core4Future]:
        """The tracked futures that are not done yet."""
        with self._lock:
            return [f for fs in self._tracked.values() for f in fs if not f.done()]

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)
        if self._bell_thread is not None:
            self._bell.nudge()  # ends the doorbell thread's wait now
            self._bell_thread.join(timeout)
            self._bell.close()

    # -- the loop ---------------------------------------------------------------------------
    def _run(self) -> None:
        interval, next_refresh, failing_since = self.min_interval, 0.0, None
        active_at = time.monotonic()  # last submit or completion
        while not self._stopping.is_set():
            with self._lock:
                window = list(itertools.islice(self._tracked, WINDOW))
            if not window:
                self._wake.wait()
                self._wake.clear()
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
            if self._wake.wait(interval):
                self._wake.clear()
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
