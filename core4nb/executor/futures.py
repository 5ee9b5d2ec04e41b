"""``Core4Future``: a real ``concurrent.futures.Future`` for one job in the queue.

Nothing here waits on the store: the executor's poller thread completes the
future (``set_result``/``set_exception``) and refreshes its progress snapshot,
so ``wait``, ``as_completed`` and done-callbacks work unchanged, and reading
``.progress`` never does I/O.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from concurrent.futures import Future
from concurrent.futures._base import CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED, PENDING
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from core4nb.job import State

if TYPE_CHECKING:
    from core4nb.store import Store


@dataclass(frozen=True)
class Progress:
    """A job as the poller last saw it.

    Attributes:
        state: the job's state (None before the poller first saw it).
        value: progress in [0, 1] the job reported, or None.
        message: the job's last progress (or defer) message.
        trial: how many times the job has started.
    """

    state: State | None = None
    value: float | None = None
    message: str = ""
    trial: int = 0


class FutureOwner(Protocol):
    """What a future needs of the executor's runtime that made it: its store (to kill the job) and
    cancelling (which the runtime decides, as it knows which jobs are still pending).

    A protocol, not the Runtime class: the runtime imports this module, so this one must not import it.
    """

    store: Store

    def cancel(self, futures: Iterable[Core4Future]) -> int: ...


class Core4Future(Future):
    """The future of one job.

    Attributes:
        job_id: the job's id in the queue (``Core4Executor(url).attach(job_id)``
            gives a new future for it in any process).
        output: what the job printed (stdout and stderr of its last trial; the last
            64 KiB), once the future is done; "" before (while it runs, its lines show
            where it was submitted).
        label: what its printed lines are prefixed with (``chunk 5/64`` for a map's chunk).
    """

    def __init__(self, job_id: str, runtime: FutureOwner) -> None:
        super().__init__()
        self.job_id = job_id
        self.output = ""
        self.label = ""
        # The runtime (store, poller, workers) stays alive while a future needs it.
        self._runtime = runtime
        self._progress = Progress()

    @property
    def progress(self) -> Progress:
        """The last snapshot the poller saw (no I/O)."""
        return self._progress

    def kill(self) -> int:
        """Kill the job (and its children) whether it waits or runs.

        A running job's process gets SIGTERM, then SIGKILL; the future then
        raises :class:`~core4nb.JobFailed`. Returns how many jobs were killed or flagged.
        """
        return self._runtime.store.request_kill(self.job_id, tree=True)

    def cancel(self) -> bool:
        """Cancel the future and kill its job if the job is still pending; else return False.

        A job that is running, or has run (deferred, or failed and waiting for
        a retry), is not cancelled: stop it with :meth:`kill`.
        """
        with self._condition:
            if self._state == FINISHED:
                return False
            if self._state in (CANCELLED, CANCELLED_AND_NOTIFIED):
                return True
            if self._state != PENDING:  # the poller saw it start
                return False
        return self._runtime.cancel([self]) == 1

    def _cancel_locally(self) -> bool:
        """Mark cancelled and notify waiters; the caller has already killed the job.

        ``wait``/``as_completed`` only count a cancelled future once the
        executor acknowledges it (CANCELLED_AND_NOTIFIED), as thread and process
        pools do when they dequeue it.
        """
        if not Future.cancel(self):
            return False
        with contextlib.suppress(RuntimeError):  # the poller notified it first
            self.set_running_or_notify_cancel()
        return True

    def _see(self, progress: Progress) -> None:
        """FuturePoller only: record a snapshot and mark the future running once the job starts."""
        self._progress = progress
        if progress.state in (State.RUNNING, State.DEFERRED, State.GATHERING):
            with self._condition:
                if self._state != PENDING:
                    return
            with contextlib.suppress(RuntimeError):  # completed or cancelled meanwhile: nothing to mark
                self.set_running_or_notify_cancel()

    def __repr__(self) -> str:
        """The stock shape (``<Core4Future at 0x… state=finished returned int>``) and the job's id."""
        return f"{super().__repr__()[:-1]} job={self.job_id}>"
