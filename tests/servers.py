"""Real servers for the tests: the ``nx-27017`` MongoDB wire-protocol server.

Started on a free loopback port, stopped by its pid. ``CORE4NB_TEST_MONGO_URL``
points the same tests at a real MongoDB instead (each test gets its own
database there, dropped afterwards).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.nodes import PATIENCE


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class WireServer:
    """One ``nx-27017`` process on 127.0.0.1: in-memory databases, or with ``data_dir`` one
    SQLite file per database there, so that the data survives :meth:`restart`."""

    def __init__(self, workdir: Path, data_dir: Path | None = None) -> None:
        self.workdir = workdir
        self.data_dir = data_dir
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}"

    def start(self) -> WireServer:
        exe = shutil.which("nx-27017", path=str(Path(sys.executable).parent)) or shutil.which("nx-27017")
        if exe is None:
            raise RuntimeError("nx-27017 is not installed: pip install -e '.[test]'")
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = open(self.workdir / "nx.log", "ab")  # noqa: SIM115 - closed by the process's exit
        self.proc = subprocess.Popen(
            [exe, "--data-dir", str(self.data_dir or "memory"), "--host", "127.0.0.1", "-p", str(self.port),
             "--pid-file", str(self.workdir / "nx.pid"), "--log-file", str(self.workdir / "nx-server.log")],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        self._wait_ready()
        return self

    def _wait_ready(self, timeout: float = PATIENCE) -> None:
        import pymongo

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nx-27017 exited with {self.proc.returncode}; see {self.workdir / 'nx.log'}")
            try:
                client = pymongo.MongoClient(self.url, serverSelectionTimeoutMS=300)
                client.admin.command("ping")
                client.close()
                return
            except Exception:
                time.sleep(0.1)
        raise RuntimeError(f"nx-27017 did not answer ping within {timeout} s")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            try:
                self.proc.wait(PATIENCE)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        # A server that died without cleaning up leaves its pid file, and nx refuses to start over one.
        (self.workdir / "nx.pid").unlink(missing_ok=True)

    def restart(self, sig: int = signal.SIGKILL, down_for: float = 0.0) -> WireServer:
        """Stop the server with ``sig``, stay down ``down_for`` seconds, start it again on the same port."""
        self.stop(sig)
        time.sleep(down_for)
        return self.start()
