"""The narrow storage interface every backend implements.

Stores take and return :class:`~core4nb.job.Job` objects, never driver
documents. Every write that changes a job's state is conditional on the state
it expects (and, when leaving ``running``, on the lease token), so two
processes can never both win a transition. Both backends pass the one contract
suite in ``tests/test_store_contract.py``.

Documents are decoded by :func:`~core4nb.store.decode.decode_job`, so a document that
something else wrote (a missing or wrongly typed field) never breaks a read or
a node: reads return a placeholder (:func:`listed_job`), and ``claim`` and
``reap`` move such a document to error with a ``MalformedJob`` message naming
the field, without handing it to anyone.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from core4nb.errors import DuplicateJob, JobNotFound, MalformedJob
from core4nb.job import Job, Lease, State
from core4nb.store.decode import decode_job, placeholder_job
from core4nb.store.urls import redact_url

#: A claim grants this many seconds before the lease expires without a heartbeat.
DEFAULT_LEASE_SECONDS = 30.0


@dataclass
class WorkerInfo:
    """One document of ``sys.worker``: a worker node and what it is doing."""

    name: str
    host: str
    pid: int
    slots: int
    heartbeat: float = field(default_factory=time.time)
    started_at: float = field(default_factory=time.time)
    running: list[str] = field(default_factory=list)
    state: str = "running"  # running | draining | stopped
    key_id: str = ""  # of the node's cluster key: it claims only jobs signed with it
    python: str = ""  # the node's Python version: payloads pickled by another version may not load


@dataclass
class BlobSweep:
    """What a blob sweep removed (or, dry, would remove): how many blobs and their bytes."""

    count: int = 0
    size: int = 0


#: ``sweep_blobs`` default: an unreferenced blob younger than this may belong to a job being submitted
#: or finished right now (blobs are stored before the job that names them), so it is left alone.
DEFAULT_SWEEP_AGE = 3600.0


#: Finished trees are pruned this many seconds after their last job finished (a setting per queue).
DEFAULT_RETENTION = 7 * 86400.0


@dataclass
class PruneReport:
    """What a prune removed (or, dry, would remove): whole finished trees, their jobs and blobs."""

    roots: list[str] = field(default_factory=list)
    jobs: int = 0
    blobs: BlobSweep = field(default_factory=BlobSweep)
    freed: int = 0  # bytes the store's files shrank by (SQLite), or the blobs' bytes (MongoDB)


@dataclass
class StoreUsage:
    """How much the queue holds: bytes on disk (or in the database) and finished trees awaiting retention."""

    size: int
    finished_trees: int


@dataclass
class Claimant:
    """Who asks for a job: the worker node's name, host and process id, and the key id of its
    cluster key (a claim takes only jobs of that key id, or of none; None: any job)."""

    worker: str
    node: str
    pid: int
    key_id: str | None = None


class Store(abc.ABC):
    """The queue's storage. Thread-safe; open one per process (never share across fork)."""

    url: str
    #: The queue's blobs (the large buffers of payloads and results): ``put``, ``open``, ``delete``, ``listing``.
    blobs: Any
    #: A claim is work of the claiming process (a file on this machine), not a wait on a server.
    claims_locally: ClassVar[bool] = False

    # -- jobs ------------------------------------------------------------------
    @abc.abstractmethod
    def insert(self, jobs: Sequence[Job]) -> None:
        """Store new jobs (all or nothing)."""

    @abc.abstractmethod
    def get(self, job_id: str, *, blobs: bool = True) -> Job:
        """The job with this id (a placeholder if malformed); raises :class:`~core4nb.errors.JobNotFound`."""

    @abc.abstractmethod
    def find(
        self,
        *,
        ids: Iterable[str] | None = None,
        states: Iterable[State] | None = None,
        root_id: str | None = None,
        parent_id: str | None = None,
        limit: int | None = None,
        blobs: bool = False,
    ) -> list[Job]:
        """Jobs matching every given filter, oldest first (placeholders for malformed documents).
        ``blobs`` loads payload/result."""

    @abc.abstractmethod
    def counts(self, *, root_id: str | None = None, parent_id: str | None = None) -> dict[State, int]:
        """Number of jobs per state (all eight keys) in a tree, among a parent's
        children, or in the whole queue when neither is given."""

    @abc.abstractmethod
    def has_waiting(self, *, key_id: str | None = None, exclude: Iterable[str] = ()) -> bool:
        """Whether a claim could take some job now or once its ``query_at`` passes: a job in a
        claimable state, without a kill request, whose ``query_at`` is a number (what a burst
        node waits for; a malformed document no claim can match is not waited for); with
        ``key_id``, one a claimant of that key id could take; never one of ``exclude``."""

    @abc.abstractmethod
    def waiting_key_ids(self) -> set[str]:
        """The key ids of the jobs in a claimable state ("" for jobs that carry none)."""

    @abc.abstractmethod
    def claim(self, claimant: Claimant, *, lease_seconds: float = DEFAULT_LEASE_SECONDS,
              rung: bool = False) -> Job | None:
        """Atomically take the best claimable job, or None.

        Claimable: state pending/deferred/failed, ``query_at <= now``, no kill
        request, and fewer than ``max_parallel`` jobs of the same name running
        (a hard cluster-wide limit). Best: highest priority, then oldest id.
        The job comes back ``running`` with a fresh lease, ``trial`` + 1 and its
        payload loaded. A malformed document the claim takes is moved to error
        instead and the claim goes on to the next.

        ``rung``: the caller was woken by the store's "work" bell, so work was just added. A store may
        then write at once instead of first reading whether anything is due (as an idle poll does);
        MongoDB does (one round trip less), SQLite always reads first (see its ``claim``).
        """

    def claim_many(self, claimant: Claimant, n: int, *, lease_seconds: float = DEFAULT_LEASE_SECONDS,
                   rung: bool = False) -> list[Job]:
        """Up to ``n`` jobs, each taken as :meth:`claim` takes one (best first), until a claim finds none:
        what a node with ``n`` free slots asks. ``rung`` as for :meth:`claim`, for the first of them."""
        jobs: list[Job] = []
        while len(jobs) < n:
            job = self.claim(claimant, lease_seconds=lease_seconds, rung=rung and not jobs)
            if job is None:
                break
            jobs.append(job)
        return jobs

    def finish(self, job_id: str, token: str, state: State, **fields: Any) -> bool:
        """Move a running job held under ``token`` to ``state``, setting ``fields``
        (result, error, runtime, query_at, attempts_left, progress…).

        Returns False (and changes nothing) when the lease no longer holds.
        Raises IllegalTransition when ``running → state`` is not allowed and
        TypeError for a field a job does not have.
        """
        return self._finish(job_id, token, state, None, DEFAULT_LEASE_SECONDS, fields)[0]

    def finish_and_claim(self, job_id: str, token: str, state: State, claimant: Claimant, *,
                         lease_seconds: float = DEFAULT_LEASE_SECONDS, **fields: Any) -> tuple[bool, Job | None]:
        """:meth:`finish`, then :meth:`claim` for ``claimant``: what a node does when a job ends and
        its slot is free. Returns (finished, claimed job or None; None too when the store failed after
        recording the outcome, in the claim: the node claims again on its next step)."""
        return self._finish(job_id, token, state, claimant, lease_seconds, fields)

    @abc.abstractmethod
    def _finish(self, job_id: str, token: str, state: State, claimant: Claimant | None, lease_seconds: float,
                fields: dict[str, Any]) -> tuple[bool, Job | None]:
        """:meth:`finish`, and with a ``claimant`` the claim of its next job, in whatever order and
        grouping the store does best (SQLite: one transaction, one write lock per job instead of two;
        MongoDB: the claim before the gathering parent's check)."""

    @abc.abstractmethod
    def heartbeat(self, leases: dict[str, str], *, lease_seconds: float = DEFAULT_LEASE_SECONDS) -> set[str]:
        """Extend the leases ``{job_id: token}``; return the ids whose lease is lost."""

    @abc.abstractmethod
    def set_progress(self, job_id: str, token: str, value: float | None, message: str) -> bool:
        """Record a running job's progress (0..1 or None) and message."""

    @abc.abstractmethod
    def append_output(self, job_id: str, token: str, text: str, *, first: bool = False) -> bool:
        """Add what a running job held under ``token`` printed to its ``output``, keeping the last
        :data:`~core4nb.job.OUTPUT_LIMIT` characters; ``first``: the trial's first batch replaces the
        previous trial's output. False (nothing written) when the lease no longer holds."""

    @abc.abstractmethod
    def outputs(self, job_ids: Iterable[str]) -> dict[str, str]:
        """The ``output`` of these jobs as stored now (while they run: what they printed so far), by id."""

    @abc.abstractmethod
    def leases(self) -> dict[str, Lease]:
        """The lease of every running job, by job id (what a reaper watches)."""

    @abc.abstractmethod
    def reap(self, *, host: str | None = None, silent: Mapping[str, Lease] | None = None) -> list[Job]:
        """Turn running jobs whose holder is gone into failed (a ``WorkerLost`` error; one of the job's
        ``lost_retries`` spent, never an attempt) or error when none is left; return them.

        Gone: a job of ``silent`` still running under that lease's token and heartbeat count (the
        caller saw it unchanged for longer than its period, on its own clock); or a lease whose
        ``until`` passed on this machine's clock, taken only from holders on ``host`` (the same
        clock; None: any holder)."""

    @abc.abstractmethod
    def request_kill(self, job_id: str, *, tree: bool = True) -> int:
        """Flag every open job with a kill request, and kill the waiting (pending/deferred/failed) ones
        at once (:func:`~core4nb.transitions.flag_kill`, then :func:`~core4nb.transitions.kill_waiting`);
        a running one's node kills it. With ``tree``, the job's whole subtree. Returns how many jobs
        were killed or flagged. Raises JobNotFound for an unknown id.

        A flagged job is never claimed again, so when it leaves ``running`` for
        pending, deferred or failed (``finish`` or ``reap``) it becomes killed instead. A gathering
        job is killed at once too; a gathering parent of the job is settled (see ``settle_roots``)."""

    @abc.abstractmethod
    def settle_roots(self) -> int:
        """Settle every gathering root (:func:`~core4nb.transitions.gather`); returns how many moved.

        Each write that ends a child (``finish``, ``reap``, ``request_kill``) and the ``insert`` of
        a root settles that root already: on SQLite in the same transaction, on MongoDB in the next
        write. This sweep, run by node housekeeping, repairs a root whose writer died in between."""

    @abc.abstractmethod
    def sweep_blobs(self, older_than: float = DEFAULT_SWEEP_AGE, *, dry_run: bool = False) -> BlobSweep:
        """Delete blobs no job refers to that were stored more than ``older_than`` seconds ago.
        A blob a job refers to -- pending, running or finished -- is never deleted; ``remove``
        deletes the blobs of the jobs it removes that no other job refers to."""

    @abc.abstractmethod
    def prune(self, older_than: float, *, dry_run: bool = False) -> PruneReport:
        """Remove every tree all of whose jobs are final, none pinned (``keep``), and whose last job
        finished more than ``older_than`` seconds ago, with its blobs; give the space back. Open
        trees are never touched. A pruned root is remembered, so ``get`` can say when it went."""

    @abc.abstractmethod
    def usage(self, older_than: float) -> StoreUsage:
        """Bytes the queue takes, and finished unpinned trees not yet ``older_than`` seconds old."""

    @abc.abstractmethod
    def get_setting(self, name: str) -> str | None:
        """A queue-wide setting (``retention``), or None when not set."""

    @abc.abstractmethod
    def set_setting(self, name: str, value: str) -> None:
        """Store a queue-wide setting for every process of the queue."""

    @abc.abstractmethod
    def housekeeping_turn(self, worker: str, interval: float) -> bool:
        """True for the one caller that may do housekeeping now: none did it in the last ``interval`` s."""

    def retention(self) -> float:
        """Seconds a finished tree is kept (``inf``: never pruned by housekeeping)."""
        value = self.get_setting("retention")
        try:
            return DEFAULT_RETENTION if value is None else float(value)
        except ValueError:
            return DEFAULT_RETENTION

    @abc.abstractmethod
    def kill_requests(self, job_ids: Iterable[str]) -> set[str]:
        """Which of these (running) jobs have a kill request."""

    @abc.abstractmethod
    def remove(self, job_id: str) -> int:
        """Delete a job and its subtree; returns how many were deleted.
        Raises JobNotFound for an unknown id."""

    # -- worker nodes -------------------------------------------------------------
    @abc.abstractmethod
    def save_worker(self, info: WorkerInfo) -> None:
        """Insert or replace a node's document (keyed by name)."""

    @abc.abstractmethod
    def workers(self) -> list[WorkerInfo]:
        """Every known node, by name."""

    @abc.abstractmethod
    def remove_worker(self, name: str) -> None:
        """Forget a node (after it stopped)."""

    def listen(self, role: str):
        """A doorbell (``fileno()``, ``wait(timeout)``, ``drain()``, ``close()``) rung when
        jobs may have become claimable (``role="work"``) or finished (``"done"``), or None
        when this backend cannot ring and listeners must poll. A bell whose
        ``hears_everyone`` is False hears this machine's writers only: poll as well."""
        return None

    @abc.abstractmethod
    def close(self) -> None:
        """Release connections; the store is unusable afterwards."""

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def not_found(job_id: str, url: str, pruned: tuple[float, float | None] | None) -> JobNotFound:
    """The error for an id a store does not have; for a pruned tree, when it went and why."""
    if pruned is None:
        return JobNotFound(f"no job with id {job_id} in queue {redact_url(url)}; list jobs with `core4nb jobs`")
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(pruned[0]))
    done = f", {(pruned[0] - pruned[1]) / 86400:.1f} days after it finished" if pruned[1] else ""
    return JobNotFound(f"job {job_id} was pruned from queue {redact_url(url)} on {when}{done}: finished trees are "
                       "kept for the queue's retention (`core4nb retention`); pin one with keep=True")


def duplicate_job(jobs: Sequence[Job], url: str) -> DuplicateJob:
    """The error for an ``insert`` whose batch repeats a job id, or names one the queue has."""
    ids = [j.id for j in jobs]
    return DuplicateJob(f"a job id among {ids[:5]}{'…' if len(ids) > 5 else ''} is already in queue "
                        f"{redact_url(url)} (or repeated); nothing was inserted: give each job a fresh id")


_WORKER_TYPES: dict[str, Any] = {"name": str, "host": str, "pid": int, "slots": int, "heartbeat": (int, float),
                                 "started_at": (int, float), "running": list, "state": str, "key_id": str,
                                 "python": str}
_WORKER_REQUIRED = ("name", "host", "pid", "slots")


def decode_worker(data: Any, name: Any) -> WorkerInfo:
    """A ``sys.worker`` document as a :class:`WorkerInfo`; one written by something else (a missing or
    mistyped field, not an object) becomes a placeholder whose state says ``malformed: …``, so that
    ``status`` and an executor's slot count never fail on it (a placeholder never counts as running)."""
    problem = None
    if not isinstance(data, Mapping):
        problem = f"the document is {type(data).__name__}, not an object"
    else:
        for key in (*_WORKER_REQUIRED, *(k for k in _WORKER_TYPES if k in data)):
            value = data.get(key)
            if key not in data:
                problem = f"field {key!r} is missing"
            elif isinstance(value, bool) or not isinstance(value, _WORKER_TYPES[key]):
                problem = f"field {key!r} is {type(value).__name__} {value!r:.40}"
            if problem:
                break
        else:
            if all(isinstance(job_id, str) for job_id in data.get("running", [])):
                return WorkerInfo(**{k: data[k] for k in _WORKER_TYPES if k in data})
            problem = "field 'running' is not a list of job ids"
    return WorkerInfo(name=str(name), host="?", pid=0, slots=0, heartbeat=0.0, started_at=0.0,
                      state=f"malformed: {problem}")


def lease_for(claimant: Claimant, token: str, lease_seconds: float, now: float) -> Lease:
    return Lease(claimant.worker, claimant.node, claimant.pid, token, now + lease_seconds, 0, lease_seconds)


def listed_job(data: dict[str, Any]) -> Job:
    """The job in a store's flat fields for a read (get, find): a malformed document shows as
    a placeholder (see :func:`~core4nb.store.decode.placeholder_job`) instead of failing the whole read."""
    try:
        return decode_job(data)
    except MalformedJob as exc:
        return placeholder_job(data, str(exc))


def count_states(pairs: Iterable[tuple[Any, int]]) -> dict[State, int]:
    """All nine states with the counts of ``(state, n)`` rows; a state no job can have
    (a malformed document) counts as error, as listings show such a document."""
    out = dict.fromkeys(State, 0)
    for state, n in pairs:
        out[State(state) if state in out else State.ERROR] += int(n)
    return out
