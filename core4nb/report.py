"""Plain-text views of the queue shared by the ``core4nb`` CLI and the ``%core4`` line magic."""

from __future__ import annotations

import json
import math
import time

from core4nb.job import Job, State
from core4nb.queue import Queue
from core4nb.store import redact_url


def status_text(queue: Queue) -> str:
    """Nodes (name, host, slots, busy, heartbeat age, state) and jobs per state."""
    nodes, counts, now = queue.store.workers(), queue.counts(), time.time()
    lines = [f"queue  {redact_url(queue.url)}", f"nodes  {len(nodes)}"]
    if nodes:
        lines.append(f"  {'NAME':<24} {'HOST':<16} {'SLOTS':>5} {'BUSY':>4}  {'HEARTBEAT':<12} STATE")
    for node in nodes:
        age = f"{now - node.heartbeat:.1f} s ago"
        busy = len(node.running)
        lines.append(f"  {node.name:<24} {node.host:<16} {node.slots:>5} {busy:>4}  {age:<12} {node.state}")
    lines.append("jobs   " + "  ".join(f"{state} {counts[state]}" for state in State))
    retention = queue.store.retention()
    usage = queue.store.usage(retention)
    kept = "kept for ever" if math.isinf(retention) else f"kept {retention / 86400:g} days"
    lines.append(f"store  {usage.size / 2**20:.1f} MB; {usage.finished_trees} finished tree(s) waiting ({kept})")
    return "\n".join(lines)


def status_json(queue: Queue) -> str:
    retention = queue.store.retention()
    usage = queue.store.usage(retention)
    store = {"size": usage.size, "finished_trees": usage.finished_trees,
             "retention_s": None if math.isinf(retention) else retention}
    return json.dumps({"url": redact_url(queue.url), "counts": {str(k): v for k, v in queue.counts().items()},
                       "nodes": [vars(n) for n in queue.store.workers()], "store": store}, indent=2)


def jobs_text(jobs: list[Job]) -> str:
    lines = [f"{'ID':<24} {'STATE':<9} {'TRIAL':>5}  {'NAME':<32} ARGS"]
    lines += [f"{job.id:<24} {job.state:<9} {job.trial:>5}  {job.name[-32:]:<32} {job.args_summary[:60]}"
              for job in jobs]
    return "\n".join(lines)
