"""The child process: receives claimed jobs from its node, runs them, reports back.

The only place user code runs. The node owns every store write about state; the
child only verifies and unpickles the payload, calls it, and sends the outcome
(a signed result or the exception) through its pipe. Children of the job and
its progress go through :class:`~core4nb.context.JobContext`.

Messages child → node: ``("progress", value, message)``, ``("output", text)``
(what the running job printed since the last batch) and ``("done", Outcome)``.
"""

from __future__ import annotations

import contextlib
import ctypes
import enum
import logging
import os
import resource
import signal
import sys
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection

from core4nb import serialize
from core4nb.context import Defer, JobContext, activate, deactivate
from core4nb.errors import PayloadError
from core4nb.job import Job, JobError
from core4nb.remote import exception_frame, job_error
from core4nb.store import Store, open_store
from core4nb.worker.output import LiveOutput, OutputTail, Sender

NODE_WATCH_INTERVAL = 0.25  # without PR_SET_PDEATHSIG: how often a child checks its node
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


class OutcomeKind(enum.StrEnum):
    """How a trial ended: its value returned, it deferred, it raised, or it could not start (never retried)."""

    COMPLETE = "complete"
    DEFERRED = "deferred"
    FAILED = "failed"
    REJECTED = "rejected"


@dataclass
class Outcome:
    """How one trial of a job ended, as the node needs it to pick the next state."""

    kind: OutcomeKind
    runtime: float
    result: bytes | None = None  # signed value, or the signed exception for "failed"
    error: JobError | None = None
    message: str = ""
    output: str = ""  # what the trial printed (its tail)


def child_main(conn: Connection, url: str, key: bytes, node_pid: int, memory_limit_mb: int | None = None,
               log_level: int = logging.WARNING) -> None:
    """Entry point of a child process: serve jobs until the pipe closes.

    ``key`` is the node's cluster key, checked once when the node started: children
    never read the key file themselves, so a node never half-works with a bad one.
    """
    # Ctrl-C in a terminal reaches the whole process group; the node decides.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_node(node_pid)
    # The forkserver's children start with no logging set up: log as the node does, to its stderr
    # (bound now, before a job's capture replaces sys.stderr).
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger("core4nb").addHandler(handler)
    logging.getLogger("core4nb").setLevel(log_level)
    if memory_limit_mb:
        limit = memory_limit_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    store = LazyStore(url)  # one store for the child's life: blobs, children and progress share it
    sender = Sender(conn)
    live = LiveOutput(sender)
    try:
        while True:
            try:
                job = conn.recv()
            except (EOFError, OSError):
                return
            outcome = run_job(job, store, key, sender, live)
            try:
                sender.send(("done", outcome))
            except OSError:  # the node died while the job ran (this child is about to die with it)
                return
    finally:
        store.close()


class LazyStore:
    """The queue's store, opened on first use (a job that needs no blobs and no children never opens one)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._store: Store | None = None

    def get(self) -> Store:
        if self._store is None:
            self._store = open_store(self.url)
        return self._store

    def open(self, digest: str, size: int) -> memoryview:
        """A :class:`~core4nb.serialize.BlobSource`: the first blob a payload names opens the store."""
        return self.get().blobs.open(digest, size)

    def close(self) -> None:
        if self._store is not None:
            self._store.close()


def _die_with_node(node_pid: int) -> None:
    """A child outliving its node (SIGKILL, OOM) would finish a job nobody records,
    while another node reruns it after the lease expires: die with the node.

    On Linux the kernel does it for free: the child's parent is the node's forkserver,
    which exits as soon as its node is gone (its pipe from the node reaches EOF), and
    PR_SET_PDEATHSIG makes that exit SIGKILL the child. Elsewhere a thread watches.
    (A watching thread in each of 32 idle children cost ~35 ms of CPU a second.)
    """
    if _kill_me_with_my_parent() and _release_forkserver():
        if process_is_gone(node_pid):  # gone before the signal was armed
            os._exit(70)
        return
    threading.Thread(target=_watch_node, args=(node_pid,), daemon=True, name="core4nb-node-watch").start()


def _kill_me_with_my_parent() -> bool:
    """Arm PR_SET_PDEATHSIG (Linux); False where it is not available."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _release_forkserver() -> bool:
    """Close this child's copy of the pipe that keeps the forkserver alive; False if not found.

    multiprocessing hands it to every child (for a child that starts processes itself;
    this one would start its own forkserver: it has no address of the node's); held
    here, it would keep the forkserver, and so this child, alive after the node died.
    It is a private attribute: where a Python version names it otherwise, the caller
    falls back to watching the node.
    """
    from multiprocessing import forkserver

    server = getattr(forkserver, "_forkserver", None)
    fd = getattr(server, "_forkserver_alive_fd", None)
    if not isinstance(fd, int):
        return False
    with contextlib.suppress(OSError):
        os.close(fd)
    server._forkserver_alive_fd = None
    return True


def _watch_node(node_pid: int) -> None:
    while True:
        time.sleep(NODE_WATCH_INTERVAL)
        if process_is_gone(node_pid):
            os._exit(70)


def process_is_gone(pid: int) -> bool:
    """True when ``pid`` has exited — including as a zombie nobody reaped yet,
    which ``kill(pid, 0)`` alone would still report as alive."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return os.path.isdir("/proc") or not _signalable(pid)
    except OSError:
        return not _signalable(pid)


def _signalable(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # the pid was reused by another user's process
        return False
    return True


def run_job(job: Job, store: LazyStore, key: bytes, sender: Sender, live: LiveOutput | None = None) -> Outcome:
    started = time.monotonic()

    def elapsed() -> float:
        return time.monotonic() - started

    try:
        fn, args, kwargs = serialize.loads(job.payload, key=key, job_id=job.id, kinds={serialize.Kind.CALL},
                                           blobs=store, what=f"payload of job {job.id} ({job.name})")
    except PayloadError as exc:  # unsigned, tampered, foreign or a blob missing: never unpickled
        return Outcome(OutcomeKind.REJECTED, elapsed(), error=JobError(type(exc).__name__, str(exc)))
    except BaseException as exc:  # signed but cannot load here (a missing module), or its unpickling raised
        # (a __reduce__ calling sys.exit): the child lives on and result() raises what was raised
        return Outcome(OutcomeKind.REJECTED, elapsed(), result=_exception_frame(exc, job, store, key),
                       error=job_error(exc))

    ctx = JobContext(job, store.url, lambda value, message: sender.send(("progress", value, message)), store.get)
    token, printed = activate(ctx), OutputTail(live)
    try:
        with printed.capturing():
            value = fn.run_job(ctx, *args, **kwargs) if hasattr(fn, "run_job") else fn(*args, **kwargs)
    except Defer as defer:
        return Outcome(OutcomeKind.DEFERRED, elapsed(), message=str(defer), output=printed.text())
    except BaseException as exc:
        return Outcome(OutcomeKind.FAILED, elapsed(), result=_exception_frame(exc, job, store, key),
                       error=job_error(exc), output=printed.text())
    finally:
        deactivate(token)
        ctx.close()
    try:
        what = f"the job's result (a {type(value).__module__}.{type(value).__qualname__})"
        frame = _store_frame(value, job, store, key, serialize.Kind.RESULT, what)
        return Outcome(OutcomeKind.COMPLETE, elapsed(), result=frame, output=printed.text())
    except PayloadError as exc:
        return Outcome(OutcomeKind.FAILED, elapsed(), error=JobError(type(exc).__name__, str(exc)),
                       output=printed.text())
    except BaseException as exc:  # the result's __reduce__ raised SystemExit or the like: as if the job raised it
        return Outcome(OutcomeKind.FAILED, elapsed(), result=_exception_frame(exc, job, store, key),
                       error=job_error(exc), output=printed.text())


def _store_frame(value: object, job: Job, store: LazyStore, key: bytes, kind: serialize.Kind, what: str) -> bytes:
    """Pickle a result or exception for ``job``: its blobs go to the store now, the frame to the node."""
    memo = serialize.DigestMemo(lambda view: store.get().blobs.put_hashing(view))  # stored as they are hashed
    packed = serialize.dumps(value, key=key, job_id=job.id, kind=kind, what=what, memo=memo)
    if packed.blobs:
        store.get().blobs.put(packed.blobs)
    return packed.frame


def _exception_frame(exc: BaseException, job: Job, store: LazyStore, key: bytes) -> bytes | None:
    """The exception itself, signed for ``job`` (its blobs stored now), when it can travel; else None."""
    return exception_frame(exc, lambda error: _store_frame(error, job, store, key, serialize.Kind.EXCEPTION,
                                                           "exception"))


def exit_description(exitcode: int | None) -> str:
    """Explain a child's exit code the way an ops person needs it."""
    if exitcode is None:
        return "still running"
    if exitcode < 0:
        sig = signal.Signals(-exitcode)
        hint = {
            signal.SIGSEGV: "a segfault in native code",
            signal.SIGKILL: "SIGKILL: the kernel's OOM killer or someone ran kill -9",
            signal.SIGABRT: "an abort() in native code",
            signal.SIGBUS: "a bus error in native code",
        }.get(sig, "a signal")
        return f"killed by {sig.name} ({hint})"
    return f"exited with code {exitcode} (os._exit or sys.exit in native code)"

