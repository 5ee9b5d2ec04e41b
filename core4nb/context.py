"""What a running job can ask of the queue: its identity, progress, defer, children.

Inside a job, ``current_job()`` returns the :class:`JobContext`; a
:class:`~core4nb.Core4Job` reaches the same methods through ``self``.
"""

from __future__ import annotations

import contextvars
import numbers
from collections.abc import Callable
from typing import Any, NoReturn

from core4nb.errors import ChildFailed, ChildrenOpen, NotInJob
from core4nb.job import OPEN_STATES, UNSUCCESSFUL_STATES, Job, JobError, State, safe_text

_current: contextvars.ContextVar[JobContext | None] = contextvars.ContextVar("core4nb_job", default=None)


class Defer(Exception):
    """Raised by :meth:`JobContext.defer` to end this trial and run again after defer_time."""


def current_job() -> JobContext:
    """The context of the job running in this process.

    Raises:
        NotInJob: when called outside a job.
    """
    ctx = _current.get()
    if ctx is None:
        raise NotInJob("current_job() is only available inside a job running on a core4nb worker")
    return ctx


class JobContext:
    """A running job's view of itself and its tree.

    Args:
        job: the claimed job.
        url: the queue URL, to enqueue and watch children.
        report_progress: sends ``(value, message)`` to the worker node.
    """

    def __init__(self, job: Job, url: str, report_progress: Callable[[float | None, str], None],
                 store: Callable[[], Any] | None = None) -> None:
        self.job = job
        self.url = url
        self._report_progress = report_progress
        self._store = store  # the worker child's own store (kept for its life), else one per context
        self._queue = None

    @property
    def id(self) -> str:
        return self.job.id

    @property
    def trial(self) -> int:
        """1 on the first run, 2 after the first defer or retry, …"""
        return self.job.trial

    @property
    def queue(self):  # -> core4nb.queue.Queue, imported lazily: children rarely need it
        if self._queue is None:
            from core4nb.queue import Queue

            self._queue = Queue(self.url, store=self._store() if self._store else None)
        return self._queue

    def defer(self, message: str = "") -> NoReturn:
        """End this trial now; the job runs again after its ``defer_time``."""
        raise Defer(message)

    def progress(self, value: float | None, message: str = "") -> None:
        """Report progress: ``value`` in [0, 1] (or None) and a short message.

        Raises:
            TypeError: ``value`` is not a number or None, or ``message`` is not a string.
            ValueError: ``value`` is outside [0, 1].
        """
        if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Real)):
            raise TypeError(f"progress value must be a number between 0 and 1 or None, got {type(value).__name__} "
                            f"{value!r}: call progress(fraction_done, message)")
        if not isinstance(message, str):
            raise TypeError(f"progress message must be a str, got {type(message).__name__} {message!r}: "
                            "call progress(fraction_done, 'what is happening')")
        if value is not None and not 0 <= value <= 1:
            raise ValueError(f"progress value must be between 0 and 1, got {value}")
        self._report_progress(None if value is None else float(value), safe_text(message))

    def enqueue_child(self, fn: Callable, /, *args: Any, **kwargs: Any) -> str:
        """Enqueue ``fn(*args, **kwargs)`` (a function or Core4Job class) as a child of this job."""
        return self.queue.enqueue(fn, *args, parent=self.job, **kwargs)

    def children(self) -> dict[State, int]:
        """Children per state."""
        return self.queue.store.counts(parent_id=self.id)

    def children_open(self) -> int:
        """How many children have not finished yet.

        Raises:
            ChildFailed: a child ended in error, killed or inactive; the others are
                killed, so a failed tree never keeps deferring (core4os did).
        """
        counts = self.children()
        if any(counts[state] for state in UNSUCCESSFUL_STATES):
            self._fail_on_child()
        return sum(n for state, n in counts.items() if state in OPEN_STATES)

    def child_results(self) -> list[Any]:
        """The children's results in enqueue order (raises ChildFailed if one failed)."""
        from core4nb.remote import outcome

        children = self.queue.store.find(parent_id=self.id, blobs=True)
        if any(c.state in UNSUCCESSFUL_STATES for c in children):
            self._fail_on_child()
        open_ids = [c.id for c in children if c.state in OPEN_STATES]
        if open_ids:
            raise ChildrenOpen(f"{len(open_ids)} children still open (first: {open_ids[0]}); "
                             f"defer until children_open() is 0")
        return [outcome(c, self.queue.store) for c in children]

    def _fail_on_child(self) -> NoReturn:
        bad = self.queue.store.find(parent_id=self.id, states=UNSUCCESSFUL_STATES, limit=1)[0]
        for child in self.queue.store.find(parent_id=self.id, states=OPEN_STATES):
            self.queue.store.request_kill(child.id)
        raise ChildFailed(JobError.child_failed(bad).message)

    def close(self) -> None:
        if self._queue is not None and self._store is None:
            self._queue.close()


def activate(ctx: JobContext) -> contextvars.Token:
    return _current.set(ctx)


def deactivate(token: contextvars.Token) -> None:
    _current.reset(token)
