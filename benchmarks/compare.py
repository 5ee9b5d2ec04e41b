"""``python -m benchmarks.compare REF WORKLOAD… [--reps N] [--backends a,b,…] [--size tiny|full]``: this
checkout against an earlier commit, side by side in one run.

"No regression" is a claim about two versions on the same machine at the same time. This checks out
``REF`` into a temporary git worktree and runs each workload's benchmark from both trees in fresh
interpreters, alternating (the order rotates each repetition, so neither tree always runs first on a
machine that warms up or gets busy). It prints, per workload and backend, each tree's best and median
over the repetitions and the ratio of this checkout to ``REF``; the JSON of every run stays in
``--out``. Lower is better, except for scaling's efficiency.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
#: What each workload is judged by: (key in a backend's entry, unit, higher is better).
METRICS = {"latency": ("median_ms", "ms", False), "overhead": ("min_s", "s", False), "primes": ("min_s", "s", False),
           "startup": ("median_s", "s", False), "scaling": ("efficiency_best", "efficiency at the most nodes", True)}


def metric(workload: str, entry: dict[str, Any]) -> float | None:
    key = METRICS[workload][0]
    if workload == "scaling":  # the efficiency at the largest node count measured
        points = [p for p in entry.get("points", []) if p.get(key) is not None]
        return max(points, key=lambda p: p["nodes"])[key] if points else None
    return entry.get(key)


def run(tree: Path, workload: str, backends: str, size: str, out: Path) -> dict[str, float]:
    """One benchmark run from ``tree``'s root (its code, this interpreter): {backend: metric}."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    subprocess.run([sys.executable, "-m", "benchmarks", workload, "--backends", backends, "--repeat", "3",
                    "--size", size, "--no-report", "--json", str(out)], cwd=tree, env=env, check=True,
                   stdout=subprocess.DEVNULL)
    results = json.loads(out.read_text())["workloads"][workload]["results"]
    return {e["backend"]: metric(workload, e) for e in results if e.get("status") == "ok"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compare", description=__doc__.split(":")[0])
    parser.add_argument("ref", help="the earlier commit (any git revision)")
    parser.add_argument("workloads", nargs="+", choices=list(METRICS))
    parser.add_argument("--reps", type=int, default=3, help="alternating runs of each tree (default 3)")
    parser.add_argument("--backends", default="core4nb,core4nb-mongo", help="default: core4nb,core4nb-mongo")
    parser.add_argument("--size", choices=["tiny", "full"], default="full")
    parser.add_argument("--out", type=Path, help="where the runs' JSON go (default: a temporary directory)")
    args = parser.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="core4nb-compare-"))
    out.mkdir(parents=True, exist_ok=True)
    old = Path(tempfile.mkdtemp(prefix="core4nb-ref-")) / "tree"
    subprocess.run(["git", "worktree", "add", "--detach", str(old), args.ref], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL)
    trees = {"this": ROOT, args.ref: old}
    try:
        seen: dict[tuple[str, str, str], list[float]] = {}
        for workload in args.workloads:
            for rep in range(args.reps):
                names = list(trees)[rep % 2:] + list(trees)[: rep % 2]
                for name in names:
                    print(f"{workload} run {rep + 1}/{args.reps}: {name}", flush=True)
                    runs = run(trees[name], workload, args.backends, args.size, out / f"{workload}-{name}-{rep}.json")
                    for backend, value in runs.items():
                        values = seen.setdefault((workload, backend, name), [])
                        if value is not None:
                            values.append(value)
        report(seen, args.ref)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=ROOT, check=False)
        shutil.rmtree(old.parent, ignore_errors=True)
    print(f"runs: {out}")
    return 0


def report(seen: dict[tuple[str, str, str], list[float]], ref: str) -> None:
    print(f"\n| workload | backend | {ref} best / median | this best / median | this ÷ {ref} (best, median) |")
    print("|---|---|---|---|---|")
    for workload, backend in sorted({(w, b) for w, b, _ in seen}):
        before, after = seen.get((workload, backend, ref)), seen.get((workload, backend, "this"))
        if not before or not after:  # a tree whose runs gave no figure is shown, not silently left out
            print(f"| {workload} ({METRICS[workload][1]}) | {backend} | {_figures(before)} | {_figures(after)} | — |")
            continue
        best = max if METRICS[workload][2] else min
        b, a = (best(before), statistics.median(before)), (best(after), statistics.median(after))
        print(f"| {workload} ({METRICS[workload][1]}) | {backend} | {b[0]:.4g} / {b[1]:.4g} | {a[0]:.4g} / "
              f"{a[1]:.4g} | {a[0] / b[0]:.2f} / {a[1] / b[1]:.2f} |")


def _figures(values: list[float] | None) -> str:
    return "no result" if not values else f"{min(values):.4g} … {max(values):.4g}"


if __name__ == "__main__":
    raise SystemExit(main())
