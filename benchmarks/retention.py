"""``python -m benchmarks retention``: the queue does not grow forever.

Ten runs of a 64 MB workload (a map over 8 new arrays of 8 MB), with a prune of finished trees between
them; the store's size after each run, before its prune (queue file, write-ahead log and blobs), beside the size
after the first. Target: the last stays within 1.1× the first.
"""

from __future__ import annotations

import os
import secrets
from typing import Any

MB = 2**20
RUNS = {"full": 10, "tiny": 3}


def array_sum(a: Any) -> float:
    return float(a.sum())


def retention(ctx: Any, backends: list[Any]) -> dict[str, Any]:
    import numpy as np

    from core4nb import Core4Executor, Queue

    results = []
    if "core4nb" in {b.key for b in backends}:
        os.environ["CORE4NB_HOME"] = str(ctx.scratch / f"home-{secrets.token_hex(3)}")
        sizes, correct = [], True
        with Core4Executor(workers=ctx.workers) as ex:
            for run in range(RUNS[ctx.size]):
                arrays = [np.random.default_rng(run * 100 + i).random(MB) for i in range(8)]  # 64 MB
                it = ex.map(array_sum, arrays)
                correct &= list(it) == [float(a.sum()) for a in arrays]
                Queue(store=ex.store).wait(it.job_id)  # the whole tree final, its root too
                sizes.append(ex.store.usage(0).size)
                ex.store.prune(0)  # what housekeeping does once a tree is past retention
        results.append({"backend": "core4nb", "label": "core4nb (embedded SQLite store)", "status": "ok",
                        "sizes_mb": [s / MB for s in sizes], "growth": sizes[-1] / sizes[0], "correct": correct})
    return {"params": {"runs": RUNS[ctx.size], "workload_mb": 64}, "results": results}


def section(w: dict[str, Any]) -> list[str]:
    lines = [f"{w['params']['runs']} runs of a {w['params']['workload_mb']} MB map, `prune` between them: the "
             "store's size (queue file, WAL, blobs) after each run.", ""]
    for r in w["results"]:
        sizes = ", ".join(f"{s:.1f}" for s in r["sizes_mb"])
        lines.append(f"- {r['label']}: {sizes} MB; last/first {r['growth']:.2f}× (correct: {r['correct']})")
    return lines


def targets(w: dict[str, Any] | None) -> list[tuple[str, str, str | None, bool | None]]:
    r = next((r for r in (w or {}).get("results", []) if r["status"] == "ok"), None)
    return [("retention: queue size after ten 64 MB runs with prune", "≤ 1.1× the size after one",
             r and f"{r['growth']:.2f}× ({r['sizes_mb'][-1]:.1f} MB vs {r['sizes_mb'][0]:.1f} MB)",
             r and r["growth"] <= 1.1)]
