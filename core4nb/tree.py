"""Divide-and-conquer jobs: the class API of core4os's ``DivideAndConquer`` pattern.

A :class:`Core4Job` launches children on its first trial, defers, watches them on
later trials and reduces their results (DESIGN.md §1); :class:`core4nb.examples.PrimeJob`
is the worked example::

    from core4nb.examples import PrimeJob
    handle = enqueue(PrimeJob, start=1, end=5_000_000, chunksize=100_000)
    handle.result()

The class is pickled into the job, so the worker runs exactly the class the
notebook defined; the worker child calls :meth:`Core4Job.run_job`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, NoReturn

from core4nb.options import DEFAULTS, OPTION_NAMES, JobOptions, reject_misplaced_options

if TYPE_CHECKING:
    from core4nb.context import JobContext
    from core4nb.executor import Core4Executor, Core4Future
    from core4nb.executor.futures import Progress


class Core4Job:
    """Base class of job classes: subclass it, set options as class attributes, write ``execute``.

    The class attributes ``priority``, ``max_parallel``, ``attempts``, ``defer_time``, ``defer_max``,
    ``error_time``, ``wall_time``, ``lost_retries`` and ``keep`` are the job's options (their
    meanings and ranges: :class:`~core4nb.options.JobOptions`; DESIGN.md §3).
    """

    priority: ClassVar[int] = DEFAULTS.priority
    max_parallel: ClassVar[int | None] = DEFAULTS.max_parallel
    attempts: ClassVar[int] = DEFAULTS.attempts
    defer_time: ClassVar[float] = DEFAULTS.defer_time
    defer_max: ClassVar[float | None] = DEFAULTS.defer_max
    error_time: ClassVar[float] = DEFAULTS.error_time
    wall_time: ClassVar[float | None] = DEFAULTS.wall_time
    keep: ClassVar[bool] = DEFAULTS.keep
    lost_retries: ClassVar[int] = DEFAULTS.lost_retries

    def __init__(self, context: JobContext) -> None:
        self.context = context

    @classmethod
    def job_options(cls) -> JobOptions:
        """The class attributes as job options (ConfigError for a bad one, naming it)."""
        return JobOptions(**{name: getattr(cls, name) for name in OPTION_NAMES})

    @classmethod
    def run_job(cls, context: JobContext, *args: Any, **kwargs: Any) -> Any:
        """Entry point the worker child calls: one instance per trial, then :meth:`execute`."""
        return cls(context).execute(*args, **kwargs)

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        """The job's work; its return value is the job's result."""
        raise NotImplementedError(f"{type(self).__qualname__} must implement execute()")

    # -- what a running job asks of the queue (all delegate to the JobContext) ----------
    @property
    def id(self) -> str:
        return self.context.id

    @property
    def trial(self) -> int:
        """1 on the first run, 2 after the first defer or retry, …"""
        return self.context.trial

    def defer(self, message: str = "") -> NoReturn:
        """End this trial now; the job runs again after ``defer_time``."""
        self.context.defer(message)

    def progress(self, value: float | None, message: str = "") -> None:
        """Report progress: ``value`` in [0, 1] (or None) and a short message."""
        self.context.progress(value, message)

    def enqueue_child(self, job: type[Core4Job] | Callable, /, *args: Any, **kwargs: Any) -> str:
        """Enqueue a child job (a Core4Job class or a function); returns its id.

        Keyword arguments named like job options (``priority``…) set the child's options.
        """
        return self.context.enqueue_child(job, *args, **kwargs)

    def children_open(self) -> int:
        """Children not finished yet; raises ChildFailed (killing the rest) if one failed."""
        return self.context.children_open()

    def child_results(self) -> list[Any]:
        """The children's results in enqueue order; raises ChildFailed if one failed."""
        return self.context.child_results()


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
    from core4nb.executor import Core4Executor
    from core4nb.executor.executor import find_live_executor
    from core4nb.queue import default_url

    target = url or default_url()
    executor = find_live_executor(target)
    if executor is None:
        with _default_lock:  # two threads must not both start local workers for one queue
            executor = _defaults.get(target)
            if executor is None or executor.is_shutdown:
                executor = _defaults[target] = Core4Executor(url)
    return executor
