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
from core4nb.job import (
    ADDED_FIELDS,
    ADDED_LEASE_FIELDS,
    LARGE_FIELDS,
    OPEN_STATES,
    SCALAR_FIELDS,
    Job,
    JobError,
    Lease,
    State,
)
from core4nb.options import below_range

#: The name listings show for a document that cannot be read as a job.
MALFORMED_NAME = "<malformed job>"
_STATE_VALUES = frozenset(str(s) for s in State)
_TYPES = {cls: {f.name: f.type for f in dataclasses.fields(cls)} for cls in (Job, Lease, JobError)}


@functools.cache  # a handful of annotations, read for every field of every claimed job
def _kinds(annotation: str) -> frozenset[str]:
    return frozenset(kind.strip() for kind in annotation.split("|"))


#: The Python types of a stored value that fit an annotation's kind outright, by type alone (an int fits
#: "float": SQLite and nx hand back integral floats as ints) ...
_PLAIN_TYPES = {"None": (type(None),), "bool": (bool,), "int": (int,), "float": (float, int), "str": (str,),
                "bytes": (bytes,)}
#: ... and those that fit by type and value: flags come back from SQLite and nx as 0/1, states as text.
_VALUES = {"bool": (int, frozenset({0, 1})), "State": (str, _STATE_VALUES)}


_Rule = tuple[frozenset[type], dict[type, frozenset], Any]


@functools.cache
def _rule(annotation: str) -> _Rule:
    """(the types that fit ``annotation`` outright, {type: the values of it that fit}, the conversion of a
    fitting value or None): every field of every job read back is decoded, so the common case is a lookup
    or two."""
    kinds = _kinds(annotation)
    plain = frozenset(t for kind in kinds for t in _PLAIN_TYPES.get(kind, ()))
    by_value = dict(_VALUES[kind] for kind in kinds if kind in _VALUES)
    convert = float if annotation.startswith("float") else bool if annotation == "bool" else None
    return plain, by_value, convert


def _fits(value: Any, annotation: str) -> bool:
    """Does a stored value fit a field annotated ``annotation`` (e.g. ``"float | None"``)?"""
    plain, by_value, _ = _rule(annotation)
    kind = type(value)
    if kind in plain or value in by_value.get(kind, ()):
        return True
    # A subclass (an IntEnum, a numpy float64) fits as its built-in base; a bool is no int here (nor a priority).
    base = next((b for b in (bool, int, float, str, bytes) if isinstance(value, b)), kind)
    return base is not kind and (base in plain or value in by_value.get(base, ()))


def _convert(value: Any, annotation: str) -> Any:
    convert = _rule(annotation)[2]
    return value if value is None or convert is None else convert(value)


def _describe(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:39] + '…'}"


@functools.cache
def _plan(cls: type, names: tuple[str, ...]) -> tuple[tuple[str, str, *_Rule], ...]:
    """(name, annotation, *its rule) for the fields ``names`` of ``cls``: worked out once per set of names."""
    return tuple((name, _TYPES[cls][name], *_rule(_TYPES[cls][name])) for name in names)


def _checked(cls: type, data: Mapping[str, Any], names: tuple[str, ...], prefix: str = "",
             label: str = "") -> dict[str, Any]:
    """The fields ``names`` of ``cls`` read from ``data[prefix + name]``; messages call them ``label + name``."""
    out = {}
    for name, annotation, plain, by_value, convert in _plan(cls, names):
        try:
            value = data[prefix + name]
        except KeyError:
            raise MalformedJob(f"field {label + name!r} is missing") from None
        kind = type(value)  # the common case inline (decoding runs for every job read): _fits decides the rest
        if kind not in plain and value not in by_value.get(kind, ()) and not _fits(value, annotation):
            raise MalformedJob(f"field {label + name!r} is {_describe(value)}, expected {annotation}")
        out[name] = value if value is None or convert is None else convert(value)
    return out


#: The fields a document may lack: added after 0.1 (they take their defaults), or large ones not loaded.
_OPTIONAL = ADDED_FIELDS | frozenset(LARGE_FIELDS)


@functools.cache
def _job_names(present: frozenset[str]) -> tuple[str, ...]:
    """The fields to read of a document holding the optional fields ``present``."""
    return (*(name for name in SCALAR_FIELDS if name in present or name not in ADDED_FIELDS),
            *(large for large in LARGE_FIELDS if large in present))


def decode_job(data: Mapping[str, Any]) -> Job:
    """Build a job from a store's flat fields, checking every one first.

    ``data`` holds :data:`SCALAR_FIELDS`, the lease as ``lease_worker`` … ``lease_until``
    (no lease when ``lease_token`` is None), ``error`` as a mapping or None, and
    ``payload``/``result``/``output`` when they were loaded.

    Raises:
        MalformedJob: naming the first field that is missing or of the wrong type.
    """
    # A field added after 0.1 that the document lacks takes its default (older versions never wrote it).
    fields = _checked(Job, data, _job_names(frozenset(data.keys() & _OPTIONAL)))
    low = below_range(fields)  # right type, out of range (attempts=0): the options' own rules say so
    if low is not None:
        raise MalformedJob(f"field {low.partition('=')[0]!r} is out of range: {low}")
    if data.get("lease_token") is not None:
        fields["lease"] = decode_lease(data)
    error = data.get("error")
    if error is not None:
        if not isinstance(error, Mapping) or set(error) - set(_TYPES[JobError]):
            raise MalformedJob(f"field 'error' is {_describe(error)}, expected an object with the keys "
                               f"{', '.join(_TYPES[JobError])}")
        fields["error"] = JobError(**_checked(JobError, error, tuple(_TYPES[JobError]), label="error."))
    return Job(**fields)


def decode_lease(data: Mapping[str, Any]) -> Lease:
    """The lease in a store's flat ``lease_*`` fields; raises MalformedJob naming a bad one."""
    names = tuple(n for n in _TYPES[Lease] if data.get(f"lease_{n}") is not None or n not in ADDED_LEASE_FIELDS)
    return Lease(**_checked(Lease, data, names, prefix="lease_", label="lease_"))


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
