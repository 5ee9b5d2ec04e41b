"""The targets core4nb must hit, checked against a results file (reported, never asserted)."""

from __future__ import annotations

from typing import Any


def _ok(workload: dict[str, Any] | None, key: str) -> dict[str, Any] | None:
    if not workload:
        return None
    return next((r for r in workload["results"] if r["backend"] == key and r["status"] == "ok"), None)


def _target(name: str, goal: str, measured: str | None, met: bool | None) -> dict[str, Any]:
    return {"target": name, "goal": goal, "measured": measured or "not measured", "met": met}


def evaluate(workloads: dict[str, Any], compared: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every target, met or not, from the workloads' results and (``compared``) a ``benchmarks.compare`` record."""
    out = []
    primes = workloads.get("primes")
    c4, serial = _ok(primes, "core4nb"), _ok(primes, "serial")
    peers = [r for r in (_ok(primes, "process"), _ok(primes, "loky")) if r]
    if c4 and peers:
        best = min(peers, key=lambda r: r["median_s"])
        gap = c4["median_s"] / best["median_s"] - 1
        out.append(_target("primes vs fastest of ProcessPoolExecutor/loky", "within 3 % (median)",
                           f"{gap:+.1%} vs {best['label']} ({c4['median_s']:.2f} s vs {best['median_s']:.2f} s)",
                           gap <= 0.03))
    else:
        out.append(_target("primes vs fastest of ProcessPoolExecutor/loky", "within 3 % (median)", None, None))
    if c4 and serial:
        out.append(_target("primes speed-up over serial", "≥ 1.9× with 2 workers",
                           f"{c4['speedup_median']:.2f}×", c4["speedup_median"] >= 1.9))
    else:
        out.append(_target("primes speed-up over serial", "≥ 1.9× with 2 workers", None, None))

    r = _ok(workloads.get("overhead"), "core4nb")
    out.append(_target("overhead: map of a trivial function", "≥ 100,000 items/s",
                       r and f"{r['items_per_s_median']:,.0f} items/s ({r['items']:,} items)",
                       r and r["items_per_s_median"] >= 100_000))
    r = _ok(workloads.get("latency"), "core4nb")
    out.append(_target("latency: submit → result (embedded)", "≤ 5 ms median",
                       r and f"{r['median_ms']:.1f} ms", r and r["median_ms"] <= 5))
    r = _ok(workloads.get("startup"), "core4nb")
    out.append(_target("startup: executor with 2 workers → first result", "≤ 1 s",
                       r and f"{r['median_s']:.2f} s", r and r["median_s"] <= 1))
    r = _ok(workloads.get("scaling"), "core4nb")
    point = r and next((p for p in r["points"] if p["nodes"] == 32), None)
    out.append(_target("scaling efficiency at 32 simulated nodes (embedded)", "≥ 90 %",
                       point and f"{point['efficiency_median']:.0%} ({point['median_s']:.2f} s vs ideal "
                       f"{point['ideal_s']:.2f} s)", point and point["efficiency_median"] >= 0.9))
    r = _ok(workloads.get("queue"), "core4nb-mongo")
    trips = r and r["map"].get("wire_commands_per_job", r["map"]["round_trips_per_job"])
    out.append(_target("mongo round trips per job in a map (wire commands)", "≤ 4",
                       r and f"{trips:.2f} ({r['map']['round_trips_per_job']:.2f} store verb calls)",
                       r and trips <= 4))
    if workloads.get("data"):
        from benchmarks.dataplane import targets

        out += [_target(*t) for t in targets(workloads["data"]["results"])]
    if workloads.get("retention"):
        from benchmarks.retention import targets as retention_targets

        out += [_target(*t) for t in retention_targets(workloads["retention"])]
    if workloads.get("sklearn"):
        from benchmarks.sklearn_bench import targets as sklearn_targets

        out += [_target(*t) for t in sklearn_targets(workloads["sklearn"]["results"])]
    if compared:
        from benchmarks.regression import targets as regression_targets

        out += [_target(*t) for t in regression_targets(compared)]
    for t in out:
        t["met"] = None if t["met"] is None else bool(t["met"])
    return out
