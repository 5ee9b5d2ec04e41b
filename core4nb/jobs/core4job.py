"""``Core4Job``: the class API of core4os's ``DivideAndConquer`` pattern, as a worker runs it.

A :class:`Core4Job` launches children on its first trial, defers, watches them on
later trials and reduces their results (README, "In a notebook": divide and conquer);
:class:`core4nb.examples.PrimeJob` is the worked example::

    from core4nb.examples import PrimeJob
    handle = enqueue(PrimeJob, start=1, end=5_000_000, chunksize=100_000)
    handle.result()

The class is pickled into the job, so the worker runs exactly the class the
notebook defined; the worker child calls :meth:`Core4Job.run_job`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, NoReturn

from core4nb.options import DEFAULTS, OPTION_NAMES, JobOptions

if TYPE_CHECKING:
    from core4nb.context import JobContext


class Core4Job:
    """Base class of job classes: subclass it, set options as class attributes, write ``execute``.

    The class attributes ``priority``, ``max_parallel``, ``attempts``, ``defer_time``, ``defer_max``,
    ``error_time``, ``wall_time``, ``lost_retries`` and ``keep`` are the job's options (their
    meanings and ranges: :class:`~core4nb.options.JobOptions`).
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
