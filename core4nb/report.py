"""Plain-text views of the queue shared by the ``core4nb`` CLI and the ``%core4`` line magic."""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import time

from core4nb.job import Job, State
from core4nb.queue import Queue
from core4nb.store import WorkerInfo, default_url, open_store, redact_url


def open_existing(url: str | None) -> Queue:
    """The queue at ``url`` (default: ``CORE4NB_URL`` or the embedded one), opened to be looked at:
    a missing queue is a StoreUnavailable error, never created (nor its directory)."""
    return Queue(store=open_store(url or default_url(), read_only=True))


def status_text(queue: Queue) -> str:
    """Nodes (name, host, slots, busy, heartbeat age, Python version, key id, state) and jobs per state."""
    nodes, counts, now = queue.store.workers(), queue.counts(), time.time()
    lines = [f"queue  {redact_url(queue.url)}", f"nodes  {len(nodes)}"]
    if nodes:
        lines.append(f"  {'NAME':<24} {'HOST':<16} {'SLOTS':>5} {'BUSY':>4}  {'HEARTBEAT':<12} {'PYTHON':<8} "
                     f"{'KEY ID':<16} STATE")
    for node in nodes:
        age = f"{now - node.heartbeat:.1f} s ago"
        busy, python, key_id = len(node.running), node.python or "?", node.key_id or "?"
        lines.append(f"  {cut(node.name, 24)} {cut(node.host, 16)} {node.slots:>5} {busy:>4}  {age:<12} "
                     f"{python:<8} {key_id:<16} {node.state}")
    lines.append("jobs   " + "  ".join(f"{state} {counts[state]}" for state in State))
    retention = queue.store.retention()
    usage = queue.store.usage(retention)
    kept = "kept for ever" if math.isinf(retention) else f"kept {retention / 86400:g} days"
    lines.append(f"store  {usage.size / 2**20:.1f} MB; {usage.finished_trees} finished tree(s) waiting ({kept})")
    waiting = queue.store.waiting_key_ids()
    for node in keyless_nodes(nodes, waiting):
        lines.append(f"warning: node {node.name} (key id {node.key_id}) can claim none of the waiting jobs (key "
                     f"ids {', '.join(sorted(waiting))}): give it the notebook's key ($CORE4NB_KEY or the key file)")
    return "\n".join(lines)


def keyless_nodes(nodes: list[WorkerInfo], waiting: set[str]) -> list[WorkerInfo]:
    """The nodes whose key id matches no waiting job (while jobs wait that no node of theirs can claim)."""
    if not waiting or "" in waiting:  # nothing waits, or some job any node may claim
        return []
    return [node for node in nodes if node.key_id not in waiting]


def status_json(queue: Queue) -> str:
    nodes = queue.store.workers()
    wrong_key = [n.name for n in keyless_nodes(nodes, queue.store.waiting_key_ids())]
    retention = queue.store.retention()
    usage = queue.store.usage(retention)
    store = {"size": usage.size, "finished_trees": usage.finished_trees,
             "retention_s": None if math.isinf(retention) else retention}
    return json.dumps({"url": redact_url(queue.url), "counts": {str(k): v for k, v in queue.counts().items()},
                       "nodes": [vars(n) for n in nodes], "nodes_with_no_waiting_job_of_their_key": wrong_key,
                       "store": store}, indent=2)


def cut(text: str, width: int) -> str:
    """``text`` in ``width`` columns: the start kept (what tells names apart), the rest ``…``."""
    return f"{text:<{width}}" if len(text) <= width else text[: width - 1] + "…"


#: Module prefixes that say nothing to the reader: ``builtins.abs`` is ``abs``, a cell's chunks ``cell_over_x``.
_QUIET_MODULES = ("builtins.", "core4nb.cells.", "__main__.")


def readable_name(name: str) -> str:
    """A job name without the module prefixes of :data:`_QUIET_MODULES` (``map:`` and the like kept)."""
    kind, sep, target = name.rpartition(":")
    for module in _QUIET_MODULES:
        if target.startswith(module):
            target = target[len(module):]
    return f"{kind}{sep}{target}"


def first_error(job: Job) -> str:
    """``Type: message``, first line only ("" for a job without an error)."""
    if job.error is None:
        return ""
    lines = job.error.summary().strip().splitlines()
    return lines[0] if lines else job.error.type


def jobs_text(jobs: list[Job]) -> str:
    lines = [f"{'ID':<24} {'STATE':<9} {'TRIAL':>5}  {'NAME':<28} {'ARGS':<36} ERROR"]
    lines += [f"{job.id:<24} {job.state:<9} {job.trial:>5}  {cut(readable_name(job.name), 28)} "
              f"{cut(job.args_summary, 36)} {cut(first_error(job), 60)}".rstrip() for job in jobs]
    return "\n".join(lines)


def age(seconds: float) -> str:
    """``42s``, ``5m``, ``3h``, ``2d``: how long ago, in the largest unit that fits."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size:.0f}{unit}"
    return f"{max(seconds, 0):.0f}s"


@dataclasses.dataclass
class Run:
    """One job tree as ``core4nb runs`` lists it."""

    root_id: str
    name: str
    enqueued_at: float
    counts: dict[str, int]  # the states that occur, in State order
    first_error: str  # of the job that failed first ("" when none did)


def runs(jobs: list[Job], limit: int) -> list[Run]:
    """The newest ``limit`` trees among ``jobs`` (oldest first), each with its jobs per state and first error."""
    trees: dict[str, list[Job]] = {}
    for job in jobs:
        trees.setdefault(job.root_id, []).append(job)
    out = []
    for root_id, members in trees.items():
        root = next((j for j in members if j.id == root_id), members[0])
        states = collections.Counter(j.state for j in members)
        # The chunk that failed, not the root that failed because of it (later, or in the same write).
        failed = min((j for j in members if j.error is not None), default=None,
                     key=lambda j: (j.finished_at or math.inf, j.id == root_id))
        out.append(Run(root_id, readable_name(root.name), root.enqueued_at,
                       {str(state): states[state] for state in State if states[state]},
                       first_error(failed) if failed else ""))
    out.sort(key=lambda run: run.enqueued_at)
    return out[-limit:]


def runs_text(trees: list[Run]) -> str:
    now = time.time()
    lines = [f"{'ROOT':<24} {'NAME':<28} {'AGE':>4}  {'JOBS':<34} FIRST ERROR"]
    for run in trees:
        counts = " ".join(f"{state} {count}" for state, count in run.counts.items())
        lines.append(f"{run.root_id:<24} {cut(run.name, 28)} {age(now - run.enqueued_at):>4}  {cut(counts, 34)} "
                     f"{cut(run.first_error, 60)}".rstrip())
    return "\n".join(lines)
