"""The state an executor and its option views share: store, poller, local node, shutdown.

The runtime lives while an executor view or a future refers to it (futures
need it to cancel and kill). When the last reference goes, a finalizer stops
the poller and the local node; at interpreter exit, :func:`_at_exit` first
lets local workers finish what was submitted, as ProcessPoolExecutor does.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import threading
import time
import weakref
from collections.abc import Iterable
from concurrent import futures as cf

from core4nb.errors import JobNotFound
from core4nb.executor.futures import Core4Future
from core4nb.executor.local import LocalWorkers
from core4nb.executor.poller import FuturePoller
from core4nb.job import Job, State
from core4nb.store import DEFAULT_LEASE_SECONDS, Store, WorkerInfo, redact_url

log = logging.getLogger("core4nb.executor")
#: How often a waiting shutdown looks whether any worker node still serves the queue.
DRAIN_CHECK = 5.0


def _close(poller: FuturePoller, local: LocalWorkers | None, store: Store) -> None:
    """Finalizer: must not refer to the runtime, or the runtime would never be collected."""
    poller.stop()
    if local is not None:
        local.release()  # stops the node if no other executor of this process shares it
    store.close()


class Runtime:
    """What an executor and its option views share: store, key, poller, local workers, shutdown state."""

    def __init__(self, url: str, store: Store, key: bytes, local: LocalWorkers | None) -> None:
        self.url, self.store, self.key, self.local = url, store, key, local
        self.poller = FuturePoller(store, key, local)
        self.is_shutdown = False
        self._lock = threading.Lock()  # submit vs shutdown
        self._close_lock = threading.Lock()
        self._finalizer = weakref.finalize(self, _close, self.poller, local, store)
        self._finalizer.atexit = False  # _at_exit decides: it may have work to finish first
        _runtimes.add(self)

    def check_open(self) -> None:
        if self.is_shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")

    def insert_and_track(self, jobs: list[Job], track: list[Job]) -> list[Core4Future]:
        """Store ``jobs`` in one insert; return futures for those in ``track`` (being watched)."""
        with self._lock:
            self.check_open()
            rings = self.poller.rings
            self.store.insert(jobs)
            futures = [Core4Future(job.id, self) for job in track]
            self.poller.track(futures, rings_seen=rings)
        return futures

    def attach(self, job_id: str) -> Core4Future:
        with self._lock:
            self.check_open()
            future = Core4Future(job_id, self)
            self.poller.track([future])
        return future

    def cancel(self, futures: Iterable[Core4Future]) -> int:
        """Cancel the futures whose jobs are still pending (killing the jobs); returns how many."""
        candidates = [f for f in futures if not f.done() and not f.running()]
        if not candidates:
            return 0
        states = {job.id: job.state for job in self.store.find(ids=[f.job_id for f in candidates])}
        cancelled = 0
        for future in candidates:
            if states.get(future.job_id) != State.PENDING:
                continue  # started (use kill()), finished (the poller completes it) or removed
            # Future first: once it is cancelled the poller ignores the job's "killed" outcome.
            if future._cancel_locally():
                # tree=False: the job alone (a map chunk's root then stops the rest of its map: transitions.gather).
                with contextlib.suppress(JobNotFound):  # removed meanwhile: nothing left to kill
                    self.store.request_kill(future.job_id, tree=False)
                cancelled += 1
        return cancelled

    def _live_nodes(self) -> list[WorkerInfo]:
        now = time.time()
        return [w for w in self.store.workers() if w.state == "running" and now - w.heartbeat < DEFAULT_LEASE_SECONDS]

    def live_slots(self) -> int:
        """Worker slots of the live nodes serving this queue (the local node from its start); 0 when none."""
        live = self._live_nodes()
        total = sum(w.slots for w in live)
        if self.local is not None and self.local.name not in {w.name for w in live}:
            total += self.local.processes  # started, not registered yet
        return total

    def slots(self) -> int:
        """Worker slots serving this queue: live nodes' slots, else this machine's cores."""
        if self.is_shutdown:  # the store may be closed; the submit that follows raises anyway
            return os.cpu_count() or 1
        return self.live_slots() or os.cpu_count() or 1

    def shutdown(self, wait: bool, cancel_futures: bool) -> None:
        with self._lock:
            self.is_shutdown = True
        if cancel_futures:
            self.cancel(self.poller.pending())
        if wait:
            self._drain_and_close()
        else:
            threading.Thread(target=self._drain_and_close, name="core4nb-shutdown", daemon=True).start()

    def _drain_and_close(self) -> None:
        with self._close_lock:  # a second shutdown(wait=True) waits for the first to finish
            self._drain()
            self._close_now()

    def _close_now(self) -> None:
        """Run the finalizer's work once, whichever thread gets here first.

        Not ``self._finalizer()``: during interpreter exit weakref.finalize turns
        every later call into a no-op, and that is when _at_exit needs it.
        """
        info = self._finalizer.detach()
        if info is not None:
            _, func, args, kwargs = info
            func(*args, **kwargs)

    def _drain(self) -> None:
        warned = False
        while pending := self.poller.pending():
            done, _ = cf.wait(pending, timeout=DRAIN_CHECK)  # a timed wait keeps Ctrl-C working
            if not done and not warned and self.local is None and not self._live_nodes():
                log.warning("shutdown is waiting for %d job(s) of queue %s, but no worker node serves it: start "
                            "`core4nb worker URL`, or interrupt and use shutdown(cancel_futures=True)",
                            len(pending), redact_url(self.url))
                warned = True


_runtimes: weakref.WeakSet[Runtime] = weakref.WeakSet()


@atexit.register
def _at_exit() -> None:
    """Like ProcessPoolExecutor: work submitted to local workers is done before the interpreter exits.

    Without this the jobs would stay in the embedded queue and run in some later
    session. Ctrl-C skips the wait; the jobs then stay queued.
    """
    for runtime in list(_runtimes):
        if not runtime._finalizer.alive:  # shut down and closed already
            continue
        try:
            if runtime.local is not None:
                runtime.is_shutdown = True
                runtime._drain()
        except KeyboardInterrupt:
            pass
        finally:
            runtime._close_now()
