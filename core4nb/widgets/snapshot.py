"""One poll of a job tree: the data every progress view draws.

Data flow (split as in dask's ``diagnostics/progressbar.py``)::

    Poller thread ── take_snapshot(store, root_id) ──► TreeSnapshot ──► view.update(snapshot)
                     a handful of bounded store calls      (frozen)       TextProgress | TreePanel

Everything after :func:`take_snapshot` is a pure function of the snapshot, so
views never touch the store and tests can build snapshots by hand. The store
calls aggregate (``counts``) or are bounded (``limit=``), so a tree of 10,000
jobs costs the same few queries as a tree of ten.
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass

from core4nb.job import OPEN_STATES, UNSUCCESSFUL_STATES, Job, State
from core4nb.store.base import Store

#: At most this many failed/error jobs are listed (their tracebacks included).
MAX_FAILURES = 20
#: At most this many children of the root are looked at for nested subtrees.
MAX_SUBTREES = 12
#: At most this many running jobs are fetched to name the nodes working on the tree.
MAX_RUNNING = 256

#: States listed as failures: retrying (failed) and for good (error, inactive).
FAILURE_STATES = (State.FAILED, State.ERROR, State.INACTIVE)


def short_name(name: str) -> str:
    """``tests.jobfuncs.PrimeJob`` → ``PrimeJob``: ids and module paths make text noisy."""
    return name.rsplit(".", 1)[-1] or name


def job_title(job: Job, width: int = 60) -> str:
    """``name(args)`` of a job, the arguments cut to keep one line."""
    args = job.args_summary if len(job.args_summary) <= width else job.args_summary[: width - 1] + "…"
    return f"{short_name(job.name)}({args})"


def failure_reason(job: Job) -> str:
    """One line saying why a job failed (an inactive job has no error, only its message)."""
    if job.error is not None:
        return job.error.summary()
    return job.progress_message or str(job.state)


class _Tally:
    """``total`` and ``done`` of whatever ``counts`` (jobs per state) a view counts."""

    counts: dict[State, int]

    @property
    def total(self) -> int:
        """Jobs counted."""
        return sum(self.counts.values())

    @property
    def done(self) -> int:
        """Jobs counted that reached a final state (complete, error, inactive, killed)."""
        return sum(n for state, n in self.counts.items() if state.is_final)

    @property
    def completed(self) -> int:
        """Jobs counted that completed: what a bar fills with (a killed job did no work)."""
        return self.counts.get(State.COMPLETE, 0)


@dataclass(frozen=True)
class Subtree(_Tally):
    """A child of the root that has children of its own."""

    job: Job
    #: Its direct children per state (all eight keys).
    counts: dict[State, int]


@dataclass(frozen=True)
class TreeSnapshot(_Tally):
    """The state of one job tree at ``taken_at``.

    Progress counts the jobs below the root (the chunks); a root without
    descendants counts itself, so a single job still goes 0/1 → 1/1.
    """

    root: Job
    #: Jobs per state in the whole tree, the root included (all eight keys).
    tree_counts: dict[State, int]
    #: Number of direct children of the root.
    child_count: int
    subtrees: tuple[Subtree, ...]
    #: Up to MAX_FAILURES failed/error/inactive jobs, oldest first, with their errors.
    failures: tuple[Job, ...]
    #: Up to MAX_RUNNING running jobs (their leases name the nodes).
    running: tuple[Job, ...]
    taken_at: float

    @property
    def root_id(self) -> str:
        """The watched job's id."""
        return self.root.id

    @property
    def name(self) -> str:
        """The root job's short name (no module path)."""
        return short_name(self.root.name)

    @property
    def counts(self) -> dict[State, int]:
        """Jobs per state below the root, or the root alone when it has no descendants."""
        below = dict(self.tree_counts)
        below[self.root.state] = max(0, below[self.root.state] - 1)
        if not any(below.values()):
            return {state: int(state is self.root.state) for state in State}
        return below

    @property
    def fraction(self) -> float:
        """``completed / total`` in [0, 1]: a killed run's bar is as long as the work it did."""
        return self.completed / self.total if self.total else 0.0

    @property
    def open_count(self) -> int:
        """Jobs in the whole tree that still have work ahead of them."""
        return sum(self.tree_counts[state] for state in OPEN_STATES)

    @property
    def is_final(self) -> bool:
        """The root is final and nothing in the tree is left to run: polling can stop."""
        return self.root.is_final and self.open_count == 0

    @property
    def is_broken(self) -> bool:
        """Some job of the tree ended in error, inactive or killed (or the root is being killed).

        Not "failed": ``State.FAILED`` is a job that will be retried, which breaks nothing yet."""
        return self.root.kill_requested or any(self.tree_counts[state] for state in UNSUCCESSFUL_STATES)

    @property
    def is_killed(self) -> bool:
        """The root was killed or has a kill request."""
        return self.root.state is State.KILLED or self.root.kill_requested

    @property
    def status(self) -> str:
        """One word: pending, running, complete, broken (see :attr:`is_broken`) or killed."""
        if self.is_killed:
            return "killed"
        if self.is_broken:
            return "broken"
        if self.is_final:
            return "complete"
        busy = self.done or any(self.tree_counts[s] for s in (State.RUNNING, State.DEFERRED, State.FAILED))
        return "running" if busy else "pending"

    @property
    def elapsed(self) -> float:
        """Seconds from the root's enqueue to now (the snapshot), or to its finish once final."""
        end = self.root.finished_at if self.is_final and self.root.finished_at else self.taken_at
        return max(0.0, end - self.root.enqueued_at)

    @property
    def throughput(self) -> float:
        """Finished jobs per second, averaged over :attr:`elapsed`."""
        return self.done / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def eta(self) -> float | None:
        """Seconds until every job is done at the current throughput; None when unknown or final."""
        if self.is_final or self.throughput <= 0:
            return None
        return (self.total - self.done) / self.throughput

    @property
    def nodes(self) -> tuple[tuple[str, int], ...]:
        """``(worker name, jobs it runs)`` for the nodes working on the tree, by name."""
        per_worker = collections.Counter(job.lease.worker for job in self.running if job.lease is not None)
        return tuple(sorted(per_worker.items()))


def take_snapshot(store: Store, root_id: str) -> TreeSnapshot:
    """Poll the store once for the tree rooted at ``root_id``.

    At most five calls, plus one ``counts`` per nested subtree (≤ MAX_SUBTREES)
    when the root's children have children; calls whose answer the counts
    already know to be empty are skipped. A job that is not a root (a chunk of
    some bigger tree) is shown with its direct children only: the store keeps
    no index of deeper descendants.

    Raises:
        JobNotFound: no job has this id (never enqueued, or removed).
        StoreUnavailable: the queue cannot be reached.
    """
    root, tree_counts = _root_and_counts(store, root_id)
    is_root = root.root_id == root.id
    scope = {"root_id": root_id} if is_root else {"parent_id": root_id}
    below = sum(tree_counts.values()) - 1
    # Below a non-root job the counts already are its direct children.
    child_count = sum(store.counts(parent_id=root_id).values()) if is_root and below else below
    subtrees: list[Subtree] = []
    if below > child_count:  # grandchildren exist: some children are subtrees of their own
        for child in store.find(parent_id=root_id, limit=MAX_SUBTREES):
            counts = store.counts(parent_id=child.id)
            if any(counts.values()):
                subtrees.append(Subtree(child, counts))
    failures = (store.find(**scope, states=FAILURE_STATES, limit=MAX_FAILURES)
                if any(tree_counts[s] for s in FAILURE_STATES) else [])
    running = (store.find(**scope, states=[State.RUNNING], limit=MAX_RUNNING)
               if tree_counts[State.RUNNING] else [])
    return TreeSnapshot(root=root, tree_counts=tree_counts, child_count=child_count, subtrees=tuple(subtrees),
                        failures=tuple(failures), running=tuple(running), taken_at=time.time())


def _root_and_counts(store: Store, job_id: str) -> tuple[Job, dict[State, int]]:
    """The job and the counts of its tree (the job included), consistent with each other.

    They are two reads; the job may change state in between, and then the
    counts would not hold it in the state we subtract it from. Reading the job
    again until it agrees makes ``TreeSnapshot.counts`` exact.
    """
    root = store.get(job_id, blobs=False)
    tree_counts: dict[State, int] = {}
    for _ in range(3):
        if root.root_id == root.id:
            tree_counts = store.counts(root_id=job_id)
        else:  # a job inside a tree: itself and its direct children
            tree_counts = store.counts(parent_id=job_id)
            tree_counts[root.state] += 1
            return root, tree_counts
        if tree_counts[root.state] >= 1:
            return root, tree_counts
        root = store.get(job_id, blobs=False)
    return root, tree_counts  # still racing: TreeSnapshot.counts clamps at zero for this one tick
