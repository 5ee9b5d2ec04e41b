"""Workloads that every tool runs: primes, overhead, latency, startup.

Each tool runs in its own session with the same worker count. A session's
start-up (creating the executor, then a small warm-up map so every worker is
up) is timed apart from the work; the work is repeated ``--repeat`` times in
the same session and reported as min and median.
"""

from __future__ import annotations

import contextlib
import statistics
from collections.abc import Callable
from typing import Any

from benchmarks.backends import Backend, Session
from benchmarks.env import PROTECTED_PIDS, Context, clock, summary, time_limit
from benchmarks.work import chunks, count_primes, identity

PRIME_CHUNKS = 64
Body = Callable[[Session], dict[str, Any]]


def entry_for(backend: Backend, label: str | None = None) -> dict[str, Any]:
    return {"backend": backend.key, "label": label or backend.label, "status": "ok"}


def guarded(ctx: Context, entry: dict[str, Any], action: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run one tool's part; a failure or time-out is recorded in the entry, never raised."""
    try:
        with time_limit(ctx.timeout, entry["label"]):
            entry.update(action())
    except Exception as exc:
        entry.update(status="error", reason=f"{type(exc).__name__}: {exc}")
    return entry


def per_store(ctx: Context, backends: list[Backend], needs: dict[str, tuple[str, ...]], workload: str,
              measure: Callable[[Backend, dict[str, Any]], dict[str, Any]]) -> list[dict[str, Any]]:
    """Run a core4nb-only workload once per core4nb store among ``backends``; skipped ones say why."""
    from benchmarks.backends import missing

    stores = [b for b in backends if b.key in needs]
    if not stores:
        return [{"backend": "core4nb", "label": "core4nb", "status": "skipped",
                 "reason": f"{workload} measures core4nb's stores: add core4nb and/or core4nb-mongo to --backends"}]
    results = []
    for backend in stores:
        entry = entry_for(backend)
        reason = missing(needs[backend.key])
        if reason:
            results.append({**entry, "status": "skipped", "reason": reason})
            continue
        print(f"  {entry['label']} …", flush=True)
        results.append(measure(backend, entry))
    return results


def close_session(session: Session, entry: dict[str, Any]) -> float:
    """Shut the tool down; wait for (or end) every process it started. Returns seconds taken."""
    start = clock()
    started = descendants()
    try:
        with time_limit(60, f"shutting down {entry['label']}"):
            session.close()
    except Exception as exc:
        entry["close_error"] = f"{type(exc).__name__}: {exc}"
    entry["shutdown_s"] = seconds = clock() - start
    reap(started, entry)
    return seconds


#: Process-lifetime helpers of multiprocessing and loky: they end with this process, not with a tool.
HELPERS = ("resource_tracker", "forkserver", "semaphore_tracker")


def descendants() -> list[Any]:
    """Processes started under this one, but the run's own servers and multiprocessing's helpers."""
    try:
        import psutil
    except ImportError:
        return []
    found = []
    me = psutil.Process()
    for proc in me.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            helper = proc.ppid() == me.pid and any(h in " ".join(proc.cmdline()) for h in HELPERS)
            if proc.pid not in PROTECTED_PIDS and not helper:
                found.append(proc)
    return found


def reap(procs: list[Any], entry: dict[str, Any], timeout: float = 10.0) -> None:
    """Wait for the processes a tool started; SIGKILL (by pid) those still alive after ``timeout``."""
    if not procs:
        return
    import psutil

    _, alive = psutil.wait_procs(procs, timeout=timeout)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    if alive:
        entry["leftover_processes_killed"] = len(alive)


def run_backend(ctx: Context, backend: Backend, body: Body, label: str | None = None) -> dict[str, Any]:
    """Start the tool (timed: ``startup_s``), run ``body`` in it, stop it."""
    entry = entry_for(backend, label)
    reason = backend.missing()
    if reason:
        return {**entry, "status": "skipped", "reason": reason}
    print(f"  {entry['label']} …", flush=True)
    session: Session | None = None

    def action() -> dict[str, Any]:
        nonlocal session
        start = clock()
        session = backend.open(ctx, ctx.workers)
        warm = session.map(identity, range(4 * ctx.workers))
        if warm != list(range(4 * ctx.workers)):
            raise AssertionError(f"warm-up map returned {warm!r}")
        return {"startup_s": clock() - start, **body(session)}

    guarded(ctx, entry, action)
    if session is not None:
        close_session(session, entry)
    return entry


def timed_runs(ctx: Context, once: Callable[[], Any]) -> tuple[list[float], list[Any]]:
    times, values = [], []
    for _ in range(ctx.repeat):
        start = clock()
        values.append(once())
        times.append(clock() - start)
    return times, values


def with_times(times: list[float]) -> dict[str, Any]:
    stats = summary(times)
    return {"times_s": times, "min_s": stats["min"], "median_s": stats["median"]}


def sieve_count(end: int) -> int:
    """Primes below ``end`` by a sieve: the exact answer every tool must match."""
    if end < 3:
        return 0
    flags = bytearray([1]) * end
    flags[0:2] = b"\x00\x00"
    for n in range(2, int(end**0.5) + 1):
        if flags[n]:
            flags[n * n :: n] = bytes(len(range(n * n, end, n)))
    return sum(flags)


# -- primes -------------------------------------------------------------------------------
def primes(ctx: Context, backends: list[Backend]) -> dict[str, Any]:
    end = ctx.sizes["primes_end"]
    parts = chunks(end, PRIME_CHUNKS)
    expected = sieve_count(end)

    def body(session: Session) -> dict[str, Any]:
        def once() -> int:  # one task per chunk in every tool: submit all, then gather
            futures = [session.submit(count_primes, part) for part in parts]
            return sum(f.result() for f in futures)

        times, values = timed_runs(ctx, once)
        return {**with_times(times), "value": values[0], "correct": all(v == expected for v in values)}

    results = [run_backend(ctx, b, body) for b in backends]
    serial = next((r for r in results if r["backend"] == "serial" and r["status"] == "ok"), None)
    for r in results:
        if serial and r["status"] == "ok":
            r["speedup_median"] = serial["median_s"] / r["median_s"]
            r["speedup_best"] = serial["min_s"] / r["min_s"]
    return {"params": {"range": [1, end], "chunks": len(parts), "workers": ctx.workers, "repeat": ctx.repeat},
            "expected": expected, "results": results}


# -- overhead -------------------------------------------------------------------------------
def overhead(ctx: Context, backends: list[Backend]) -> dict[str, Any]:
    """Items per second of ``map(identity, range(n))`` with the tool's defaults.

    A 1,000-item probe first; a tool too slow to map ``n`` items ``repeat``
    times within the size's budget maps fewer (``items`` says how many).
    """
    target, budget = ctx.sizes["overhead_items"], ctx.sizes["overhead_budget_s"]
    runs: list[tuple[Backend, dict[str, Any], str | None]] = []
    for b in backends:
        runs.append((b, {}, None))
        if b.key == "process":
            runs.append((b, {"chunksize": 100}, f"{b.label} (tuned: chunksize=100)"))

    results = []
    for backend, options, label in runs:
        def body(session: Session, options: dict[str, Any] = options) -> dict[str, Any]:
            probe_n = min(1_000, target)
            start = clock()
            session.map(identity, range(probe_n), **options)
            probe_rate = probe_n / (clock() - start)
            n = int(min(target, max(probe_n, probe_rate * budget / ctx.repeat)))
            times, values = timed_runs(ctx, lambda: session.map(identity, range(n), **options))
            stats = with_times(times)
            return {**stats, "items": n, "probe_items_per_s": probe_rate, "options": options,
                    "items_per_s_best": n / stats["min_s"], "items_per_s_median": n / stats["median_s"],
                    "correct": all(v == list(range(n)) for v in values)}

        entry = run_backend(ctx, backend, body, label)
        if label:
            entry["backend"] = f"{backend.key}-tuned"
        results.append(entry)
    return {"params": {"items": target, "budget_s": budget, "workers": ctx.workers, "repeat": ctx.repeat},
            "results": results}


# -- latency --------------------------------------------------------------------------------
def latency(ctx: Context, backends: list[Backend]) -> dict[str, Any]:
    calls = ctx.sizes["latency_calls"]

    def body(session: Session) -> dict[str, Any]:
        medians, p95s, correct = [], [], True
        for _ in range(ctx.repeat):
            laps = []
            for i in range(calls):
                start = clock()
                correct &= session.submit(identity, i).result() == i
                laps.append((clock() - start) * 1000)
            laps.sort()
            medians.append(statistics.median(laps))
            p95s.append(laps[min(len(laps) - 1, int(0.95 * len(laps)))])
        return {"medians_ms": medians, "min_ms": min(medians), "median_ms": statistics.median(medians),
                "p95_ms": statistics.median(p95s), "correct": correct}

    return {"params": {"calls": calls, "workers": ctx.workers, "repeat": ctx.repeat},
            "results": [run_backend(ctx, b, body) for b in backends]}


# -- startup ---------------------------------------------------------------------------------
STARTUP_WORKERS = 2


def startup(ctx: Context, backends: list[Backend]) -> dict[str, Any]:
    """Executor created with 2 workers → first result of a trivial call, fresh each repeat."""
    results = []
    for backend in backends:
        entry = entry_for(backend)
        reason = backend.missing()
        if reason:
            results.append({**entry, "status": "skipped", "reason": reason})
            continue
        print(f"  {entry['label']} …", flush=True)

        def action(backend: Backend = backend, entry: dict[str, Any] = entry) -> dict[str, Any]:
            times, shutdowns = [], []
            for _ in range(ctx.repeat):
                start = clock()
                session = backend.open(ctx, STARTUP_WORKERS)
                try:
                    if session.submit(identity, 1).result() != 1:
                        raise AssertionError("first result is wrong")
                    times.append(clock() - start)
                finally:
                    shutdowns.append(close_session(session, entry))
            return {**with_times(times), "shutdown_median_s": statistics.median(shutdowns), "correct": True}

        results.append(guarded(ctx, entry, action))
    return {"params": {"workers": STARTUP_WORKERS, "repeat": ctx.repeat}, "results": results}
