"""This checkout against an earlier version, as ``benchmarks.compare`` measured them side by side: the
table it prints, the record it keeps (``comparison.json``) and the "no regression" targets RESULTS.md
shows from it."""

from __future__ import annotations

import statistics
from typing import Any

#: What each workload is judged by: (key in a backend's entry, unit, higher is better).
METRICS = {"latency": ("median_ms", "ms", False), "overhead": ("min_s", "s", False), "primes": ("min_s", "s", False),
           "startup": ("median_s", "s", False), "scaling": ("efficiency_best", "efficiency at the most nodes", True)}
#: A ratio within this of 1 (best of the interleaved runs against best) is no regression: the runs of one
#: tree on this shared machine spread by ±20 %, the best of several by a few per cent.
TOLERANCE = 0.05


def metric(workload: str, entry: dict[str, Any]) -> float | None:
    key = METRICS[workload][0]
    if workload == "scaling":  # the efficiency at the largest node count measured
        points = [p for p in entry.get("points", []) if p.get(key) is not None]
        return max(points, key=lambda p: p["nodes"])[key] if points else None
    return entry.get(key)


def rows(seen: dict[tuple[str, str, str], list[float]], ref: str) -> list[dict[str, Any]]:
    """One row per workload and backend: both trees' figures (``seen[workload, backend, tree]``)."""
    return [{"workload": w, "backend": b, "ref": seen.get((w, b, ref), []), "this": seen.get((w, b, "this"), [])}
            for w, b in sorted({(w, b) for w, b, _ in seen})]


def ratios(row: dict[str, Any]) -> tuple[float, float] | None:
    """(best, median) of this tree ÷ the earlier one; None when a tree gave no figure."""
    before, after = row["ref"], row["this"]
    if not before or not after:
        return None
    best = _best(row["workload"])
    return best(after) / best(before), statistics.median(after) / statistics.median(before)


def table(compared: list[dict[str, Any]], ref: str) -> list[str]:
    out = [f"| workload | backend | {ref} best / median | this best / median | this ÷ {ref} (best, median) |",
           "|---|---|---|---|---|"]
    for row in compared:
        label, both = f"{row['workload']} ({METRICS[row['workload']][1]})", ratios(row)
        if both is None:  # a tree whose runs gave no figure is shown, not silently left out
            out.append(f"| {label} | {row['backend']} | {_figures(row['ref'])} | {_figures(row['this'])} | — |")
            continue
        best = _best(row["workload"])
        out.append(f"| {label} | {row['backend']} | {_pair(row['ref'], best)} | {_pair(row['this'], best)} | "
                   f"{both[0]:.2f} / {both[1]:.2f} |")
    return out


def targets(record: dict[str, Any]) -> list[tuple[str, str, str | None, bool | None]]:
    """(target, goal, measured, met) per compared workload and backend."""
    out = []
    for row in record["rows"]:
        higher = METRICS[row["workload"]][2]
        goal = (f"≥ {1 - TOLERANCE:.2f}×" if higher else f"≤ {1 + TOLERANCE:.2f}×") + \
            f" {record['ref']} (best of {row['reps']} interleaved runs)"
        both = ratios(row)
        measured = both and f"{both[0]:.2f}× best, {both[1]:.2f}× median"
        met = both and (both[0] >= 1 - TOLERANCE if higher else both[0] <= 1 + TOLERANCE)
        out.append((f"no regression: {row['workload']} on {row['backend']} vs `{record['ref_commit']}`", goal,
                    measured, met))
    return out


def section(record: dict[str, Any]) -> list[str]:
    """The comparison for RESULTS.md: how it was run (a command per run whose rows it keeps), then the table."""
    runs: dict[tuple, list[str]] = {}
    for row in record["rows"]:
        runs.setdefault((row["reps"], row["finished"], *row["loadavg"]), []).append(row["workload"])
    commands = [f"- `python -m benchmarks.compare {record['ref']} {' '.join(dict.fromkeys(names))} --reps {reps} "
                f"--record`: finished {finished}; 1-minute load average {before} before, {after} after."
                for (reps, finished, before, after), names in runs.items()]
    return [f"Commit `{record['commit']}` against `{record['ref_commit']}`: each workload's benchmark from both trees "
            "in fresh interpreters, alternating (the order rotates each repetition), size "
            f"`{record['size']}`. Lower is better, except for scaling's efficiency.", "", *commands, "",
            *table(record["rows"], record["ref"])]


def _best(workload: str) -> Any:
    """The best of a workload's figures: the highest efficiency, the lowest time."""
    return max if METRICS[workload][2] else min


def _pair(values: list[float], best: Any) -> str:
    return f"{best(values):.4g} / {statistics.median(values):.4g}"


def _figures(values: list[float] | None) -> str:
    return "no result" if not values else f"{min(values):.4g} … {max(values):.4g}"
