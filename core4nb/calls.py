"""A call as a signed job: ``make_job`` pickles and signs ``fn(*args, **kwargs)`` into a :class:`~core4nb.job.Job`,
and ``summarize_args`` says in a line what the call was given (for listings).

Every way of submitting work (``Queue.enqueue``, the executor's ``submit`` and
``map``, the joblib backend) builds its jobs here, so options, naming and
signing are decided once.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from typing import Any

from core4nb import keys, serialize
from core4nb.job import Job, new_job_id, safe_text
from core4nb.options import DEFAULTS


def describe(fn: Any) -> str:
    """The job name for a callable: module-qualified name, or its class's."""
    target = fn if hasattr(fn, "__qualname__") else type(fn)
    module = getattr(target, "__module__", None) or "?"
    return f"{module}.{target.__qualname__}"


def make_job(fn: Callable, args: tuple = (), kwargs: dict | None = None, *, name: str | None = None,
             parent: Job | None = None, key: bytes | None = None, job_id: str | None = None,
             memo: serialize.DigestMemo | None = None, options: Mapping[str, Any] | None = None) -> Job:
    """Build (not store) a signed job for ``fn(*args, **kwargs)``; its large buffers ride in ``job.blobs``.

    The job's options are ``fn.job_options()`` when ``fn`` provides it (the
    :class:`~core4nb.Core4Job` class attributes), else the defaults, with ``options`` on top.
    ``memo`` shares buffer digests between the jobs of one submission (a closure in every chunk
    is hashed once). Raises PayloadError naming the part that cannot be pickled, TypeError for
    an unknown option, ConfigError for a bad value — before anything is stored.
    """
    kwargs = kwargs or {}
    if not callable(fn):
        raise TypeError(f"{fn!r} is not callable: enqueue a function or a Core4Job class")
    base = fn.job_options() if hasattr(fn, "job_options") else DEFAULTS
    chosen = base.updated(options or {})
    job_id = job_id or new_job_id()
    key = keys.load_key() if key is None else key
    packed = serialize.dumps_call(fn, args, kwargs, key=key, job_id=job_id, memo=memo)
    tree = {"parent_id": parent.id, "root_id": parent.root_id} if parent else {}
    return Job(name=name or describe(fn), id=job_id, payload=packed.frame, blobs=packed.blobs,
               args_summary=safe_text(summarize_args(args, kwargs)), key_id=keys.key_id(key),
               **tree, **chosen.as_dict())


def summarize_args(args: tuple, kwargs: dict, limit: int = 120) -> str:
    """A short, human-readable text of a call's arguments for listings (the arguments past ``limit``
    characters are not looked at: a map's chunk of 10,000 items costs as much as one of ten)."""
    parts, size, cut = [], 0, False
    for name, value in itertools.chain(((None, a) for a in args), kwargs.items()):
        if size > limit:
            cut = True
            break
        parts.append(_short_repr(value) if name is None else f"{name}={_short_repr(value)}")
        size += len(parts[-1]) + 2
    text = ", ".join(parts)
    return text if len(text) <= limit and not cut else text[: limit - 1] + "…"


#: Built-in containers whose repr grows with their length: past SHORT_REPR items, their size is shown
#: without making the repr (a map chunk's list of 12,500 items made a 60 kB string to show 40 characters).
_SIZED = (list, tuple, dict, set, frozenset, str, bytes, bytearray)
SHORT_REPR = 40


def _short_repr(value: Any) -> str:
    if isinstance(value, serialize.Shared):
        return repr(value)
    if type(value) in _SIZED and len(value) > SHORT_REPR:
        return f"<{type(value).__qualname__} len={len(value)}>"
    try:
        text = repr(value)
    except Exception:
        text = f"<{type(value).__qualname__}>"
    if len(text) > SHORT_REPR:
        size = f" len={len(value)}" if hasattr(value, "__len__") else ""
        text = f"<{type(value).__qualname__}{size}>"
    return text
