"""``enqueue`` and its ``JobHandle``: one job submitted through this process's executor for its queue.

The notebook's shortest path to a job (``enqueue(PrimeJob, …)``); it picks a live
:class:`~core4nb.Core4Executor` of the same queue, or starts a default one.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from core4nb.executor.executor import Core4Executor, find_live_executor
from core4nb.options import reject_misplaced_options
from core4nb.store import default_url

if TYPE_CHECKING:
    from core4nb.executor.futures import Core4Future, Progress
    from core4nb.jobs import Core4Job


class JobHandle:
    """What :func:`enqueue` returns: the job's id and a future for its result.

    Attributes:
        id: the job id (give it to ``Core4Executor(url).attach`` in another process).
        url: the queue the job is in.
        future: a :class:`~core4nb.executor.Core4Future` completed by the executor's poller.
    """

    def __init__(self, future: Core4Future, url: str) -> None:
        self.id = future.job_id
        self.url = url
        self.future = future

    def result(self, timeout: float | None = None) -> Any:
        return self.future.result(timeout)

    def kill(self) -> int:
        """Kill the job and its children; returns how many jobs were killed or flagged."""
        return self.future.kill()

    def done(self) -> bool:
        return self.future.done()

    @property
    def progress(self) -> Progress:
        """The last progress snapshot the poller saw (no I/O)."""
        return self.future.progress

    @property
    def output(self) -> str:
        """What the job printed (its last trial's last 64 KiB) once it is done; while it runs, its
        lines show where it was enqueued (the notebook cell, or stdout)."""
        return self.future.output

    def panel(self, **options: Any) -> Any:
        """A live progress view of the job's tree (``core4nb.progress``: a widget in Jupyter, text elsewhere).

        Not displayed by default: as a cell's last value it shows itself.
        """
        from core4nb.widgets import progress

        return progress(self, **{"display": False, **options})

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        """A handle shown as a notebook cell's value is its live progress panel."""
        view = self.panel()
        bundle = getattr(view, "_repr_mimebundle_", None)
        return bundle(**kwargs) if bundle else {"text/plain": repr(view)}

    def __repr__(self) -> str:
        return f"<JobHandle {self.id} {self.future._state.lower()}>"


_default_lock = threading.Lock()
_defaults: dict[str, Core4Executor] = {}


def enqueue(job: type[Core4Job] | Callable, /, *args: Any, url: str | None = None,
            options: Mapping[str, Any] | None = None, **kwargs: Any) -> JobHandle:
    """Enqueue a Core4Job class (or a function) and return a :class:`JobHandle`.

    ``options`` sets job options (``options={"priority": 5}``, as :meth:`Queue.enqueue`
    takes them); every other keyword goes to the job.
    The job is submitted through a live :class:`~core4nb.Core4Executor` on the
    same queue if there is one, else through a default executor for ``url``
    (the embedded one, with local workers, when ``url`` and ``CORE4NB_URL``
    are unset) that lives until the interpreter exits.
    """
    reject_misplaced_options(job, kwargs, "enqueue")
    executor = default_executor(url)
    view = executor.options(**options) if options else executor
    return JobHandle(view.submit(job, *args, **kwargs), executor.url)


def default_executor(url: str | None = None) -> Core4Executor:
    """A live executor of this process on ``url`` (default: ``CORE4NB_URL`` or the embedded queue), else
    one made for it (with local workers for the embedded queue) that lives until the interpreter exits."""
    target = url or default_url()
    executor = find_live_executor(target)
    if executor is None:
        with _default_lock:  # two threads must not both start local workers for one queue
            executor = _defaults.get(target)
            if executor is None or executor.is_shutdown:
                executor = _defaults[target] = Core4Executor(url)
    return executor
