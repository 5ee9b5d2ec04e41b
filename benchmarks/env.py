"""The run's context: sizes, a private scratch directory, the environment every
worker process inherits, the MongoDB wire-protocol server, machine facts.

Nothing of the user's is touched: core4nb's home and cluster key live in the
scratch directory, which is removed at the end; the server binds 127.0.0.1 and
is stopped by its pid.
"""

from __future__ import annotations

import compileall
import contextlib
import importlib.metadata
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

#: Per size: primes' end (serial ≈ 20 s / 0.5 s on this 2-core machine), map items, …
SIZES: dict[str, dict[str, Any]] = {
    "full": {"primes_end": 7_000_000, "overhead_items": 100_000, "overhead_budget_s": 20.0, "latency_calls": 200,
             "scaling_nodes": [1, 2, 4, 8, 16, 32], "scaling_jobs": 64, "scaling_sleep": 0.25,
             "queue_jobs": 10_000, "queue_jobs_mongo": 500},
    "tiny": {"primes_end": 550_000, "overhead_items": 2_000, "overhead_budget_s": 3.0, "latency_calls": 20,
             "scaling_nodes": [1, 2], "scaling_jobs": 8, "scaling_sleep": 0.1,
             "queue_jobs": 200, "queue_jobs_mongo": 50},
}

TOOLS = ("core4nb", "cloudpickle", "loky", "dask", "distributed", "ipyparallel", "pymongo", "nx-27017",
         "matplotlib", "pyinstrument", "psutil", "joblib", "scikit-learn", "ray")


#: Processes of the run itself (the wire-protocol server) that a tool's clean-up must leave alone.
PROTECTED_PIDS: set[int] = set()


class BackendTimeout(Exception):
    """A tool took longer than the benchmark allows for one workload."""


@contextlib.contextmanager
def time_limit(seconds: float, what: str) -> Iterator[None]:
    """Raise BackendTimeout in the main thread after ``seconds`` (lock waits are interruptible)."""
    def fire(_signum: int, _frame: object) -> None:
        raise BackendTimeout(f"{what} took longer than {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@dataclass
class Context:
    workers: int = 2
    repeat: int = 3
    size: str = "full"
    timeout: float = 600.0
    scratch: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="core4nb-bench-")))
    _server: Any = None

    @property
    def sizes(self) -> dict[str, Any]:
        return SIZES[self.size]

    def prepare_environment(self) -> None:
        """Workers of every tool import ``benchmarks.work`` by reference and sign with a private key."""
        path = os.environ.get("PYTHONPATH")
        os.environ["PYTHONPATH"] = str(ROOT) + (os.pathsep + path if path else "")
        # core4nb would ship this checkout's modules by value (they are not installed): 0.7 kB of pickled
        # code per job, ~9 % more instructions per trivial job, which no other tool pays here. A notebook's
        # own functions travel by value in every core4nb version; this keeps the tools' pickles alike.
        os.environ["CORE4NB_SHIP_LOCAL"] = "0"
        if str(ROOT) not in sys.path:
            sys.path.insert(0, str(ROOT))
        os.environ["CORE4NB_HOME"] = str(self.scratch / "home")
        os.environ["CORE4NB_KEY_FILE"] = str(self.scratch / "key")
        os.environ.pop("CORE4NB_URL", None)
        os.environ.pop("CORE4NB_KEY", None)
        compile_bytecode(ROOT)

    # -- the MongoDB wire-protocol server ----------------------------------------------
    def mongo_url(self, db: str = "bench") -> str:
        """A URL on the nx-27017 server, started on first use on a free 127.0.0.1 port."""
        if self._server is None:
            from tests.servers import WireServer

            self._server = WireServer(self.scratch / "nx").start()
            PROTECTED_PIDS.add(self._server.proc.pid)
        return f"{self._server.url}/{db}?collection_prefix=sys_"

    def drop_mongo_db(self, db: str) -> None:
        if self._server is None:
            return
        import pymongo

        client = pymongo.MongoClient(self._server.url, serverSelectionTimeoutMS=2000)
        try:
            client.drop_database(db)
        finally:
            client.close()

    def close(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None
        self._remove_doorbell_dirs()
        shutil.rmtree(self.scratch, ignore_errors=True)

    def _remove_doorbell_dirs(self) -> None:
        """core4nb keeps an (emptied) doorbell directory per queue file in the temp dir: remove ours."""
        try:
            from core4nb.store.bell import bell_dir
        except ImportError:
            return
        for db in self.scratch.rglob("*.db"):
            directory = bell_dir(db)
            with contextlib.suppress(OSError):
                directory.rmdir()  # only when empty
            if directory.parent.is_relative_to(self.scratch):  # never the shared per-user directory
                with contextlib.suppress(OSError):
                    directory.parent.rmdir()


def summary(values: list[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def clock() -> float:
    return time.perf_counter()


def version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine() -> dict[str, Any]:
    """Facts a reader needs to weigh the numbers."""
    info: dict[str, Any] = {
        "cores": os.cpu_count(), "usable_cores": len(os.sched_getaffinity(0)),
        "python": sys.version.split()[0], "implementation": platform.python_implementation(),
        "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "versions": {tool: version(tool) for tool in TOOLS},
    }
    try:
        import psutil

        info["memory_gb"] = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        info["memory_gb"] = round(pages / 2**30, 1)
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "core4nb"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        info["commit"] = head + ("+uncommitted core4nb changes" if dirty else "") if head else None
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                info["processor"] = line.split(":", 1)[1].strip()
                break
    return info


def compile_bytecode(tree: Path) -> None:
    """Write ``tree``'s bytecode once, before anything is timed. An installed core4nb has it (pip compiles)
    and so do the peers in site-packages, but a checkout run with ``PYTHONDONTWRITEBYTECODE`` set (as some
    sandboxes and containers do) would compile every module again in each worker node and forkserver it
    starts, which only core4nb's start-up would pay. Python reads existing bytecode even with that set."""
    for package in ("core4nb", "benchmarks"):
        compileall.compile_dir(tree / package, quiet=1)
