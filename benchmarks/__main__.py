"""``python -m benchmarks WORKLOAD [--backends a,b,…] [--workers N] [--repeat K] [--size tiny|full]
[--json PATH] [--out DIR]``: run workloads, write JSON, RESULTS.md and plots."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks import dataplane, sklearn_bench
from benchmarks.backends import BACKENDS, select
from benchmarks.env import SIZES, Context, machine
from benchmarks.queue_rate import queue
from benchmarks.retention import retention
from benchmarks.scaling import scaling
from benchmarks.targets import evaluate
from benchmarks.workloads import latency, overhead, primes, startup

WORKLOADS = {"primes": primes, "overhead": overhead, "latency": latency, "startup": startup,
             "scaling": scaling, "queue": queue, "data": dataplane.workload,
             "retention": retention, "sklearn": sklearn_bench.workload}
HERE = Path(__file__).resolve().parent


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split(":")[0])
    parser.add_argument("workload", choices=[*WORKLOADS, "all"])
    parser.add_argument("--backends", default=",".join(BACKENDS),
                        help=f"comma-separated, of {', '.join(BACKENDS)} (default: all)")
    parser.add_argument("--workers", type=int, default=2, help="workers of every tool (default 2)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each measurement (default 3)")
    parser.add_argument("--size", choices=list(SIZES), default="full")
    parser.add_argument("--out", type=Path, default=HERE, help="where RESULTS.md and plots/ go (default: benchmarks/)")
    parser.add_argument("--json", type=Path, help="results file (default: OUT/results.json); runs of the same "
                        "size and worker count are merged into it, workload by workload")
    parser.add_argument("--no-report", action="store_true", help="write only the JSON (no RESULTS.md, no plots)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds one tool may take for one workload")
    args = parser.parse_args(argv)
    if args.workers < 1 or args.repeat < 1:
        parser.error("--workers and --repeat must be at least 1")
    args.json = args.json or args.out / "results.json"
    return args


def load_previous(path: Path, size: str, workers: int) -> dict[str, Any]:
    """Earlier results in the file, when they were measured at the same size and worker count."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    meta = data.get("meta", {})
    return data if meta.get("size") == size and meta.get("workers") == workers else {}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    backends = select([k.strip() for k in args.backends.split(",") if k.strip()])
    names = list(WORKLOADS) if args.workload == "all" else [args.workload]
    ctx = Context(workers=args.workers, repeat=args.repeat, size=args.size, timeout=args.timeout)
    ctx.prepare_environment()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the clean-up below
    data = load_previous(args.json, args.size, args.workers)
    data["meta"] = {**machine(), "size": args.size, "workers": args.workers, "repeat": args.repeat,
                    "updated": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
    workloads = data.setdefault("workloads", {})
    try:
        for name in names:
            print(f"{name} ({args.size}, {args.workers} workers, {args.repeat} repeats)", flush=True)
            start, load_before = time.monotonic(), os.getloadavg()[0]
            result = WORKLOADS[name](ctx, backends)
            result["run"] = {"backends": [b.key for b in backends], "repeat": args.repeat,
                             "commit": data["meta"].get("commit"), "seconds": round(time.monotonic() - start, 1),
                             "loadavg_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
                             "finished": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
            workloads[name] = result
            data["targets"] = evaluate(workloads)
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(data, indent=1, default=str))
            for r in result["results"]:
                if r["status"] != "ok":
                    print(f"  {r['label']}: {r['status']}: {r['reason']}", flush=True)
    finally:
        ctx.close()
    print(f"results: {args.json}")
    if not args.no_report:
        from benchmarks.report import write_report

        for path in write_report(data, args.out):
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
