"""The job document and its state machine. Pure: no I/O, no clock except defaults.

States and transitions are core4os's::

    pending ──► running ──► complete | error | killed        (final)
       │          │  ├────► deferred ──► running | killed
       │          │  ├────► failed   ──► running | killed
       │          │  └────► pending  (released: node drained, slot not granted)
       └► killed  └──────► inactive   (deferred again past defer_max)

    gathering ──► complete | error | killed   (a passive root: the store completes it with its children)

Every store write names the state it expects to find, and every write that
leaves ``running`` names the lease token, so a node that lost its lease cannot
overwrite the work of the node that took the job over (fencing). What each transition
expects and sets is decided in :mod:`core4nb.transitions`, once for every store.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from core4nb.errors import IllegalTransition
from core4nb.options import DEFAULT_LOST_RETRIES as DEFAULT_LOST_RETRIES  # the stores' column default
from core4nb.options import DEFAULTS


class State(enum.StrEnum):
    """The nine states of a job: core4os's eight, and ``gathering``."""

    PENDING = "pending"
    RUNNING = "running"
    DEFERRED = "deferred"
    FAILED = "failed"
    #: A tree's passive root (a map's): no node runs it; the store completes it in the write that
    #: finishes its last child, or fails it (killing the rest) in the write that fails one.
    GATHERING = "gathering"
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
#: Final without a result: such a child fails its tree's root.
UNSUCCESSFUL_STATES = FINAL_STATES - {State.COMPLETE}

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
    # Not deferred → inactive: defer_max is judged when a trial defers again (running → inactive), since a
    # waiting deferred job's next trial may still complete; nothing watches waiting jobs' clocks.
    State.DEFERRED: frozenset({State.RUNNING, State.KILLED}),
    State.FAILED: frozenset({State.RUNNING, State.KILLED}),
    State.GATHERING: frozenset({State.COMPLETE, State.ERROR, State.KILLED}),
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


def safe_text(text: str) -> str:
    """``text`` as every store can encode it: lone surrogates (undecodable bytes, e.g. from
    ``os.fsdecode``) become ``\\udcff`` escapes instead of failing the write that carries them."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def descendants(links: Iterable[tuple[str, str | None]], job_id: str) -> list[str]:
    """``job_id`` and every job below it, from a tree's ``(id, parent_id)`` pairs; each id once, so a
    hand-edited cycle (a job its own parent) ends the walk."""
    children = collections.defaultdict(list)
    for child, parent in links:
        children[parent].append(child)
    ids, stack = {job_id: None}, [job_id]
    while stack:
        for child in children[stack.pop()]:
            if child not in ids:
                ids[child] = None
                stack.append(child)
    return list(ids)


def new_job_id() -> str:
    """A 24-hex-digit id that sorts by creation time (microseconds), like an ObjectId."""
    return f"{time.time_ns() // 1000:014x}{secrets.token_hex(5)}"


def new_token() -> str:
    """A lease token: proof that the holder's claim is the current one."""
    return secrets.token_hex(8)


@dataclass
class Lease:
    """Who runs a job and until when the claim holds without a heartbeat.

    ``until`` is on the holder's clock; ``beat`` counts its heartbeats and ``period`` is its lease
    length, so another machine can tell a silent holder from a live one on its own monotonic clock
    (the same ``beat`` for longer than ``period``), whatever the two clocks say.
    """

    worker: str
    node: str
    pid: int
    token: str
    until: float
    beat: int = 0
    period: float = 30.0


@dataclass
class JobError:
    """The last error of a job, as plain text so any process can read it."""

    type: str
    message: str
    traceback: str = ""
    exit_code: int | None = None

    def summary(self) -> str:
        return f"{self.type}: {self.message}"

    @classmethod
    def child_failed(cls, child: Job) -> JobError:
        """What a parent records (or raises, as ChildFailed) when ``child`` ended without a result."""
        reason = child.error.summary() if child.error else child.progress_message or child.state
        return cls("ChildFailed", f"child job {child.id} ({child.name}) ended {child.state}: {reason}")


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
    priority: int = DEFAULTS.priority
    max_parallel: int | None = DEFAULTS.max_parallel
    attempts: int = DEFAULTS.attempts
    attempts_left: int = -1
    trial: int = 0
    defer_time: float = DEFAULTS.defer_time
    defer_max: float | None = DEFAULTS.defer_max
    error_time: float = DEFAULTS.error_time
    wall_time: float | None = DEFAULTS.wall_time
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
    #: Pinned: retention never prunes the tree this job is in (``keep=True`` on any of its jobs).
    keep: bool = DEFAULTS.keep
    #: What the job's last trial printed (stdout and stderr, the last OUTPUT_LIMIT characters).
    output: str = ""
    #: Reruns allowed after the node running the job died (a reaped lease); apart from ``attempts``,
    #: which counts the job's own exceptions.
    lost_retries: int = DEFAULTS.lost_retries
    lost_left: int = -1
    #: The workers that died (stopped heartbeating) under this job, "worker on node", comma-separated.
    lost_on: str = ""
    #: The :func:`~core4nb.keys.key_id` of the key that signed the payload ("": not known, any node may try).
    key_id: str = ""
    #: A passive root (a map's): inserted ``gathering``, it runs nothing and carries no payload; its
    #: result is its children's results, chained in id order (each child returns a list).
    gather: bool = False
    #: Not stored as a field: the payload's out-of-band buffers (digest → bytes) that ``insert`` stores
    #: as blobs before the job; empty on jobs read back from a store.
    blobs: dict[str, memoryview] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.state = State(self.state)
        if not self.root_id:
            self.root_id = self.id
        if self.attempts_left < 0:
            self.attempts_left = self.attempts
        if self.lost_left < 0:
            self.lost_left = self.lost_retries
        if not self.enqueued_at:
            self.enqueued_at = time.time()
        if not self.query_at:
            self.query_at = self.enqueued_at

    @property
    def is_final(self) -> bool:
        return self.state.is_final

    def to_dict(self) -> dict[str, Any]:
        """Plain-data view (blobs left out) for JSON output and widgets."""
        data = dataclasses.asdict(dataclasses.replace(self, payload=None, result=None, blobs={}))
        for large in (*LARGE_FIELDS, "blobs"):
            data.pop(large)
        data["state"] = str(self.state)
        return data


#: Fields read only when asked for (``blobs=True``): they may be large. ``output`` was added after
#: 0.1, so a document written before may lack it (it reads as "").
LARGE_FIELDS = ("payload", "result", "output")
#: Job output kept per job: the last this many characters of what its last trial printed.
OUTPUT_LIMIT = 64 * 1024

#: Fields added after 0.1: a document written before may lack them, and then reads as the field's default.
ADDED_FIELDS = frozenset({"output", "lost_retries", "lost_left", "lost_on", "key_id", "keep", "gather"})
#: Lease fields added after 0.1: a lease written before lacks them (or, in SQLite, has them NULL).
ADDED_LEASE_FIELDS = frozenset({"beat", "period"})

# Fields a store copies to/from its rows; large fields and nested objects are handled apart.
SCALAR_FIELDS = tuple(
    f.name
    for f in dataclasses.fields(Job)
    if f.name not in {*LARGE_FIELDS, "lease", "error", "blobs"}
)
