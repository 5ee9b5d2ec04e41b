"""Code and data on the wire: cloudpickle with protocol-5 out-of-band buffers, signed with the cluster key.

The only module that imports cloudpickle. A value becomes one small signed *frame* and, for its
large buffers (numpy arrays, pandas columns, bytes…), content-addressed *blobs*::

    frame  = b"C4N2" | u32 header length | header | HMAC-SHA256 | pickle
    header = JSON {"fp": fingerprint, "job": job id, "kind": call|result|exception,
                   "blobs": [[BLAKE3 of the bytes, size], …]}        (out-of-band buffers, in pickle order)

- The MAC covers every byte before it and the pickle after it: the length prefix too, so a frame
  cannot be re-split into another header and body; the digests, so a blob cannot be swapped; and the
  job id and kind, so a signed payload copied into another job, or a result moved into a payload,
  is refused.
- ``loads`` checks the MAC first, then the binding and the fingerprint, then fetches each blob
  from a :class:`BlobSource` (which checks its bytes against the digest), and only then unpickles.
  Nothing unsigned, re-bound or changed is ever unpickled.
- A buffer under :data:`BLOB_THRESHOLD` bytes stays inside the pickle; one that cannot be exported
  as contiguous memory too. A value used by many jobs (a broadcast global, a closure, the same
  argument in every chunk) has one digest, so a store keeps it once.
"""

from __future__ import annotations

import collections
import enum
import functools
import hashlib
import hmac
import importlib
import io
import json
import linecache
import os
import pickle
import struct
import sys
import types
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, ClassVar, Protocol

import cloudpickle

from core4nb import buffers, shipping
from core4nb.buffers import DigestMemo, blob_threshold, out_of_band_bytes
from core4nb.errors import (
    BlobMissing,
    EnvironmentMismatch,
    FingerprintMismatch,
    PayloadError,
    SignatureError,
    UnpicklableError,
)
from core4nb.keys import KEY_ENV, load_key

MAGIC = b"C4N2"
_PREFIX = struct.Struct(">4sI")
_MAC_SIZE = 32
_NO_BLOBS = b'"blobs": []'  # how dumps writes a frame's empty blob list


class Kind(enum.StrEnum):
    """What a frame holds: it is signed with it, so one kind cannot pass for another."""

    CALL = "call"
    RESULT = "result"
    EXCEPTION = "exception"


class BlobSource(Protocol):
    """Where ``loads`` finds blobs: the bytes of ``digest``, already checked against it, read-only."""

    def open(self, digest: str, size: int) -> memoryview: ...


@dataclass
class Packed:
    """A signed frame and the out-of-band buffers it names (digest → bytes), to be stored first."""

    frame: bytes
    blobs: dict[str, memoryview] = field(default_factory=dict)


@functools.cache  # read for every frame made and loaded; never changes in a process (do not mutate it)
def fingerprint() -> dict[str, str]:
    """What a payload needs of the process that loads it."""
    return {"python": f"{sys.version_info[0]}.{sys.version_info[1]}", "cloudpickle": cloudpickle.__version__}


_shared = weakref.WeakSet()  # the memos of live share() handles


class Shared:
    """A value stored once and passed to any number of jobs: they receive the value itself.

    Made by ``Core4Executor.share(value)``. Its buffers were hashed (and stored) when it was made,
    so passing the handle costs a lookup, not a hash or a copy. Jobs see the value as it was then.
    """

    def __init__(self, value: Any, store: Callable[[memoryview], str] | None = None) -> None:
        self.value = value
        self.memo = DigestMemo(store)  # with the store's put_hashing: stored while hashed
        self.packed = dumps(value, key=b"-", job_id="share", kind=Kind.RESULT, what="the shared value", memo=self.memo)
        _shared.add(self)

    def __reduce__(self) -> tuple:
        return _identity, (self.value,)

    def __repr__(self) -> str:
        size = sum(b.nbytes for b in self.packed.blobs.values())
        return f"<core4nb.Shared {type(self.value).__qualname__}: {len(self.packed.blobs)} blob(s), {size:,} bytes>"


def _identity(value: Any) -> Any:
    return value


def _header_digest(view: memoryview, memo: DigestMemo | None) -> str:
    for handle in list(_shared):
        found = handle.memo.known(view)
        if found is not None:
            return found
    return memo.digest_of(view) if memo is not None else buffers.digest(view)


#: Bodies up to this size are signed in one call, copied behind the signed part (cheaper than an HMAC
#: object for the small frames of most calls and results); larger ones are fed to one without a copy.
_ONE_SHOT_MAC = 64 * 1024


def _mac(key: bytes, signed: bytes, body: memoryview | bytes) -> bytes:
    if len(body) <= _ONE_SHOT_MAC:
        return hmac.digest(key, b"".join((signed, body)), "sha256")
    mac = hmac.new(key, signed, hashlib.sha256)
    mac.update(body)
    return mac.digest()


def dumps(obj: Any, *, key: bytes | None = None, job_id: str, kind: Kind, what: str = "object",
          memo: DigestMemo | None = None, threshold: int | None = None) -> Packed:
    """Pickle ``obj`` (large buffers out of band) into a frame signed for ``job_id`` and ``kind``.

    Raises:
        UnpicklableError: naming ``what`` when ``obj`` cannot be pickled (also a pickle.PicklingError).
    """
    threshold = blob_threshold() if threshold is None else threshold
    blobs: dict[str, memoryview] = {}
    listed: list[list] = []

    def out_of_band(buffer: pickle.PickleBuffer) -> bool:
        try:
            view = buffer.raw()
        except BufferError:  # not contiguous: it stays in the pickle
            return True
        if view.nbytes < threshold:
            return True
        name = _header_digest(view, memo)
        blobs.setdefault(name, view)
        listed.append([name, view.nbytes])
        return False

    value = out_of_band_bytes(obj, threshold, 3)
    if kind is Kind.CALL:  # code travels with calls; results come back by the modules the call brought
        for module in shipping.new_local_modules():
            try:
                cloudpickle.register_pickle_by_value(module)
            except ValueError:  # listed in sys.modules under another name than its own: leave it by reference
                continue
            _auto_shipped.add(module.__name__)
    try:
        body = _pickle(value, out_of_band)
    except PayloadError:
        raise
    except Exception as exc:
        raise UnpicklableError(f"cannot serialize {what}: {type(exc).__name__}: {exc}") from exc
    env = shipping.referenced_versions(body) if kind is Kind.CALL else None
    header = _header(job_id, kind, listed, env)
    signed = _PREFIX.pack(MAGIC, len(header)) + header
    key = load_key() if key is None else key
    return Packed(signed + _mac(key, signed, body) + body, blobs)


def _header(job_id: str, kind: Kind, listed: list[list], env: dict[str, str] | None) -> bytes:
    """``json.dumps({"blobs", "env" (calls only), "fp", "job", "kind"}, sort_keys=True)``, written out: every
    job, result and exception makes one, and the general encoder took a quarter of a small call's dumps."""
    parts = [f'{{"blobs": {json.dumps(listed) if listed else "[]"}']
    if env is not None:
        parts.append(f'"env": {json.dumps(env, sort_keys=True) if env else "{}"}')
    parts.append(f'"fp": {_fingerprint_json()}, "job": {json.dumps(job_id)}, "kind": "{kind}"}}')
    return ", ".join(parts).encode()


@functools.cache
def _fingerprint_json() -> str:
    return json.dumps(fingerprint(), sort_keys=True)


_auto_shipped: set[str] = set()  # local modules registered by value automatically (not by ship())


def _code_keeping_its_file(code: types.CodeType) -> tuple:
    """cloudpickle's reduction of a by-value function's code, but with its real file name and its source
    lines: cloudpickle writes ``<dynamic-code>`` (for deterministic pickles, which nothing here needs),
    and a notebook cell's "file" exists only in its kernel's linecache, so a remote traceback would
    otherwise hide which of the user's lines raised."""
    return _code_reduction(code, code.co_filename)  # code objects compare equal across files


@functools.lru_cache(maxsize=1024)  # a code object never changes, and every submit of its function pickles it
def _code_reduction(code: types.CodeType, _filename: str) -> tuple:
    _, args = cloudpickle.cloudpickle._code_reduce(code)
    args = tuple(code.co_filename if arg == "<dynamic-code>" else arg for arg in args)
    return _code_with_source, (args, code.co_filename, _source_lines(code))


def _source_lines(code: types.CodeType) -> dict[int, str]:
    """The lines of ``code`` (from its first line to its last) as this process's linecache has them."""
    lines = linecache.getlines(code.co_filename)
    numbers = [number for _, _, number in code.co_lines() if number]
    if not lines or not numbers:
        return {}
    last = min(max(numbers), len(lines))
    return {number: lines[number - 1] for number in range(code.co_firstlineno, last + 1)}


_remote_sources: dict[str, dict[int, str]] = {}  # file → the lines payloads brought of it


def _code_with_source(args: tuple, filename: str, lines: dict[int, str]) -> types.CodeType:
    """Unpickling a by-value function's code: its lines go into linecache where its file is not here."""
    if lines and not os.path.exists(filename):
        known = _remote_sources.setdefault(filename, {})
        known.update(lines)
        text = [known.get(number, "\n") for number in range(1, max(known) + 1)]
        # mtime None: linecache.checkcache leaves the entry alone (there is no file to compare with)
        linecache.cache[filename] = (sum(map(len, text)), None, text, filename)
    return types.CodeType(*args)


class _Pickler(cloudpickle.Pickler):
    dispatch_table: ClassVar[collections.ChainMap] = collections.ChainMap(
        {types.CodeType: _code_keeping_its_file}, cloudpickle.Pickler.dispatch_table)


def _cloudpickle(value: Any, buffer_callback: Any) -> bytes:
    out = io.BytesIO()
    _Pickler(out, protocol=5, buffer_callback=buffer_callback).dump(value)
    return out.getvalue()


def _pickle(value: Any, buffer_callback: Any) -> bytes:
    """cloudpickle, with local modules by value; if that fails (a module holding a lock, a socket…),
    once more with them by reference, as before shipping existed (nodes that can import them run it)."""
    try:
        return _cloudpickle(value, buffer_callback)
    except PayloadError:  # a blob could not be stored (disk full): pickling by reference would not help
        raise
    except Exception:
        names = [name for name in sorted(_auto_shipped) if name in sys.modules]
        if not names:
            raise
    for name in names:
        cloudpickle.unregister_pickle_by_value(sys.modules[name])
    try:
        return _cloudpickle(value, buffer_callback)
    finally:
        for name in names:
            cloudpickle.register_pickle_by_value(sys.modules[name])


def ship(module: ModuleType | str) -> None:
    """Send ``module`` (a module or package, by object or name) with every job by value, even when it is
    installed here: for code that the worker nodes do not have. Local modules are shipped without asking."""
    module = importlib.import_module(module) if isinstance(module, str) else module
    cloudpickle.register_pickle_by_value(module)
    _auto_shipped.discard(module.__name__)


def _split(frame: bytes | memoryview, what: str) -> tuple[memoryview, dict, bytes, memoryview]:
    """(signed part, header, mac, body) of a frame, or SignatureError when it is not one."""
    view = memoryview(frame) if isinstance(frame, (bytes, bytearray, memoryview)) else None
    if view is None or view.nbytes < _PREFIX.size:
        raise SignatureError(f"{what} is not a signed core4nb frame; refusing to unpickle it")
    magic, size = _PREFIX.unpack_from(view)
    if magic != MAGIC:
        raise SignatureError(f"{what} is not a signed core4nb frame; refusing to unpickle it")
    end = _PREFIX.size + size
    if view.nbytes < end + _MAC_SIZE:
        raise SignatureError(f"{what} is truncated; refusing to unpickle it")
    try:  # text, not bytes: json.loads would first guess the encoding of bytes
        header = json.loads(str(view[_PREFIX.size : end], "utf-8"))
    except ValueError:
        header = None
    if not isinstance(header, dict):
        raise SignatureError(f"{what} has a damaged header; refusing to unpickle it")
    return view[:end], header, bytes(view[end : end + _MAC_SIZE]), view[end + _MAC_SIZE :]


def frame_digests(frame: bytes | memoryview | None) -> list[str]:
    """The blob digests a frame names, unverified: what a store must keep while the frame is kept."""
    if not frame:
        return []
    try:
        magic, size = _PREFIX.unpack_from(frame)
        header = bytes(memoryview(frame)[_PREFIX.size : _PREFIX.size + size])
    except (struct.error, TypeError):
        return []
    # Most frames name no blob: this one exact token (no escapes) says so without parsing the header.
    if magic == MAGIC and _NO_BLOBS in header and header.count(b'"blobs"') == 1 and b"\\" not in header:
        return []
    try:
        return sorted({str(name) for name, _ in _split(frame, "frame")[1].get("blobs", [])})
    except (SignatureError, TypeError, ValueError):
        return []  # not a frame of ours: it references nothing (loads will refuse it)


def _verified(frame: bytes | memoryview, key: bytes | None, what: str) -> tuple[dict, memoryview, bytes]:
    signed, header, mac, body = _split(frame, what)
    key = load_key() if key is None else key
    if not hmac.compare_digest(mac, _mac(key, signed, body)):
        raise SignatureError(
            f"{what} signature does not match this process's cluster key: the job was "
            f"submitted with another key or its bytes were changed; give every notebook "
            f"and worker the same {KEY_ENV} (or key file)"
        )
    return header, body, key


def loads(frame: bytes | memoryview, *, key: bytes | None = None, job_id: str, kinds: frozenset[Kind] | set[Kind],
          blobs: BlobSource | None = None, what: str = "payload") -> Any:
    """Verify a frame made by :func:`dumps` for ``job_id`` (one of ``kinds``), fetch its blobs, unpickle."""
    header, body, _ = _verified(frame, key, what)
    if header.get("job") != job_id or header.get("kind") not in kinds:
        raise SignatureError(
            f"{what} is signed for {header.get('kind')} of job {header.get('job')}, not for "
            f"{'/'.join(sorted(kinds))} of job {job_id}: it was copied from another job; refusing to unpickle it"
        )
    theirs, ours = header.get("fp"), fingerprint()
    if theirs != ours:
        theirs = theirs if isinstance(theirs, dict) else {}
        diffs = ", ".join(f"{k} {theirs.get(k)} here {ours.get(k)}" for k in ours if theirs.get(k) != ours.get(k))
        raise FingerprintMismatch(
            f"{what} was pickled with {diffs}; run notebook and workers on the same Python minor "
            f"version and cloudpickle version"
        )
    listed = header.get("blobs") or []
    if listed and blobs is None:
        raise PayloadError(f"{what} names {len(listed)} blob(s) but this reader has no blob store (a bug)")
    try:
        buffers = [blobs.open(name, size) for name, size in listed]
    except BlobMissing as exc:
        raise BlobMissing(f"{what}: {exc}") from None
    try:
        return pickle.loads(body, buffers=buffers)
    except Exception as exc:
        differences = shipping.environment_differences(header.get("env") or {})
        if not differences:
            raise
        raise EnvironmentMismatch(f"{what} cannot be loaded here ({type(exc).__name__}: {exc}): "
                                  f"{'; '.join(differences)}; install the notebook's versions on every node") from exc


def rebind(frame: bytes, *, key: bytes | None = None, job_id: str, what: str = "payload") -> bytes:
    """The same signed content bound to another job (``restart`` makes a new job of an old payload)."""
    header, body, key = _verified(frame, key, what)
    header = json.dumps({**header, "job": job_id}, sort_keys=True).encode()
    signed = _PREFIX.pack(MAGIC, len(header)) + header
    return signed + _mac(key, signed, body) + bytes(body)


def round_trips(obj: Any) -> bool:
    """Whether ``obj`` survives pickling and unpickling here (some exceptions pickle but cannot be rebuilt)."""
    try:
        pickle.loads(cloudpickle.dumps(obj, protocol=5))
        return True
    except Exception:
        return False


def dumps_call(fn: Any, args: tuple, kwargs: dict, *, key: bytes | None = None, job_id: str,
               memo: DigestMemo | None = None) -> Packed:
    """Serialize a call; on failure name exactly which part could not be pickled."""
    try:
        return dumps((fn, args, kwargs), key=key, job_id=job_id, kind=Kind.CALL, what="call", memo=memo)
    except PayloadError as exc:
        culprit = _find_unpicklable(fn, args, kwargs)
        raise UnpicklableError(f"cannot send {culprit} to a worker: {exc.__cause__}") from exc.__cause__


def _find_unpicklable(fn: Any, args: tuple, kwargs: dict) -> str:
    parts: list[tuple[str, Any]] = [(f"function {_describe(fn)}", fn)]
    parts += [(f"argument {i} ({_describe(a)})", a) for i, a in enumerate(args)]
    parts += [(f"keyword argument {k!r} ({_describe(v)})", v) for k, v in kwargs.items()]
    for label, part in parts:
        if not is_picklable(part):
            return label
    return f"the call to {_describe(fn)}"


def is_picklable(obj: Any) -> bool:
    """Whether cloudpickle can pickle ``obj`` (buffers are not copied to find out)."""
    try:
        cloudpickle.dumps(obj, protocol=5, buffer_callback=lambda _: False)
        return True
    except Exception:
        return False


def _describe(obj: Any) -> str:
    name = getattr(obj, "__qualname__", None)
    return name if isinstance(name, str) else f"a {type(obj).__qualname__}"
