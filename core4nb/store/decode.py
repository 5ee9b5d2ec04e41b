"""Reading job documents back from a store: checked, field by field.

A store hands back whatever the database holds. A document written by something
else, by another version or by hand must become a :class:`MalformedJob` that
names the field -- never a TypeError deep in a worker node's loop. Both stores
decode through :func:`decode_job`, so they agree on what is malformed.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

from core4nb.errors import MalformedJob
from core4nb.job import LARGE_FIELDS, OPEN_STATES, SCALAR_FIELDS, Job, JobError, Lease, State

#: The name listings show for a document that cannot be read as a job.
MALFORMED_NAME = "<malformed job>"
_STATE_VALUES = frozenset(str(s) for s in State)
_TYPES = {cls: {f.name: f.type for f in dataclasses.fields(cls)} for cls in (Job, Lease, JobError)}


@functools.cache  # a handful of annotations, read for every field of every claimed job
def _kinds(annotation: str) -> frozenset[str]:
    return frozenset(kind.strip() for kind in annotation.split("|"))


def _fits(value: Any, annotation: str) -> bool:
    """Does a stored value fit a field annotated ``annotation`` (e.g. ``"float | None"``)?"""
    kinds = _kinds(annotation)
    if value is None:
        return "None" in kinds
    if isinstance(value, bool):  # before int: True is an int, but not a priority
        return "bool" in kinds
    if isinstance(value, int):  # SQLite and nx hand back flags as 0/1 and integral floats as ints
        return bool(kinds & {"int", "float"}) or ("bool" in kinds and value in (0, 1))
    if isinstance(value, float):
        return "float" in kinds
    if isinstance(value, str):
        return "str" in kinds or ("State" in kinds and value in _STATE_VALUES)
    return isinstance(value, bytes) and "bytes" in kinds


def _convert(value: Any, annotation: str) -> Any:
    if value is None:
        return None
    if annotation.startswith("float"):
        return float(value)
    return bool(value) if annotation == "bool" else value


def _describe(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:39] + '…'}"


def _checked(cls: type, data: Mapping[str, Any], names: Any, prefix: str = "", label: str = "") -> dict[str, Any]:
    """The fields ``names`` of ``cls`` read from ``data[prefix + name]``; messages call them ``label + name``."""
    out = {}
    for name in names:
        key, annotation, shown = prefix + name, _TYPES[cls][name], label + name
        if key not in data:
            raise MalformedJob(f"field {shown!r} is missing")
        if not _fits(data[key], annotation):
            raise MalformedJob(f"field {shown!r} is {_describe(data[key])}, expected {annotation}")
        out[name] = _convert(data[key], annotation)
    return out


#: Fields added after 0.1 with the value a document written before them means.
ADDED_LATER: dict[str, Any] = {"keep": False}


def decode_job(data: Mapping[str, Any]) -> Job:
    """Build a job from a store's flat fields, checking every one first.

    ``data`` holds :data:`SCALAR_FIELDS`, the lease as ``lease_worker`` … ``lease_until``
    (no lease when ``lease_token`` is None), ``error`` as a mapping or None, and
    ``payload``/``result``/``output`` when they were loaded.

    Raises:
        MalformedJob: naming the first field that is missing or of the wrong type.
    """
    data = {**ADDED_LATER, **data}  # a document written before a field existed reads as its default
    fields = _checked(Job, data, [*SCALAR_FIELDS, *(large for large in LARGE_FIELDS if large in data)])
    if data.get("lease_token") is not None:
        fields["lease"] = Lease(**_checked(Lease, data, _TYPES[Lease], prefix="lease_", label="lease_"))
    error = data.get("error")
    if error is not None:
        if not isinstance(error, Mapping) or set(error) - set(_TYPES[JobError]):
            raise MalformedJob(f"field 'error' is {_describe(error)}, expected an object with the keys "
                               f"{', '.join(_TYPES[JobError])}")
        fields["error"] = JobError(**_checked(JobError, error, _TYPES[JobError], label="error."))
    try:
        return Job(**fields)
    except ValueError as exc:  # right type, out of range; __post_init__'s messages start with the field's name
        raise MalformedJob(f"field {str(exc).split()[0]!r} is out of range: {exc}") from None


def placeholder_job(data: Mapping[str, Any], problem: str) -> Job:
    """What a listing shows for a malformed document, instead of failing on it.

    It keeps the document's id, tree and enqueue time where they are readable, and its
    state while that is an open one (a claim will set the document aside); a final or
    unreadable state shows as error, since its outcome cannot be trusted. Its error is
    a ``MalformedJob`` naming the problem.
    """
    keep = {name: _convert(data[name], _TYPES[Job][name]) for name in ("id", "root_id", "parent_id", "enqueued_at")
            if data.get(name) is not None and _fits(data[name], _TYPES[Job][name])}
    keep.setdefault("id", str(data.get("id")))
    state = data.get("state")
    keep["state"] = state if state in _STATE_VALUES and State(state) in OPEN_STATES else State.ERROR
    return Job(name=MALFORMED_NAME, error=JobError("MalformedJob", f"job document is malformed: {problem}"), **keep)


def set_aside_error(problem: str) -> JobError:
    """The error a store records when a claim finds a malformed document and moves it to error."""
    return JobError("MalformedJob", f"job document is malformed: {problem}; it was set aside without running "
                    "(written by something other than core4nb, or changed by hand): enqueue the work again")
