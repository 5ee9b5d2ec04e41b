"""Private places on disk: core4nb's home directory and directories only this user owns.

Whoever can write a queue file, or the directory of a doorbell, can steer this user's
processes; so such directories are made 0700 and checked before they are trusted.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

HOME_ENV = "CORE4NB_HOME"


def home() -> Path:
    """Where the embedded default keeps its queue file (and, without ``$XDG_RUNTIME_DIR``, its doorbells)."""
    return Path(os.environ.get(HOME_ENV) or Path.home() / ".core4nb").expanduser()


def make_private_dirs(directory: Path) -> None:
    """Create ``directory`` and any missing parents, each 0700 whatever the umask.

    Raises:
        NotADirectoryError: a file is in the way.
        OSError: a directory cannot be created.
    """
    missing = [d for d in (directory, *directory.parents) if not d.exists()]
    existing = directory.parents[len(missing) - 1] if missing else directory
    if not existing.is_dir():
        raise NotADirectoryError(f"{existing} is not a directory")
    for made in reversed(missing):
        try:
            made.mkdir(mode=0o700)
        except FileExistsError:  # made meanwhile by another process: checked like any other
            continue
        made.chmod(0o700)


def is_private_dir(directory: Path) -> bool:
    """A real directory (not a symlink), owned by this user, that no one else may read, write or enter."""
    try:
        st = os.lstat(directory)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & 0o077
