"""``python -m benchmarks.compare REF WORKLOAD… [--reps N] [--backends a,b,…] [--size tiny|full]``: this
checkout against an earlier commit, side by side in one run.

"No regression" is a claim about two versions on the same machine at the same time. This checks out
``REF`` into a temporary git worktree and runs each workload's benchmark from both trees in fresh
interpreters, alternating (the order rotates each repetition, so neither tree always runs first on a
machine that warms up or gets busy). It prints, per workload and backend, each tree's best and median
over the repetitions and the ratio of this checkout to ``REF``; the JSON of every run stays in
``--out``. Lower is better, except for scaling's efficiency. ``--record`` keeps the comparison in
``benchmarks/comparison.json`` and rewrites RESULTS.md from ``results.json`` with it (a section, and a
"no regression" target per workload and backend); rows of other workloads recorded there for the same two
commits stay, so a noisy workload can be run again with more ``--reps`` without re-running the slow ones.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.env import compile_bytecode
from benchmarks.regression import METRICS, metric, rows, table

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


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
    parser.add_argument("--record", type=Path, nargs="?", const=HERE, metavar="DIR",
                        help="keep the comparison in DIR/comparison.json and rewrite DIR/RESULTS.md from "
                        "DIR/results.json with it (default DIR: benchmarks/)")
    args = parser.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="core4nb-compare-"))
    out.mkdir(parents=True, exist_ok=True)
    old = Path(tempfile.mkdtemp(prefix="core4nb-ref-")) / "tree"
    subprocess.run(["git", "worktree", "add", "--detach", str(old), args.ref], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL)
    trees = {"this": ROOT, args.ref: old}
    compile_bytecode(old)  # this tree's runs do it themselves (Context.prepare_environment); REF's may not
    commits = {"ref_commit": _commit(args.ref), "commit": _commit(None)}  # before anything is written
    load_before = os.getloadavg()[0]
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
        compared = rows(seen, args.ref)
        print("", *table(compared, args.ref), sep="\n")
        if args.record:
            record(args, commits, compared, [load_before, os.getloadavg()[0]])
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=ROOT, check=False)
        shutil.rmtree(old.parent, ignore_errors=True)
    print(f"runs: {out}")
    return 0


def record(args: argparse.Namespace, commits: dict[str, str], compared: list[dict], loadavg: list[float]) -> None:
    """Keep this run's rows in DIR/comparison.json, beside the rows kept there of other workloads that compared
    the same two commits at the same size (a slow workload need not run again to re-measure a noisy one)."""
    from benchmarks.report import COMPARISON, write_report

    path = args.record / COMPARISON
    path.parent.mkdir(parents=True, exist_ok=True)
    finished = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    run = {"reps": args.reps, "finished": finished, "loadavg": [round(x, 2) for x in loadavg]}
    kept = [row for row in _earlier_rows(path, commits, args.size) if row["workload"] not in args.workloads]
    rows = sorted(kept + [{**row, **run} for row in compared], key=lambda row: (row["workload"], row["backend"]))
    path.write_text(json.dumps({"ref": args.ref, **commits, "size": args.size, "rows": rows}, indent=1))
    print(f"wrote {path}" + (f" (kept {len(kept)} row(s) of an earlier run)" if kept else ""))
    results = args.record / "results.json"
    if results.exists():
        for written in write_report(json.loads(results.read_text()), args.record):
            print(f"wrote {written}")


def _earlier_rows(path: Path, commits: dict[str, str], size: str) -> list[dict]:
    """The rows of an earlier record of the same two commits and size; none from other versions."""
    try:
        earlier = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    same = all(earlier.get(k) == v for k, v in commits.items()) and earlier.get("size") == size
    return earlier.get("rows", []) if same and not commits["commit"].endswith("-dirty") else []


#: What a benchmark run writes (results, plots): changed in the checkout, they change no measured code.
_OUTPUTS = ("RESULTS.md", "*.json", "plots")


def _commit(rev: str | None) -> str:
    """``rev`` as a short hash; None: this checkout's, marked ``-dirty`` when its code has uncommitted changes
    (results a run just wrote are not code: a second compare after a first one's ``--record`` is still clean)."""
    def git(*command: str) -> str:
        return subprocess.run(["git", *command], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()

    if rev is not None:
        return git("rev-parse", "--short=7", rev)
    changed = git("status", "--porcelain", "--", ".", *(f":(exclude)benchmarks/{out}" for out in _OUTPUTS))
    return git("rev-parse", "--short=7", "HEAD") + ("-dirty" if changed else "")


if __name__ == "__main__":
    raise SystemExit(main())
