"""How a job's outcome travels from a worker child to the caller: its value, or its exception.

The exception protocol follows CPython's ``concurrent.futures.process``
(``_ExceptionWithTraceback`` / ``_rebuild_exc``): the child sends the exception
itself when it survives a pickle round trip, with its formatted traceback as
text (:class:`~core4nb.job.JobError`); the caller re-raises the original type
with a :class:`RemoteTraceback` as its ``__cause__``. An exception that cannot
travel comes back as :class:`~core4nb.errors.RemoteError` carrying its text;
core4nb's own errors recorded as text keep their type.
"""

from __future__ import annotations

import itertools
import os
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn

from core4nb import errors, serialize
from core4nb.errors import JobFailed, JobNotFinal, RemoteError
from core4nb.job import Job, JobError, State

if TYPE_CHECKING:
    from core4nb.store import Store

#: Frames of files under this directory are core4nb's own (see :func:`user_traceback`).
_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


class RemoteTraceback(Exception):
    """Carries the worker's formatted traceback as the ``__cause__`` of a job's exception."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return f'\n"""\n{self.tb}"""'


# -- the worker's side: what is sent ---------------------------------------------------------


def format_exception(exc: BaseException) -> str:
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


def user_traceback(exc: BaseException) -> str:
    """The traceback from the first frame of user code on: core4nb's own frames (a map chunk's
    loop, a cell's runner) tell the user nothing."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename.startswith(_PACKAGE):
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb or exc.__traceback__))


def job_error(exc: BaseException) -> JobError:
    """The exception as text: what the job record shows, and the fallback when the object cannot travel."""
    return JobError(type(exc).__qualname__, str(exc), format_exception(exc))


def transportable(exc: Exception, tb: str) -> BaseException:
    """The exception if it survives a pickle round trip, else a RemoteError with its text."""
    if serialize.round_trips(exc):
        return exc
    return RemoteError(f"{type(exc).__module__}.{type(exc).__qualname__}", str(exc), tb)


def exception_frame(exc: BaseException, pack: Callable[[BaseException], bytes]) -> bytes | None:
    """The exception itself packed by ``pack`` (the child signs and stores it), so the caller can re-raise
    its own type; None if it cannot travel (the caller then rebuilds it from the job's error text)."""
    if not serialize.round_trips(exc):  # some exceptions pickle but cannot be rebuilt
        return None
    try:
        return pack(exc)
    except Exception:
        return None


# -- the caller's side: what is raised -------------------------------------------------------


def with_remote_cause(exc: BaseException, tb: str) -> BaseException:
    """``exc`` with the worker's traceback as its cause, as ``raise exc from RemoteTraceback(tb)`` would set it."""
    exc.__cause__ = RemoteTraceback(tb)
    exc.__suppress_context__ = True
    return exc


def raise_remote(error: BaseException) -> NoReturn:
    """Raise a job's exception where the user waits: IPython always shows the raising frame, so it is this one."""
    __tracebackhide__ = True
    raise error  # the job's own exception, raised in the worker (its traceback is the cause above)


def outcome(job: Job, store: Store, key: bytes | None = None) -> Any:
    """The value of a final job, or raise what it raised (its blobs read from ``store``).

    An exception from the job is re-raised as its own type with the remote
    traceback as ``__cause__`` (as ``concurrent.futures`` does); when its type
    cannot be rebuilt here, as :class:`RemoteError`.
    """
    if job.state == State.COMPLETE:
        if job.gather:  # a passive root (a map's): its children's results, chained in order
            children = store.find(parent_id=job.id, blobs=True)
            return list(itertools.chain.from_iterable(outcome(child, store, key) for child in children))
        if not job.result:
            return None
        return serialize.loads(job.result, key=key, job_id=job.id, kinds={serialize.Kind.RESULT},
                               blobs=store.blobs, what=f"result of job {job.id}")
    if job.state == State.ERROR:
        raise rebuild_exception(job, store, key)
    if job.state in (State.KILLED, State.INACTIVE):
        reason = job.error.summary() if job.error else job.progress_message or "no reason recorded"
        raise JobFailed(f"job {job.id} ({job.name}) is {job.state}: {reason}")
    raise JobNotFinal(f"job {job.id} ({job.name}) is {job.state}, not final; wait for it first")


def rebuild_exception(job: Job, store: Store, key: bytes | None = None) -> BaseException:
    """The exception a job in error raised: unpickled if its type is importable here, else from its text."""
    error = job.error
    if error is None:
        return RemoteError("UnknownError", f"job {job.id} ended in error without a record")
    exc: BaseException | None = None
    if job.result:
        try:
            exc = serialize.loads(job.result, key=key, job_id=job.id, kinds={serialize.Kind.EXCEPTION},
                                  blobs=store.blobs, what=f"exception of job {job.id}")
        except Exception:  # type not importable here: fall back to text below
            exc = None
    if not isinstance(exc, BaseException):
        exc = _core4_error(error.type, error.message) or RemoteError(error.type, error.message, error.traceback)
    return with_remote_cause(exc, error.traceback) if error.traceback else exc


def _core4_error(type_name: str, message: str) -> BaseException | None:
    """core4nb's own errors recorded by a worker as text (SignatureError, WorkerLost…) keep their type."""
    cls = getattr(errors, type_name, None)
    if isinstance(cls, type) and issubclass(cls, errors.Core4Error) and cls is not RemoteError:
        return cls(message)
    return None
