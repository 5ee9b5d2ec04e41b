"""A call as a signed job: ``make_job`` pickles and signs ``fn(*args, **kwargs)`` into a :class:`~core4nb.job.Job`.

Every way of submitting work (``Queue.enqueue``, the executor's ``submit`` and
``map``, the joblib backend) builds its jobs here, so options, naming and
signing are decided once.
"""

from __future__ import annotations

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
               args_summary=safe_text(serialize.summarize_args(args, kwargs)), key_id=keys.key_id(key),
               **tree, **chosen.as_dict())
