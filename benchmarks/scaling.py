"""``scaling``: the seed's experiment on simulated nodes.

k = 1, 2, 4, … worker nodes (``python -m core4nb worker URL --processes 1``,
subprocesses of this benchmark) serve one queue; 64 jobs that each sleep
0.25 s are mapped by a ``Core4Executor(url, workers=0)`` (one job per item).
Sleeping jobs hold a node without using a core, so k nodes on a 2-core machine
stand in for k machines and what is measured is the queue: claim, hand-off,
finish, result. Wall time runs from ``map`` until the last result is in; ideal
time is 64 × 0.25 / k.
Nodes are added as k grows and stopped by pid at the end; each batch's jobs
are removed after it, so every k sees the same queue size.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

from benchmarks.backends import Backend
from benchmarks.env import Context, clock, summary
from benchmarks.nodes import NodePool
from benchmarks.work import nap
from benchmarks.workloads import guarded, per_store

#: core4os on AWS (the seed's figures): primes 1..5,000,000 in 50 chunks.
CORE4OS_AWS = {"label": "core4os on AWS (primes 1..5,000,000, 50 chunks)", "nodes": [1, 2, 4, 8],
               "wall_s": [197.0, 104.0, 47.0, 26.0]}
NEEDS = {"core4nb": ("core4nb:Core4Executor", "core4nb.cli:main"),
         "core4nb-mongo": ("core4nb:Core4Executor", "core4nb.store.mongo:MongoStore", "core4nb.cli:main",
                           "tests.servers:WireServer")}


def core4os_reference() -> dict[str, Any]:
    one = CORE4OS_AWS["wall_s"][0]
    return {**CORE4OS_AWS, "efficiency": [one / (k * t) for k, t in zip(CORE4OS_AWS["nodes"],
                                                                      CORE4OS_AWS["wall_s"], strict=True)]}


def run_batch(executor: Any, jobs: int, seconds: float, timeout: float) -> dict[str, Any]:
    """One map of ``jobs`` sleeping jobs (one job per item), timed until the last result is in."""
    start, wall_start = clock(), time.time()
    results = executor.map(nap, [seconds] * jobs, chunksize=1, timeout=timeout)
    values = list(results)
    wall = clock() - start
    store = executor.store
    executor.attach(results.job_id).result(timeout=60)  # the map's root: done once it has collected
    done = store.find(parent_id=results.job_id)
    first_claim = min((j.started_at for j in done if j.started_at), default=wall_start) - wall_start
    last_finish = max((j.finished_at for j in done if j.finished_at), default=wall_start) - wall_start
    store.remove(results.job_id)  # the whole tree: every k sees the same queue size
    return {"wall_s": wall, "first_claim_s": first_claim, "last_finish_s": last_finish,
            "correct": values == [seconds] * jobs}


def scale_store(ctx: Context, backend: Backend, points: list[dict[str, Any]]) -> dict[str, Any]:
    """Measure every k on one store; ``points`` fills as it goes (kept when a later k fails)."""
    from core4nb import Core4Executor

    sizes = ctx.sizes
    jobs, seconds = sizes["scaling_jobs"], sizes["scaling_sleep"]
    db = f"scaling_{secrets.token_hex(3)}"
    url = ctx.mongo_url(db) if backend.key == "core4nb-mongo" else f"sqlite://{ctx.scratch / f'{db}.db'}"
    executor = Core4Executor(url, workers=0)  # the client only: the simulated nodes do the work
    pool = NodePool(url, ctx.scratch / f"nodes-{db}", store=executor.store)
    try:
        for k in sizes["scaling_nodes"]:
            grow_s = pool.grow_to(k)
            time.sleep(0.5)  # let the new nodes' child processes finish importing
            runs = [run_batch(executor, jobs, seconds, timeout=60 + 4 * jobs * seconds) for _ in range(ctx.repeat)]
            walls = [r["wall_s"] for r in runs]
            stats, ideal = summary(walls), jobs * seconds / k
            points.append({"nodes": k, "times_s": walls, "min_s": stats["min"], "median_s": stats["median"],
                           "ideal_s": ideal, "efficiency_best": ideal / stats["min"],
                           "efficiency_median": ideal / stats["median"], "nodes_start_s": grow_s,
                           "first_claim_s": min(r["first_claim_s"] for r in runs),
                           "last_finish_s": min(r["last_finish_s"] for r in runs),
                           "correct": all(r["correct"] for r in runs)})
            print(f"    {k:>2} nodes: {stats['median']:.2f} s (ideal {ideal:.2f} s)", flush=True)
    finally:
        pool.stop()
        executor.shutdown(wait=False, cancel_futures=True)
        if backend.key == "core4nb-mongo":
            ctx.drop_mongo_db(db)
    return {"points": points, "correct": all(p["correct"] for p in points), "url": url.split("?")[0]}


def scaling(ctx: Context, backends: list[Backend]) -> dict[str, Any]:
    def measure(backend: Backend, entry: dict[str, Any]) -> dict[str, Any]:
        points: list[dict[str, Any]] = []
        entry = guarded(ctx, entry, lambda: scale_store(ctx, backend, points))
        entry.setdefault("points", points)  # the points measured before a failure still count
        return entry

    results = per_store(ctx, backends, NEEDS, "scaling", measure)
    sizes = ctx.sizes
    return {"params": {"nodes": sizes["scaling_nodes"], "jobs": sizes["scaling_jobs"],
                       "sleep_s": sizes["scaling_sleep"], "processes_per_node": 1, "repeat": ctx.repeat},
            "core4os_aws": core4os_reference(), "results": results}
