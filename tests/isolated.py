"""Worker nodes that share no files with the client: each in a mount namespace of its own.

As root, ``unshare --mount`` gives the node a private ``/tmp`` and a private home (empty tmpfs mounts;
the interpreter's installation and this checkout are mounted back where they lie inside them):
the client's folders, its key file, its blob files, its doorbells and any module it imports from its
own folder are out of reach, as on another machine. The network is shared, so the node reaches the
MongoDB wire-protocol test server on 127.0.0.1. The node gets the cluster key through its environment
and runs from ``/`` with no ``PYTHONPATH``: only installed code (the venv, core4nb) is importable.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.nodes import ROOT


@functools.cache
def why_not() -> str | None:
    """Why nodes cannot be isolated here, or None."""
    if os.geteuid() != 0:
        return "needs root for a private mount namespace (unshare --mount)"
    if shutil.which("unshare") is None:
        return "needs unshare (util-linux)"
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "true"], capture_output=True)
    if probe.returncode:
        return f"unshare --mount is refused here: {probe.stderr.decode().strip()}"
    return None


def _hidden(base_temp: Path) -> list[str]:
    """What the node must not see: /tmp (just pytest's folders when this checkout lives under /tmp)
    and the home folder."""
    return ["/tmp" if not str(ROOT).startswith("/tmp/") else str(base_temp), str(Path.home())]


def private_dir(base_temp: Path) -> Path:
    """A folder both sides have at the same path, empty and private on the node's side."""
    return Path(_hidden(base_temp)[0])


def _kept(hidden: list[str]) -> list[str]:
    """What must stay visible inside a hidden folder: the interpreter's installation and this checkout
    (the venv with core4nb: the "installed" code every node has)."""
    wanted = {os.path.realpath(sys.base_prefix), str(ROOT)}
    return sorted(k for k in wanted if any(k.startswith(h.rstrip("/") + "/") for h in hidden))


def start_isolated_node(url: str, name: str, key: str, base_temp: Path, *, processes: int = 2, burst: bool = True,
                        lease: float = 30.0) -> subprocess.Popen:
    """``core4nb worker URL`` in its own mount namespace (see the module docstring)."""
    hidden = _hidden(base_temp)
    kept = _kept(hidden)
    steps = ["set -e", "mount -t tmpfs tmpfs /mnt"]  # a private staging place for what is kept
    steps += [f"mkdir -p /mnt/keep{i} && mount --bind {k} /mnt/keep{i}" for i, k in enumerate(kept)]
    steps += [f"mount -t tmpfs -o mode=0700 tmpfs {h}" for h in hidden]
    steps += [f"mkdir -p {k} && mount --move /mnt/keep{i} {k}" for i, k in enumerate(kept)]
    steps += ['mkdir -p "$HOME"', "cd /", 'exec "$@"']
    cmd = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", "\n".join(steps), "sh",
           sys.executable, "-m", "core4nb", "worker", url, "--processes", str(processes), "--name", name,
           "--lease", str(lease), "--log-level", "DEBUG", *(["--burst"] if burst else [])]
    private = Path(hidden[0]) / "node-home"
    env = {"PATH": os.environ["PATH"], "HOME": str(private), "CORE4NB_KEY": key,
           "CORE4NB_BLOB_CACHE": str(private / "blob-cache")}
    log = tempfile.NamedTemporaryFile("w+", prefix=f"core4nb-{name}-", suffix=".log", delete=False)  # noqa: SIM115
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    proc.log_path = log.name
    log.close()
    return proc
