"""Code and data on the wire: cloudpickle bytes, signed with the cluster key.

The only module that imports cloudpickle. A frame is::

    b"C4NB" | u32 header length | header (JSON fingerprint) | HMAC-SHA256 | pickle

The MAC covers header and pickle. ``loads`` checks the MAC *before* it looks at
anything else, then the fingerprint, and only then unpickles: nothing unsigned
or signed with another key is ever unpickled.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import pickle
import secrets
import stat
import struct
import sys
from pathlib import Path
from typing import Any

import cloudpickle

from core4nb.errors import FingerprintMismatch, KeyFileError, PayloadError, SignatureError

MAGIC = b"C4NB"
_MAC_SIZE = 32
KEY_ENV = "CORE4NB_KEY"
KEY_FILE_ENV = "CORE4NB_KEY_FILE"
DEFAULT_KEY_FILE = Path.home() / ".core4nb" / "key"


def fingerprint() -> dict[str, str]:
    """What a payload needs of the process that loads it."""
    return {"python": f"{sys.version_info[0]}.{sys.version_info[1]}", "cloudpickle": cloudpickle.__version__}


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


def key_id(key: bytes) -> str:
    """The key's public name: a fingerprint that tells keys apart without revealing them. Jobs carry it;
    a node claims only jobs of its own key id."""
    return hashlib.sha256(b"core4nb key id\0" + key).hexdigest()[:16]


def _mac(key: bytes, header: bytes, body: bytes) -> bytes:
    return hmac.new(key, header + b"\0" + body, hashlib.sha256).digest()


def dumps(obj: Any, *, key: bytes | None = None, what: str = "object") -> bytes:
    """Pickle ``obj`` with cloudpickle and sign it.

    Raises:
        PayloadError: naming ``what`` when ``obj`` cannot be pickled.
    """
    try:
        body = cloudpickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        raise PayloadError(f"cannot serialize {what}: {type(exc).__name__}: {exc}") from exc
    header = json.dumps(fingerprint(), sort_keys=True).encode()
    key = load_key() if key is None else key
    return MAGIC + struct.pack(">I", len(header)) + header + _mac(key, header, body) + body


def loads(frame: bytes, *, key: bytes | None = None, what: str = "payload") -> Any:
    """Verify and unpickle a frame made by :func:`dumps`."""
    if not isinstance(frame, (bytes, bytearray, memoryview)) or bytes(frame[:4]) != MAGIC:
        raise SignatureError(f"{what} is not a signed core4nb frame; refusing to unpickle it")
    frame = bytes(frame)
    try:
        (size,) = struct.unpack(">I", frame[4:8])
    except struct.error:
        raise SignatureError(f"{what} is truncated; refusing to unpickle it") from None
    header = frame[8 : 8 + size]
    mac = frame[8 + size : 8 + size + _MAC_SIZE]
    body = frame[8 + size + _MAC_SIZE :]
    key = load_key() if key is None else key
    if not hmac.compare_digest(mac, _mac(key, header, body)):
        raise SignatureError(
            f"{what} signature does not match this process's cluster key: the job was "
            f"submitted with another key or its bytes were changed; give every notebook "
            f"and worker the same {KEY_ENV} (or key file)"
        )
    theirs, ours = json.loads(header), fingerprint()
    if theirs != ours:
        diffs = ", ".join(f"{k} {theirs.get(k)} here {ours.get(k)}" for k in ours if theirs.get(k) != ours.get(k))
        raise FingerprintMismatch(
            f"{what} was pickled with {diffs}; run notebook and workers on the same Python minor "
            f"version and cloudpickle version"
        )
    return pickle.loads(body)


def dumps_call(fn: Any, args: tuple, kwargs: dict, *, key: bytes | None = None) -> bytes:
    """Serialize a call; on failure name exactly which part could not be pickled."""
    try:
        return dumps((fn, args, kwargs), key=key, what="call")
    except PayloadError as exc:
        culprit = _find_unpicklable(fn, args, kwargs)
        raise PayloadError(f"cannot send {culprit} to a worker: {exc.__cause__}") from exc.__cause__


def _find_unpicklable(fn: Any, args: tuple, kwargs: dict) -> str:
    parts: list[tuple[str, Any]] = [(f"function {_describe(fn)}", fn)]
    parts += [(f"argument {i} ({_describe(a)})", a) for i, a in enumerate(args)]
    parts += [(f"keyword argument {k!r} ({_describe(v)})", v) for k, v in kwargs.items()]
    for label, part in parts:
        try:
            cloudpickle.dumps(part)
        except Exception:
            return label
    return f"the call to {_describe(fn)}"


def _describe(obj: Any) -> str:
    name = getattr(obj, "__qualname__", None)
    return name if isinstance(name, str) else f"a {type(obj).__qualname__}"


def summarize_args(args: tuple, kwargs: dict, limit: int = 120) -> str:
    """A short, human-readable text of a call's arguments for listings."""
    parts = [_short_repr(a) for a in args] + [f"{k}={_short_repr(v)}" for k, v in kwargs.items()]
    text = ", ".join(parts)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _short_repr(value: Any) -> str:
    try:
        text = repr(value)
    except Exception:
        text = f"<{type(value).__qualname__}>"
    if len(text) > 40:
        size = f" len={len(value)}" if hasattr(value, "__len__") else ""
        text = f"<{type(value).__qualname__}{size}>"
    return text
