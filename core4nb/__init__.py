"""core4nb: run Python work in parallel from a Jupyter notebook.

On every core of this machine with zero set-up, or on many machines through a
durable MongoDB job queue (``sys.queue``)::

    from core4nb import Core4Executor
    with Core4Executor() as ex:
        counts = list(ex.map(count_primes, ranges))
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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
    from core4nb.widgets import progress

# Each public name and the module that owns it, imported on first use (PEP 562). A worker node and its
# forkserver import core4nb.worker.*, which loads this package first: eager imports here would load the
# executor, the widgets and the jobs API into every node at every start, where nothing uses them.
_ERRORS = ("ChildFailed", "ConfigError", "Core4Error", "JobFailed", "JobNotFinal", "JobNotFound", "NodeStartFailed",
           "PayloadError", "RemoteError", "SignatureError", "StoreUnavailable", "WorkerLost")
_OWNERS = {
    **dict.fromkeys(("Defer", "JobContext", "current_job"), "core4nb.context"),
    **dict.fromkeys(_ERRORS, "core4nb.errors"),
    **dict.fromkeys(("Core4Executor", "Core4Future"), "core4nb.executor"),
    "enqueue": "core4nb.executor.handle",
    **dict.fromkeys(("Job", "State"), "core4nb.job"),
    "Core4Job": "core4nb.jobs",
    "Queue": "core4nb.queue",
    "ship": "core4nb.serialize",
    "progress": "core4nb.widgets",  # imports ipywidgets only when a notebook panel is made
}


def __getattr__(name: str) -> Any:
    owner = _OWNERS.get(name)
    if owner is None:  # a submodule, as `import core4nb; core4nb.errors.JobFailed` found it when all were loaded
        try:
            return importlib.import_module(f"{__name__}.{name}")  # the import sets it as an attribute here
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    value = getattr(importlib.import_module(owner), name)
    globals()[name] = value  # once: later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_OWNERS})


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
