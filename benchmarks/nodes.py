"""Simulated worker nodes: ``python -m core4nb worker URL --processes 1 --name sim-i``
as subprocesses of the benchmark, each in its own session, stopped by pid."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.env import ROOT


class NodePool:
    """Grows to k nodes on one queue URL; :meth:`stop` ends every one of them."""

    def __init__(self, url: str, logdir: Path, *, prefix: str = "sim", store=None) -> None:
        self.url = url
        self.logdir = logdir
        self.prefix = prefix
        self.store = store
        self.procs: list[subprocess.Popen] = []
        logdir.mkdir(parents=True, exist_ok=True)

    def __len__(self) -> int:
        return len(self.procs)

    def grow_to(self, k: int, timeout: float = 180.0) -> float:
        """Start nodes until there are ``k``; wait until each registered. Returns seconds taken."""
        start = time.monotonic()
        while len(self.procs) < k:
            name = f"{self.prefix}-{len(self.procs)}"
            log = open(self.logdir / f"{name}.log", "ab")  # noqa: SIM115 - the child owns it
            self.procs.append(subprocess.Popen(
                [sys.executable, "-m", "core4nb", "worker", self.url, "--processes", "1", "--name", name,
                 "--log-level", "WARNING"],
                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True))
            log.close()
        self.wait_registered(k, deadline=start + timeout)
        return time.monotonic() - start

    def wait_registered(self, k: int, deadline: float) -> None:
        names = {f"{self.prefix}-{i}" for i in range(k)}
        while True:
            dead = [p for p in self.procs if p.poll() is not None]
            if dead:
                log = (self.logdir / f"{self.prefix}-{self.procs.index(dead[0])}.log").read_text().strip()
                raise RuntimeError(f"worker node pid {dead[0].pid} exited with {dead[0].returncode}: "
                                   + (log.splitlines()[-1] if log else "no output"))
            seen = {w.name for w in self.store.workers()} if self.store is not None else names
            if names <= seen:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {len(names & seen)} of {k} worker nodes registered; see {self.logdir}")
            time.sleep(0.1)

    def stop(self, grace: float = 20.0) -> None:
        """SIGTERM every node (idle nodes drain at once), SIGKILL its process group after ``grace``."""
        for proc in self.procs:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # the node's group: it and its child processes
                proc.wait()
        time.sleep(0.2)
        for proc in self.procs:  # a child process that outlived its node is ended with the group
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        self.procs.clear()
