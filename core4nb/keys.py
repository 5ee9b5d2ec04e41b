"""The cluster key: where it comes from, how it is checked, and its public name.

Whoever holds the key can run code on every worker node (frames are signed with it, see
:mod:`core4nb.serialize`), so it is made long and random, kept in a file only its user can read,
and named in public (jobs, ``status``) only by its key id.
"""

from __future__ import annotations

import functools
import hashlib
import os
import secrets
import stat
from pathlib import Path

from core4nb.errors import KeyFileError

KEY_ENV = "CORE4NB_KEY"
KEY_FILE_ENV = "CORE4NB_KEY_FILE"
DEFAULT_KEY_FILE = Path.home() / ".core4nb" / "key"


def key_file_path() -> Path:
    return Path(os.environ.get(KEY_FILE_ENV) or DEFAULT_KEY_FILE).expanduser()


def load_key(*, create: bool = True) -> bytes:
    """The cluster key: ``CORE4NB_KEY``, else the key file (created 0600 on first use, unless not ``create``:
    a worker of a shared queue must use the notebook's key, never a new one of its own)."""
    env_key = os.environ.get(KEY_ENV)
    if env_key:
        return _long_enough(env_key, f"${KEY_ENV}").encode()
    path = key_file_path()
    if path.is_symlink() and not path.exists():
        raise KeyFileError(f"key file {path} is a symbolic link to {os.readlink(path)}, which does not exist: "
                           f"fix the link, or remove it (a new key is then made), or set {KEY_ENV}")
    if not path.exists() and not create:
        raise KeyFileError(f"no cluster key: {KEY_ENV} is unset and key file {path} does not exist; copy the "
                           f"notebook machine's key file there (chmod 600) or set {KEY_ENV}")
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process created it first: use theirs
            pass
        else:
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_hex(32))
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(
            f"key file {path} is accessible by other users (mode {stat.S_IMODE(mode):o}); "
            f"anyone who reads it can run code on the cluster: run `chmod 600 {path}`"
        )
    key = path.read_text().strip()
    if not key:
        raise KeyFileError(f"key file {path} is empty: delete it to make a new one, or set {KEY_ENV}")
    return _long_enough(key, f"key file {path}").encode()


#: A shorter cluster key could be guessed, and whoever has it runs code on every worker.
MIN_KEY_LENGTH = 16


def _long_enough(key: str, where: str) -> str:
    if len(key) < MIN_KEY_LENGTH:
        raise KeyFileError(f"the cluster key in {where} has {len(key)} characters, fewer than {MIN_KEY_LENGTH}: "
                           "use a long random one, e.g. python -c 'import secrets; print(secrets.token_hex(32))'")
    return key


@functools.lru_cache(maxsize=16)  # every job submitted carries it: one hash per key, not per job
def key_id(key: bytes) -> str:
    """The key's public name: a fingerprint that tells keys apart without revealing them. Jobs carry it;
    a node claims only jobs of its own key id."""
    return hashlib.sha256(b"core4nb key id\0" + key).hexdigest()[:16]
