"""The exception tree of core4nb: one root, a handful of meaningful subclasses.

Every message says what happened, the likely cause and the fix, on one line.
"""

from __future__ import annotations

import pickle


class Core4Error(Exception):
    """Root of every error core4nb raises on purpose."""


class ConfigError(Core4Error, ValueError):
    """A URL, option or setting is malformed; the message names it and the fix."""


class StoreUnavailable(Core4Error, ConnectionError):
    """The queue's database cannot be reached (server down, path not writable)."""


class JobNotFound(Core4Error, KeyError):
    """No job with this id exists in the queue (never enqueued, or removed)."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else "job not found"


class MalformedJob(Core4Error, ValueError):
    """A job document in the queue has a missing or wrongly typed field: it is set aside, never run."""


class DuplicateJob(Core4Error, ValueError):
    """A job id given to ``insert`` is in the queue already (or twice in the batch): nothing was inserted."""


class IllegalTransition(Core4Error):
    """A state change the job state machine does not allow (a bug, not user input)."""


class PayloadError(Core4Error):
    """A function, argument or result cannot be serialized or safely deserialized."""


class UnpicklableError(PayloadError, pickle.PicklingError):
    """A function, argument or result cannot be pickled; also a ``pickle.PicklingError``, so the
    ``except PicklingError`` clauses written for ProcessPoolExecutor catch it."""


class SignatureError(PayloadError):
    """A payload is unsigned or signed with another key: it is never unpickled."""


class BlobMissing(PayloadError):
    """A blob a payload or result names is not in the store (deleted by hand or swept): nothing runs."""


class EnvironmentMismatch(PayloadError):
    """A payload cannot be loaded here, and the packages it names differ in version from the notebook's."""


class FingerprintMismatch(PayloadError):
    """A payload was pickled by a Python/cloudpickle this process cannot load."""


class KeyFileError(Core4Error):
    """The cluster key file is missing, unreadable or readable by other users."""


class JobFailed(Core4Error):
    """A job ended in error, killed or inactive; the message names the job."""


class JobNotFinal(Core4Error):
    """A job's outcome was asked for, or a restart, while the job still has work ahead of it (not a failure)."""


class WorkerLost(Core4Error):
    """A job's worker stopped heartbeating (node died, paused or cut off)."""


class NodeStartFailed(Core4Error):
    """The local worker node an executor relies on cannot start (or keeps crashing): its jobs cannot run here."""


class NotInJob(Core4Error, RuntimeError):
    """A job-only call (``current_job()``) was made outside a job running on a worker."""


class ChildrenOpen(Core4Error):
    """A job asked for its children's results while some of them still have work ahead of them."""


class NoWorkers(Core4Error, TimeoutError):
    """No worker node serves the queue, so nothing would run the jobs; the message names the command to start one."""


class ChildFailed(JobFailed):
    """A child job in a divide-and-conquer tree ended without a result."""


class RemoteError(Core4Error):
    """An exception raised inside a job whose type cannot be rebuilt here.

    Attributes:
        type_name: qualified name of the original exception type.
        remote_traceback: the formatted traceback from the worker.
    """

    def __init__(self, type_name: str, message: str, remote_traceback: str = "") -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.remote_traceback = remote_traceback
