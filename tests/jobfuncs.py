"""Job functions the tests enqueue: importable by worker children (``tests.jobfuncs``).

Functions that record what they did append one line to a file (O_APPEND writes
of one short line are atomic), so a test can prove what ran, where and when.
"""

from __future__ import annotations

import os
import signal
import sys
import time

from core4nb.context import current_job


def add(a: int, b: int) -> int:
    return a + b


def fail(message: str = "bad input") -> None:
    raise ValueError(message)


def record(path: str, tag: object, seconds: float = 0.0) -> object:
    """Append ``tag worker start end`` to ``path`` after sleeping ``seconds``; return tag."""
    start = time.time()
    time.sleep(seconds)
    worker = current_job().job.lease.worker
    with open(path, "a") as handle:
        handle.write(f"{tag} {worker} {start:.6f} {time.time():.6f}\n")
    return tag


def read_records(path: str) -> list[tuple[str, str, float, float]]:
    if not os.path.exists(path):
        return []
    with open(path) as handle:
        return [(t, w, float(s), float(e)) for t, w, s, e in (line.split() for line in handle)]


def sleep_then_record(path: str, tag: object, seconds: float) -> object:
    """Sleep first; the record proves the job ran to its end."""
    return record(path, tag, seconds)


def crash(how: str) -> None:
    """Die the way native code dies."""
    if how == "segfault":
        os.kill(os.getpid(), signal.SIGSEGV)
    elif how == "exit":
        os._exit(3)
    elif how == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif how == "memory":
        hog = []
        while True:
            hog.append(bytearray(64 * 1024 * 1024))
    time.sleep(5)


def always_defer(message: str = "waiting") -> None:
    current_job().defer(message)


def defer_once(value: int) -> int:
    job = current_job()
    if job.trial == 1:
        job.defer("first trial")
    return value * 10


def fail_until(path: str, good_trial: int) -> int:
    """Raise on trials before ``good_trial``; count trials in ``path``."""
    with open(path, "a") as handle:
        handle.write("x\n")
    trial = current_job().trial
    if trial < good_trial:
        raise RuntimeError(f"flaky on trial {trial}")
    return trial


def touch(path: str) -> None:
    """A visible side effect: the test proves it did (or did not) happen."""
    with open(path, "w") as handle:
        handle.write("ran\n")


def square(x: int, seconds: float = 0.0) -> int:
    time.sleep(seconds)
    return x * x


def fan_out(n: int, fail_at: int | None = None, levels: int = 1, seconds: float = 0.0) -> int:
    """Divide and conquer: enqueue ``n`` children, defer until they are done, return the sum.

    Children are ``square(i, seconds)`` (``fail(...)`` at index ``fail_at``), or with
    ``levels`` > 1 ``fan_out`` one level down: a nested tree for the progress panel.
    """
    job = current_job()
    if job.trial == 1:
        for i in range(n):
            if levels > 1:
                job.enqueue_child(fan_out, n, fail_at, levels - 1, seconds, options={"defer_time": 0.1})
            elif i == fail_at:
                job.enqueue_child(fail, f"chunk {i} is bad")
            else:
                job.enqueue_child(square, i, seconds)
        job.defer("children enqueued")
    still_open = job.children_open()
    if still_open:
        job.defer(f"{still_open} children still open")
    return sum(job.child_results())


def chatty(out: str, err: str, fail: bool = False) -> int:
    """Print to stdout and stderr, then return (or raise): a job whose output the notebook should see."""
    print(out)
    print(err, file=sys.stderr)
    if fail:
        raise ValueError("failed after printing")
    return len(out)


def flood(chars: int) -> int:
    """Print ``chars`` characters in numbered lines of 100 (99 and a newline)."""
    for i in range(chars // 100):
        print(f"{i:08d}".ljust(99, "."))
    return chars


def print_through_a_subprocess(text: str) -> int:
    """Code that hands sys.stdout to a subprocess needs its file descriptor."""
    import subprocess

    return subprocess.run([sys.executable, "-c", f"print({text!r})"], stdout=sys.stdout, check=True).returncode


def ranked(item: str, priority: int = 0) -> tuple[str, int]:
    """A function whose parameter shares a job option's name: it must receive the value itself."""
    return item, priority


def eager_parent() -> list:
    """Asks for its child's result at once: with one worker slot (its own) the child cannot have run."""
    job = current_job()
    job.enqueue_child(add, 1, 2)
    return job.child_results()
