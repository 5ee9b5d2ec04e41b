"""``queue``: claims per second and store round trips per job, on each store.

Two measurements per store, both in this process so that every store call is
counted (the Store class's verbs are wrapped, see :mod:`benchmarks.counting`):

* ``store``: the queue alone — insert n jobs, then one claimant claims and
  finishes them in a loop (no child process, no user code).
* ``map``: an n-job map of a trivial function as a user runs it —
  ``Core4Executor(url, workers=0).map(fn, items, chunksize=1)`` enqueues the
  jobs and collects the results, a :class:`WorkerNode` with 2 processes (in a
  thread of this process) runs them. Round trips are split into the client's,
  the worker node's and its child processes' (the map's root job counts its
  chunks from there); the children count through ``benchmarks/hook``, a
  ``sitecustomize`` that ``CORE4NB_COUNT_CALLS`` turns on.
"""

from __future__ import annotations

import os
import secrets
import socket
import threading
from collections import Counter
from pathlib import Path
from typing import Any

from benchmarks.backends import Backend
from benchmarks.counting import CallCounter, WireCommands, counting, read_call_files
from benchmarks.env import Context, clock
from benchmarks.work import identity
from benchmarks.workloads import guarded, per_store

NEEDS = {"core4nb": ("core4nb:Core4Executor", "core4nb.store.sqlite:SQLiteStore", "core4nb.worker:WorkerNode"),
         "core4nb-mongo": ("core4nb:Core4Executor", "core4nb.store.mongo:MongoStore", "core4nb.worker:WorkerNode",
                           "tests.servers:WireServer")}
NODE_PROCESSES = 2
COUNT_ENV = "CORE4NB_COUNT_CALLS"
HOOK = Path(__file__).resolve().parent / "hook"


class OwnerCounter(CallCounter):
    """Counts calls per (store instance, verb), so the client's and the node's calls can be told apart."""

    def by_owner(self, owners: dict[int, str], default: str) -> dict[str, Counter[str]]:
        split: dict[str, Counter[str]] = {}
        for key, n in self.snapshot().items():
            owner, verb = key.split("/", 1)
            split.setdefault(owners.get(int(owner), default), Counter())[verb] += n
        return split


def store_loop(url: str, n: int) -> dict[str, Any]:
    """Insert n jobs, then claim and finish each from one claimant; rates of both."""
    from core4nb.calls import make_job
    from core4nb.job import State
    from core4nb.store import Claimant, open_store

    jobs = [make_job(identity, (i,)) for i in range(n)]
    claimant = Claimant(worker="bench-loop", node=socket.gethostname(), pid=os.getpid())
    with open_store(url) as store:
        start = clock()
        store.insert(jobs)
        insert_s = clock() - start
        claimed, start = 0, clock()
        while (job := store.claim(claimant)) is not None:
            store.finish(job.id, job.lease.token, State.COMPLETE, runtime=0.0)
            claimed += 1
        loop_s = clock() - start
    return {"jobs": n, "claimed": claimed, "insert_s": insert_s, "inserts_per_s": n / insert_s,
            "claim_finish_s": loop_s, "claims_per_s": claimed / loop_s, "correct": claimed == n}


def run_map(url: str, n: int, timeout: float) -> tuple[dict[str, Any], int]:
    """An n-job map (chunksize=1) from ``Core4Executor(url, workers=0)``, run by an in-process node.

    Returns the results and the id of the node's store (to tell its calls from the client's).
    """
    from core4nb import Core4Executor
    from core4nb.worker import WorkerNode

    node = WorkerNode(url, processes=NODE_PROCESSES, name="bench-inproc")
    thread = threading.Thread(target=node.run, name="bench-node", daemon=True)
    thread.start()
    executor = Core4Executor(url, workers=0)
    finished = False
    try:
        start = clock()
        results = executor.map(identity, range(n), chunksize=1, timeout=timeout)
        values = list(results)
        wall = clock() - start
        executor.attach(results.job_id).result(timeout=60)  # the root collects every value: count it too
        total = clock() - start
        finished = True
    finally:
        # After a failure nothing may run the jobs left: shutdown(wait=True) would wait for them forever.
        executor.shutdown(wait=finished, cancel_futures=not finished)
        node.stop(drain=False)
        thread.join(60)
    return {"jobs": n, "client": "Core4Executor(url, workers=0).map(identity, range(n), chunksize=1)",
            "wall_s": wall, "with_root_s": total, "jobs_per_s": n / wall, "claims_per_s": n / wall,
            "correct": values == list(range(n))}, id(node.store)


#: Verbs that never reach the database (a doorbell socket, closing the connection).
LOCAL_VERBS = frozenset({"listen", "close"})


def round_trips(calls: dict[str, dict[str, int]], jobs: int) -> dict[str, Any]:
    """Store calls that reach the database, per job: in all and per role (client, worker, …)."""
    by_role = {role: sum(n for verb, n in c.items() if verb not in LOCAL_VERBS) for role, c in calls.items()}
    return {"round_trips_per_job": sum(by_role.values()) / jobs,
            "round_trips_per_job_by_role": {role: n / jobs for role, n in by_role.items()}}


def forkserver_running() -> bool:
    """A forkserver started before the hook was on the path: its children are not counted."""
    from multiprocessing import forkserver

    return getattr(getattr(forkserver, "_forkserver", None), "_forkserver_pid", None) is not None


def hook_child_processes(ctx: Context) -> Path:
    """Make the worker node's child processes count their store calls (benchmarks/hook/sitecustomize.py).

    They come from a forkserver this process starts with its environment: the hook is on
    its PYTHONPATH and ``CORE4NB_COUNT_CALLS`` names the directory the counts go to.
    """
    calls_dir = ctx.scratch / "calls"
    calls_dir.mkdir(exist_ok=True)
    os.environ[COUNT_ENV] = str(calls_dir)
    paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    if str(HOOK) not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([str(HOOK), *filter(None, paths)])
    return calls_dir


def measure(ctx: Context, backend: Backend) -> dict[str, Any]:
    mongo = backend.key == "core4nb-mongo"
    n = ctx.sizes["queue_jobs_mongo" if mongo else "queue_jobs"]
    dbs = [f"queue_{secrets.token_hex(3)}" for _ in range(2)]
    urls = [ctx.mongo_url(db) if mongo else f"sqlite://{ctx.scratch / f'{db}.db'}" for db in dbs]
    if mongo:
        from core4nb.store.mongo import MongoStore as cls
    else:
        from core4nb.store.sqlite import SQLiteStore as cls
    wire = WireCommands.install() if mongo else None
    counter = OwnerCounter()
    out: dict[str, Any] = {"jobs": n, "node_processes": NODE_PROCESSES}
    hooked_before = str(HOOK) in os.environ.get("PYTHONPATH", "")
    out["child_calls_counted"] = hooked_before or not forkserver_running()
    calls_dir = hook_child_processes(ctx)
    try:
        for phase, url in zip(("store", "map"), urls, strict=True):
            counter.calls.clear()
            if wire:
                wire.counter.calls.clear()
                wire.active = True
            with counting(cls, counter, owner=True):
                if phase == "store":
                    result, owners = store_loop(url, n), {}
                else:
                    result, node_store = run_map(url, n, timeout=ctx.timeout / 2)
                    owners = {node_store: "worker"}
            if wire:
                wire.active = False
            calls = counter.by_owner(owners, "client")
            logged = read_call_files(str(calls_dir))
            children = Counter({k: v for k, v in logged.items() if not k.startswith("wire:")})
            if children:
                calls["worker children"] = children
            result["calls"] = {role: dict(sorted(c.items())) for role, c in calls.items()}
            result.update(round_trips(result["calls"], n))
            if wire:
                commands = wire.counter.snapshot() + Counter({k[5:]: v for k, v in logged.items()
                                                              if k.startswith("wire:")})
                result["wire_commands"] = dict(sorted(commands.items()))
                result["wire_commands_per_job"] = commands.total() / n
            out[phase] = result
            print(f"    {phase}: {result.get('claims_per_s', result.get('jobs_per_s', 0)):,.0f}/s, "
                  f"{result['round_trips_per_job']:.2f} store calls per job", flush=True)
    finally:
        os.environ.pop(COUNT_ENV, None)
        if mongo:
            for db in dbs:
                ctx.drop_mongo_db(db)
    out["correct"] = out["store"]["correct"] and out["map"]["correct"]
    return out


def queue(ctx: Context, backends: list[Backend]) -> dict[str, Any]:
    results = per_store(ctx, backends, NEEDS, "queue",
                        lambda backend, entry: guarded(ctx, entry, lambda: measure(ctx, backend)))
    return {"params": {"jobs": ctx.sizes["queue_jobs"], "jobs_mongo": ctx.sizes["queue_jobs_mongo"],
                       "node_processes": NODE_PROCESSES}, "results": results}
