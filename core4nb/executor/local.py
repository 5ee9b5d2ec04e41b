"""Local worker nodes: the ``core4nb worker`` process an executor starts and stops.

One node process with ``N`` child processes (not ``N`` nodes): one claim loop,
one ``sys.worker`` document, one forkserver. The node gets the notebook's
``sys.path`` so functions importable by module in the notebook import in the
workers too, and ``--watch-pid`` so it stops when the notebook dies without
shutting the executor down (a kernel killed with SIGKILL).

One process shares one node per queue URL (:func:`acquire_node`): ``%%core4``,
``Core4Executor()`` and ``enqueue`` in one kernel would otherwise each start
one, and three nodes of N children on N cores only fight over them. The node
counts its users and stops when the last one releases it.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import logging
import os
import signal
import site
import socket
import subprocess
import sys
import sysconfig
import threading
import time
from pathlib import Path

from core4nb.store import URL_ENV, embedded_path, redact_url
from core4nb.store.paths import home, make_private_dirs

log = logging.getLogger("core4nb.executor")

#: After SIGTERM the node hands running jobs back within its --grace; then it gets SIGKILL.
GRACE = 2.0
KILL_AFTER = 10.0
#: A node that exits this soon after starting, MAX_QUICK_DEATHS times in a row, is not restarted again.
QUICK_DEATH = 5.0
MAX_QUICK_DEATHS = 3

_serials: collections.defaultdict[str, itertools.count] = collections.defaultdict(lambda: itertools.count(1))


def node_name(url: str) -> str:
    """``local-HOST-PID``, with a serial suffix for a second node of this process on the same queue
    (a node's name is its ``sys.worker`` document's key there; on another queue the plain name is free)."""
    n = next(_serials[url])
    base = f"local-{socket.gethostname()}-{os.getpid()}"
    return base if n == 1 else f"{base}-{n}"


def node_log_path(url: str) -> Path:
    """Where a local node writes its own streams (its log, what jobs print): beside the queue's file,
    else in core4nb's home. Never the notebook's: a kernel shows what lands on its stdout and stderr
    in whichever cell is running."""
    queue_file = embedded_path(url)
    return (queue_file.parent if queue_file is not None else home()) / "local-nodes.log"


def worker_pythonpath() -> str:
    """The notebook's ``sys.path`` entries a fresh interpreter would not have by itself.

    The current directory (``''``) becomes absolute; the interpreter's own
    library and site-packages directories are left out, they come anyway.
    """
    paths = sysconfig.get_paths()
    own = [paths[k] for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths]
    own += [*site.getsitepackages(), site.getusersitepackages()]
    own = {os.path.realpath(p) for p in own}
    entries, seen = [], set()
    for entry in sys.path:
        path = os.path.realpath(entry or os.getcwd())
        # Not a directory or zip (e.g. an editable install's path-hook marker): nothing to import from.
        if not os.path.exists(path) or path in seen or any(path == o or path.startswith(o + os.sep) for o in own):
            continue
        seen.add(path)
        entries.append(path)
    inherited = os.environ.get("PYTHONPATH")
    return os.pathsep.join(entries + ([inherited] if inherited else []))


class LocalWorkers:
    """A ``core4nb worker`` node process serving ``url`` with ``processes`` children.

    Args:
        url: the queue URL.
        processes: child processes of the node (parallel jobs).
        env: extra environment for the node (tests give it another cluster key).
    """

    def __init__(self, url: str, processes: int, *, env: dict[str, str] | None = None) -> None:
        self.url = url
        self.processes = processes
        self.name = node_name(url)
        self.quick_deaths = 0
        self.users = 1  # executors sharing this node (acquire/release)
        self._stopping = False
        self._check_lock = threading.Lock()  # each sharing executor's poller calls check()
        # The URL goes through the environment: argv is visible to every user in `ps`, and a URL may hold
        # a password or a token.
        full_env = {**os.environ, "PYTHONPATH": worker_pythonpath(), **(env or {}), URL_ENV: url}
        self._command = [sys.executable, "-m", "core4nb", "worker",
                         "--processes", str(processes), "--name", self.name, "--watch-pid", str(os.getpid()),
                         "--grace", str(GRACE), "--log-level", "ERROR"]
        self._env = full_env
        self._start()

    def _start(self) -> None:
        self.started_at = time.monotonic()
        # Own session: Ctrl-C in a terminal reaches the script, whose executor stops the node in order.
        self.log_path = node_log_path(self.url)
        make_private_dirs(self.log_path.parent)
        with open(self.log_path, "ab") as log_file:  # the node holds its own copy of the descriptor
            self.process = subprocess.Popen(self._command, env=self._env, stdin=subprocess.DEVNULL, stdout=log_file,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        log.debug("started local worker node %s (pid %d, %d processes)", self.name, self.process.pid, self.processes)

    @property
    def pid(self) -> int:
        return self.process.pid

    def is_alive(self) -> bool:
        return self.process.poll() is None

    def check(self) -> str | None:
        """Restart the node if it died on its own; once it keeps dying at start, say why instead.

        Called by the poller while futures wait, so a crashed node does not leave
        them hanging. Returns None while all is well, else the error for the futures.
        """
        with self._check_lock:
            return self._check()

    def _check(self) -> str | None:
        if self._stopping or self.is_alive():
            return None
        code = self.process.returncode
        if self.quick_deaths >= MAX_QUICK_DEATHS:
            return (f"the local worker node {self.name} exited with code {code} within {QUICK_DEATH:g} s of "
                    f"starting, {self.quick_deaths} times; its error is in {self.log_path}; the jobs stay "
                    f"in queue {redact_url(self.url)} for any other worker (`core4nb worker URL`)")
        self.quick_deaths = self.quick_deaths + 1 if time.monotonic() - self.started_at < QUICK_DEATH else 1
        log.warning("local worker node %s (pid %d) exited with code %s; starting it again",
                    self.name, self.pid, code)
        self._start()
        return None

    def release(self) -> None:
        """One user less; the last one stops the node."""
        with _pools_lock:
            self.users -= 1
            last = self.users <= 0
            if last and _pools.get(self.url) is self:
                del _pools[self.url]
        if last:
            self.stop()

    def stop(self) -> int | None:
        """SIGTERM (the node hands running jobs back and exits), SIGKILL if it does not.

        Returns the node's exit code.
        """
        self._stopping = True
        if self.is_alive():
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(GRACE + KILL_AFTER)
            except subprocess.TimeoutExpired:
                log.warning("local worker node %s (pid %d) ignored SIGTERM for %g s; killing it",
                            self.name, self.pid, GRACE + KILL_AFTER)
                with contextlib.suppress(ProcessLookupError):
                    self.process.kill()
                self.process.wait()
        return self.process.returncode


_pools_lock = threading.Lock()
_pools: dict[str, LocalWorkers] = {}


def acquire_node(url: str, processes: int | None, *, share: bool = True) -> LocalWorkers:
    """This process's local node on ``url``, started if there is none; release it when done.

    Args:
        url: the queue URL.
        processes: None takes the running node whatever its size (else one per core);
            a number takes the running node only if it has that many processes.
        share: False starts a node of the caller's own, which no later caller gets.
    """
    with _pools_lock:
        running = _pools.get(url) if share else None
        if running is not None and running.users > 0 and processes in (None, running.processes):
            running.users += 1
            return running
        node = LocalWorkers(url, processes or os.cpu_count() or 1)
        if share and running is None:  # a node of another size stays separate, and unshared
            _pools[url] = node
        return node
