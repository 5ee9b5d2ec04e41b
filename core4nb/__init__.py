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
    JobNotFound,
    PayloadError,
    RemoteError,
    SignatureError,
    StoreUnavailable,
    WorkerLost,
)
from core4nb.job import Job, State
from core4nb.queue import Queue

__version__ = "0.1.0"

__all__ = [
    "ChildFailed",
    "ConfigError",
    "Core4Error",
    "Defer",
    "Job",
    "JobContext",
    "JobFailed",
    "JobNotFound",
    "PayloadError",
    "Queue",
    "RemoteError",
    "SignatureError",
    "State",
    "StoreUnavailable",
    "WorkerLost",
    "current_job",
]
