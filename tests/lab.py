"""A real JupyterLab server on 127.0.0.1 for the browser test (stopped by its pid).

Isolated config, runtime, settings and workspace folders so nothing of the
user's Jupyter set-up leaks in and no old workspace is restored; it serves a
copy of the notebooks, so Lab's autosave never writes into the repository.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.nodes import PATIENCE
from tests.servers import free_port


class LabServer:
    def __init__(self, workdir: Path, notebooks: Path, env: dict[str, str]) -> None:
        self.workdir = workdir
        self.notebooks = notebooks
        self.env = env
        self.port = free_port()
        self.token = secrets.token_hex(16)
        self.proc: subprocess.Popen | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 90.0) -> LabServer:
        dirs = {name: self.workdir / name for name in ("cfg", "data", "rt", "settings", "ws", "ipy")}
        for folder in dirs.values():
            folder.mkdir(parents=True, exist_ok=True)
        notify = dirs["settings"] / "@jupyterlab" / "apputils-extension"
        notify.mkdir(parents=True, exist_ok=True)
        (notify / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false"}))
        # JUPYTER_DATA_DIR too: a 'python3' kernelspec in ~/.local/share/jupyter would otherwise shadow the
        # venv's, and the notebook kernel would run some other Python. JUPYTER_PATH would add more of those.
        inherited = {k: v for k, v in os.environ.items() if k != "JUPYTER_PATH"}
        env = {**inherited, **self.env, "JUPYTER_CONFIG_DIR": str(dirs["cfg"]), "JUPYTER_DATA_DIR": str(dirs["data"]),
               "JUPYTER_RUNTIME_DIR": str(dirs["rt"]),
               "JUPYTERLAB_SETTINGS_DIR": str(dirs["settings"]), "JUPYTERLAB_WORKSPACES_DIR": str(dirs["ws"]),
               "IPYTHONDIR": str(dirs["ipy"])}
        self.log = open(self.workdir / "lab.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", "--ServerApp.ip=127.0.0.1",
             f"--ServerApp.port={self.port}", "--ServerApp.port_retries=0",
             f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={self.notebooks}",
             "--LabApp.expose_app_in_browser=True", "--LabApp.news_url=None",
             "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
             "--LabApp.extension_manager=readonly"],
            env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"JupyterLab exited with {self.proc.returncode}; see {self.workdir / 'lab.log'}")
            try:
                urllib.request.urlopen(f"{self.base}/api/status?token={self.token}", timeout=2).read()
                return self
            except OSError:
                time.sleep(0.3)
        raise RuntimeError(f"JupyterLab did not answer within {timeout} s; see {self.workdir / 'lab.log'}")

    def stop(self) -> None:
        """Terminating the server shuts its kernels down; SIGKILL the group if it hangs."""
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(PATIENCE)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if getattr(self, "log", None) is not None:
            self.log.close()
