"""core4nb: run Python work in parallel from a Jupyter notebook.

On every core of this machine with zero set-up, or on many machines through a
durable MongoDB job queue (``sys.queue``)::

    from core4nb import Core4Executor
    with Core4Executor() as ex:
        counts = list(ex.map(count_primes, ranges))
"""

from core4nb.context import Defer, JobContext, current_job
from core4nb.errors import (
    ChildFailed,
    ConfigError,
    Core4Error,
    JobFailed,
    JobNotFinal,
    JobNotFound,
    NodeStartFailed,
    PayloadError,
    RemoteError,
    SignatureError,
    StoreUnavailable,
    WorkerLost,
)
from core4nb.executor import Core4Executor, Core4Future
from core4nb.executor.handle import enqueue
from core4nb.job import Job, State
from core4nb.jobs import Core4Job
from core4nb.queue import Queue
from core4nb.serialize import ship
from core4nb.widgets import progress  # imports ipywidgets only when a notebook panel is made

__version__ = "0.1.0"

__all__ = [
    "ChildFailed",
    "ConfigError",
    "Core4Error",
    "Core4Executor",
    "Core4Future",
    "Core4Job",
    "Defer",
    "Job",
    "JobContext",
    "JobFailed",
    "JobNotFinal",
    "JobNotFound",
    "NodeStartFailed",
    "PayloadError",
    "Queue",
    "RemoteError",
    "SignatureError",
    "State",
    "StoreUnavailable",
    "WorkerLost",
    "current_job",
    "enqueue",
    "progress",
    "ship",
]


def load_ipython_extension(ipython) -> None:
    """``%load_ext core4nb``: register ``%core4`` / ``%%core4`` (IPython imported only here)."""
    from core4nb.magics import load_ipython_extension as load

    load(ipython)


def unload_ipython_extension(ipython) -> None:
    from core4nb.magics import unload_ipython_extension as unload

    unload(ipython)
