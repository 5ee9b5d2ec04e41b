"""``core4nb``: run worker nodes and manage the queue from a terminal.

    core4nb worker [URL] [--processes N] [--name NAME] [--burst]
    core4nb status [URL]
    core4nb jobs [URL] [--state S] [--tree ID] [--limit N] [--json]
    core4nb runs [URL] [--limit N] [--json]       (one line per job tree)
    core4nb kill ID [--url URL]     core4nb restart ID [--url URL]     core4nb remove ID [--url URL]
    core4nb gc [URL] [--older-than 1h] [--dry-run]     core4nb prune [URL] [--older-than 7d] [--dry-run]
    core4nb retention [URL] [AGE|never]
    core4nb demo [--end N] [--workers N]

Without a URL, ``CORE4NB_URL`` or the embedded queue file (``~/.core4nb/queue.db``).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections.abc import Sequence

from core4nb import report
from core4nb.errors import Core4Error
from core4nb.job import State
from core4nb.queue import Queue
from core4nb.store import default_url


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="core4nb", description="core4nb job queue and worker nodes")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    worker = sub.add_parser("worker", help="run a worker node (Ctrl-C or SIGTERM drains it)")
    worker.add_argument("url", nargs="?", help="queue URL (default: $CORE4NB_URL or the embedded queue)")
    worker.add_argument("--processes", "-p", type=int, help="parallel child processes (default: cores)")
    worker.add_argument("--name", help="node name shown by `status` (default: host-pid)")
    worker.add_argument("--burst", action="store_true", help="exit when nothing is left to claim")
    worker.add_argument("--lease", type=float, default=30.0, help="seconds a claim holds without heartbeat")
    worker.add_argument("--grace", type=float, default=30.0, help="seconds running jobs may finish on SIGTERM")
    worker.add_argument("--memory-limit", type=int, metavar="MB", help="address-space limit per child process")
    worker.add_argument("--watch-pid", type=int, help=argparse.SUPPRESS)
    worker.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])

    for name, text in (("status", "worker nodes and job counts"), ("jobs", "list jobs"),
                       ("runs", "list job trees: one line per run, its jobs per state and first error")):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("url", nargs="?", help="queue URL")
        if name == "jobs":
            cmd.add_argument("--state", choices=[str(s) for s in State])
            cmd.add_argument("--tree", metavar="ID", help="only the jobs of the tree this job is in (e.g. a runs root)")
        if name != "status":
            cmd.add_argument("--limit", type=_positive, default=50, metavar="N", help="at most this many (newest last)")
        cmd.add_argument("--json", action="store_true", help="machine-readable output")

    for name, text in (("kill", "kill a job and its subtree"), ("restart", "enqueue a finished job again"),
                       ("remove", "delete a job and its subtree"), ("output", "what a job printed (its last trial)")):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("job_id", metavar="ID")
        cmd.add_argument("--url", help="queue URL")

    prune = sub.add_parser("prune", help="remove finished trees past retention, with their blobs")
    prune.add_argument("url", nargs="?", help="queue URL")
    prune.add_argument("--older-than", type=_duration, metavar="AGE",
                       help="trees finished longer ago than this: 90s, 30m, 2h, 7d (default: the queue's retention)")
    prune.add_argument("--dry-run", action="store_true", help="say what would be removed, remove nothing")
    retention = sub.add_parser("retention", help="show or set how long finished trees are kept")
    retention.add_argument("url", nargs="?", help="queue URL")
    retention.add_argument("age", nargs="?", type=_age_or_never, help="e.g. 7d, 12h, or never")

    gc = sub.add_parser("gc", help="delete blobs no job refers to (large arguments and results)")
    gc.add_argument("url", nargs="?", help="queue URL")
    gc.add_argument("--older-than", type=_duration, default=3600.0, metavar="AGE",
                    help="only blobs stored longer ago than this: 90s, 30m, 2h, 7d (default 1h)")
    gc.add_argument("--dry-run", action="store_true", help="say what would be deleted, delete nothing")

    demo = sub.add_parser("demo", help="count primes in parallel and compare with a serial run")
    demo.add_argument("--end", type=int, default=3_000_000, help="count primes below this number")
    demo.add_argument("--workers", type=int, help="local worker processes (default: cores)")
    return parser


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration(text: str) -> float:
    """Seconds in ``90``, ``90s``, ``30m``, ``2h`` or ``7d``."""
    number, unit = (text[:-1], text[-1]) if text[-1:] in _UNITS else (text, "s")
    try:
        return float(number) * _UNITS[unit]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an age: use e.g. 90s, 30m, 2h or 7d") from None


def _positive(text: str) -> int:
    try:
        number = int(text)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number, e.g. 50")
    return number


def _age_or_never(text: str) -> float:
    return math.inf if text == "never" else _duration(text)


def _days(seconds: float) -> str:
    return "never pruned" if math.isinf(seconds) else f"{seconds / 86400:g} days"


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args) or 0
    except Core4Error as exc:
        print(f"core4nb: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _worker(args: argparse.Namespace) -> int:
    from core4nb.worker import forkserver

    forkserver.start()  # preloads while the node imports and opens its store (see forkserver.start)
    from core4nb.worker import WorkerNode
    from core4nb.worker.heap import keep_freed_memory

    keep_freed_memory()  # this process is the node: see core4nb.worker.heap
    # The level is core4nb's own: DEBUG from drivers (pymongo logs every command) would drown it.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("core4nb").setLevel(args.log_level)
    node = WorkerNode(args.url or default_url(), processes=args.processes, name=args.name, burst=args.burst,
                      lease_seconds=args.lease, grace=args.grace, memory_limit_mb=args.memory_limit,
                      watch_pid=args.watch_pid)
    node.run()
    return 0


def _status(args: argparse.Namespace) -> int:
    with report.open_existing(args.url) as queue:
        print(report.status_json(queue) if args.json else report.status_text(queue))


def _jobs(args: argparse.Namespace) -> int:
    with report.open_existing(args.url) as queue:
        # Any job of the tree names it; an unknown id is an error, not an empty list.
        root_id = queue.store.get(args.tree, blobs=False).root_id if args.tree else None
        states = [State(args.state)] if args.state else None
        jobs = queue.store.find(states=states, root_id=root_id)[-args.limit :]
        print(json.dumps([job.to_dict() for job in jobs], indent=2, default=str) if args.json
              else report.jobs_text(jobs))


def _runs(args: argparse.Namespace) -> int:
    with report.open_existing(args.url) as queue:
        trees = report.runs(queue.store.find(), args.limit)
    print(json.dumps([vars(run) for run in trees], indent=2) if args.json else report.runs_text(trees))


def _kill(args: argparse.Namespace) -> int:
    with Queue(args.url or default_url()) as queue:
        print(f"kill requested for {queue.kill(args.job_id)} job(s)")


def _restart(args: argparse.Namespace) -> int:
    with Queue(args.url or default_url()) as queue:
        print(queue.restart(args.job_id))


def _remove(args: argparse.Namespace) -> int:
    with Queue(args.url or default_url()) as queue:
        print(f"removed {queue.remove(args.job_id)} job(s)")


def _output(args: argparse.Namespace) -> int:
    with report.open_existing(args.url) as queue:
        print(queue.output(args.job_id), end="")


def _prune(args: argparse.Namespace) -> int:
    with Queue(args.url or default_url()) as queue:
        age = queue.store.retention() if args.older_than is None else args.older_than
        report = queue.store.prune(age, dry_run=args.dry_run)
    verb = "would prune" if args.dry_run else "pruned"
    print(f"{verb} {len(report.roots)} finished tree(s) older than {_days(age)}: {report.jobs} job(s), "
          f"{report.blobs.count} blob(s) of {report.blobs.size / 2**20:.1f} MB"
          + ("" if args.dry_run else f"; {report.freed / 2**20:.1f} MB given back"))


def _retention(args: argparse.Namespace) -> int:
    with Queue(args.url or default_url()) as queue:
        if args.age is not None:
            queue.store.set_setting("retention", repr(args.age))
        print(f"finished trees are kept for {_days(queue.store.retention())}")


def _gc(args: argparse.Namespace) -> int:
    with Queue(args.url or default_url()) as queue:
        swept = queue.store.sweep_blobs(args.older_than, dry_run=args.dry_run)
    verb = "would delete" if args.dry_run else "deleted"
    print(f"{verb} {swept.count} unreferenced blob(s), {swept.size / 2**20:.1f} MB")


def _demo(args: argparse.Namespace) -> int:
    from core4nb.demo import run_demo

    return run_demo(end=args.end, workers=args.workers)


COMMANDS = {"worker": _worker, "status": _status, "jobs": _jobs, "runs": _runs, "kill": _kill, "restart": _restart,
            "remove": _remove, "output": _output, "gc": _gc, "prune": _prune,
            "retention": _retention, "demo": _demo}
