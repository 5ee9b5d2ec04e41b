"""The job document and its state machine. Pure: no I/O, no clock except defaults.

States and transitions are core4os's (see DESIGN.md §3)::

    pending ──► running ──► complete | error | killed        (final)
       │          │  ├────► deferred ──► running | inactive | killed
       │          │  ├────► failed   ──► running | killed
       │          │  └────► pending  (released: node drained, slot not granted)
       └► killed  └──────► inactive   (deferred past defer_max)

Every store write names the state it expects to find, and every write that
leaves ``running`` names the lease token, so a node that lost its lease cannot
overwrite the work of the node that took the job over (fencing).
"""

from __future__ import annotations

import dataclasses
import enum
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from core4nb.errors import IllegalTransition, MalformedJob


class State(enum.StrEnum):
    """The eight states of a job."""

    PENDING = "pending"
    RUNNING = "running"
    DEFERRED = "deferred"
    FAILED = "failed"
    COMPLETE = "complete"
    ERROR = "error"
    INACTIVE = "inactive"
    KILLED = "killed"

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATES

    @property
    def is_claimable(self) -> bool:
        return self in CLAIMABLE_STATES


FINAL_STATES = frozenset({State.COMPLETE, State.ERROR, State.INACTIVE, State.KILLED})
CLAIMABLE_STATES = frozenset({State.PENDING, State.DEFERRED, State.FAILED})
#: States in which a job still has work ahead of it.
OPEN_STATES = frozenset(State) - FINAL_STATES

TRANSITIONS: dict[State, frozenset[State]] = {
    State.PENDING: frozenset({State.RUNNING, State.KILLED}),
    State.RUNNING: frozenset(
        {
            State.COMPLETE,
            State.DEFERRED,
            State.FAILED,
            State.ERROR,
            State.KILLED,
            State.INACTIVE,
            State.PENDING,
        }
    ),
    State.DEFERRED: frozenset({State.RUNNING, State.INACTIVE, State.KILLED}),
    State.FAILED: frozenset({State.RUNNING, State.KILLED}),
    State.COMPLETE: frozenset(),
    State.ERROR: frozenset(),
    State.INACTIVE: frozenset(),
    State.KILLED: frozenset(),
}


def check_transition(current: State | str, new: State | str) -> None:
    """Raise :class:`IllegalTransition` unless ``current → new`` is in the table."""
    current, new = State(current), State(new)
    if new not in TRANSITIONS[current]:
        allowed = ", ".join(sorted(TRANSITIONS[current])) or "nothing (final state)"
        raise IllegalTransition(f"a {current} job cannot become {new}; allowed: {allowed}")


def new_job_id() -> str:
    """A 24-hex-digit id that sorts by creation time (microseconds), like an ObjectId."""
    return f"{time.time_ns() // 1000:014x}{secrets.token_hex(5)}"


def new_token() -> str:
    """A lease token: proof that the holder's claim is the current one."""
    return secrets.token_hex(8)


@dataclass
class Lease:
    """Who runs a job and until when the claim holds without a heartbeat."""

    worker: str
    node: str
    pid: int
    token: str
    until: float


@dataclass
class JobError:
    """The last error of a job, as plain text so any process can read it."""

    type: str
    message: str
    traceback: str = ""
    exit_code: int | None = None

    def summary(self) -> str:
        return f"{self.type}: {self.message}"


@dataclass
class Job:
    """One document of ``sys.queue``.

    Times are epoch seconds (floats): they compare and sort the same in SQLite,
    in MongoDB and in the wire-protocol test server.
    """

    name: str
    payload: bytes | None = None
    args_summary: str = ""
    id: str = field(default_factory=new_job_id)
    parent_id: str | None = None
    root_id: str = ""
    priority: int = 0
    max_parallel: int | None = None
    attempts: int = 1
    attempts_left: int = -1
    trial: int = 0
    defer_time: float = 1.0
    defer_max: float | None = None
    error_time: float = 1.0
    wall_time: float | None = None
    state: State = State.PENDING
    query_at: float = 0.0
    lease: Lease | None = None
    progress_value: float | None = None
    progress_message: str = ""
    enqueued_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    deferred_since: float | None = None
    runtime: float | None = None
    result: bytes | None = None
    error: JobError | None = None
    kill_requested: bool = False
    restarted_from: str | None = None

    def __post_init__(self) -> None:
        self.state = State(self.state)
        if not self.root_id:
            self.root_id = self.id
        if self.attempts < 1:
            raise ValueError(f"attempts must be >= 1, got {self.attempts}")
        if self.attempts_left < 0:
            self.attempts_left = self.attempts
        if self.max_parallel is not None and self.max_parallel < 1:
            raise ValueError(f"max_parallel must be >= 1 or None, got {self.max_parallel}")
        if not self.enqueued_at:
            self.enqueued_at = time.time()
        if not self.query_at:
            self.query_at = self.enqueued_at

    @property
    def is_final(self) -> bool:
        return self.state.is_final

    def to_dict(self) -> dict[str, Any]:
        """Plain-data view (blobs left out) for JSON output and widgets."""
        data = dataclasses.asdict(self)
        data.pop("payload")
        data.pop("result")
        data["state"] = str(self.state)
        return data


# Fields a store copies to/from its rows; blobs and nested objects are handled apart.
SCALAR_FIELDS = tuple(
    f.name
    for f in dataclasses.fields(Job)
    if f.name not in {"payload", "result", "lease", "error"}
)


# -- reading documents back ---------------------------------------------------------------------
# A store hands back whatever the database holds. A document written by something else, by another
# version or by hand must become a MalformedJob that names the field -- never a TypeError deep in a
# worker node's loop. Both stores decode through decode_job, so they agree on what is malformed.

#: The name listings show for a document that cannot be read as a job.
MALFORMED_NAME = "<malformed job>"
_STATE_VALUES = frozenset(str(s) for s in State)
_TYPES = {cls: {f.name: f.type for f in dataclasses.fields(cls)} for cls in (Job, Lease, JobError)}


def _fits(value: Any, annotation: str) -> bool:
    """Does a stored value fit a field annotated ``annotation`` (e.g. ``"float | None"``)?"""
    kinds = {kind.strip() for kind in annotation.split("|")}
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


def decode_job(data: Mapping[str, Any]) -> Job:
    """Build a job from a store's flat fields, checking every one first.

    ``data`` holds :data:`SCALAR_FIELDS`, the lease as ``lease_worker`` … ``lease_until``
    (no lease when ``lease_token`` is None), ``error`` as a mapping or None, and
    ``payload``/``result`` when they were loaded.

    Raises:
        MalformedJob: naming the first field that is missing or of the wrong type.
    """
    fields = _checked(Job, data, [*SCALAR_FIELDS, *(blob for blob in ("payload", "result") if blob in data)])
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
