"""Job functions for the fault-injection tests (``tests/test_faults.py``), importable by worker children."""

from __future__ import annotations

import hashlib
import os
import signal
import threading
import time
from pathlib import Path

from core4nb.context import current_job
from tests import jobfuncs


def whoami(path: str, tag: object, seconds: float = 0.0) -> str:
    """Record ``tag`` (see :func:`jobfuncs.record`) after ``seconds``; return the running worker's name.
    ``<path>.started`` says a child has begun running it (a claim alone does not)."""
    Path(f"{path}.started").touch()
    jobfuncs.record(path, tag, seconds)
    return current_job().job.lease.worker


def digest(data: bytes) -> tuple[int, str]:
    """Size and SHA-256 of a (large) argument, to prove it arrived whole."""
    return len(data), hashlib.sha256(data).hexdigest()


def unpicklable_result() -> threading.Lock:
    return threading.Lock()


class Trap:
    """A value whose *unpickling* creates ``path``: proof of whether a process unpickled it."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple:
        return jobfuncs.touch, (self.path,)


def make_trap(path: str) -> Trap:
    return Trap(path)


def kill_my_node(trials_path: str, times: int = 1_000_000) -> str:
    """SIGKILL the worker node running this job on its first ``times`` trials (counted in
    ``trials_path``), as a job that exhausts a machine would; afterwards return the worker's name."""
    with open(trials_path, "a") as handle:
        handle.write("x")
    with open(trials_path) as handle:
        trial = len(handle.read())
    lease = current_job().job.lease
    if trial <= times:
        os.kill(lease.pid, signal.SIGKILL)
        time.sleep(30)  # dies with the node
    return lease.worker


def print_undecodable() -> int:
    """Print a file name that is not UTF-8, as ``os.listdir`` returns it (a lone surrogate)."""
    print("listing", os.fsdecode(b"x\xff.txt"))
    return 1


def progress_then(value: object, message: object, seconds: float = 0.0) -> int:
    current_job().progress(value, message)
    time.sleep(seconds)  # long enough for the node to write the progress
    return 2


def raise_undecodable(size: int = 0) -> None:
    raise ValueError("cannot open " + os.fsdecode(b"x\xff.txt") + "!" * size)


def big_result(size: int) -> str:
    """A large result that stays inside the pickle (text has no buffer to go out of band as a blob),
    so it must go through the queue file itself."""
    return "x" * size
