"""Real worker node processes for the tests (``python -m core4nb worker``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: Seconds a test waits for something that takes a second or two on a quiet machine. Generous: a loaded
#: 2-core machine is many times slower, and a deadline only bounds a test that fails anyway.
#: ``CORE4NB_TEST_PATIENCE`` multiplies it (and every deadline derived from it) for slower machines.
PATIENCE = 60.0 * float(os.environ.get("CORE4NB_TEST_PATIENCE", "1"))


def start_node(url: str, name: str, *, processes: int = 2, lease: float = 30.0, burst: bool = False,
               extra: tuple[str, ...] = (), env: dict[str, str] | None = None,
               module: str = "core4nb") -> subprocess.Popen:
    """``module``: ``tests.othermachine`` runs the node as if on another machine (see there)."""
    cmd = [sys.executable, "-m", module, "worker", url, "--processes", str(processes), "--name", name,
           "--lease", str(lease), "--log-level", "DEBUG", *extra]
    if burst:
        cmd.append("--burst")
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    # A log file, not a pipe: a test that only waits would block a chatty node on a full pipe.
    log = tempfile.NamedTemporaryFile("w+", prefix=f"core4nb-{name}-", suffix=".log", delete=False)  # noqa: SIM115
    proc = subprocess.Popen(cmd, env=full_env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    proc.log_path = log.name
    log.close()
    return proc


def node_log(proc: subprocess.Popen) -> str:
    return Path(proc.log_path).read_text(errors="backslashreplace")  # a job may print undecodable bytes


def stop_node(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = PATIENCE) -> str:
    """Stop a node by pid and return what it logged."""
    if proc.poll() is None:
        os.kill(proc.pid, sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return node_log(proc)


def wait_for(predicate, timeout: float = PATIENCE, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
