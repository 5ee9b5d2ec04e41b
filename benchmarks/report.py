"""``RESULTS.md`` from a results file: the machine, the targets, a table and a plot per workload."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks import dataplane, regression, retention, sklearn_bench
from benchmarks.targets import evaluate

#: ``benchmarks.compare --record`` keeps its comparison in this file beside results.json.
COMPARISON = "comparison.json"

Row = Callable[[dict[str, Any]], list[str]]


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows)]


def tool_table(workload: dict[str, Any], header: list[str], row: Row) -> list[str]:
    rows = []
    for r in workload["results"]:
        if r["status"] == "ok":
            rows.append([r["label"], *row(r)])
        else:
            rows.append([r["label"], f"**{r['status']}**: {r.get('reason', '')}".replace("|", "/"),
                         *[""] * (len(header) - 2)])
    return table(["tool", *header[1:]], rows)


def yes(value: Any) -> str:
    return "yes" if value else "**NO**"


def primes(w: dict[str, Any]) -> list[str]:
    p = w["params"]
    return [f"Primes in [{p['range'][0]:,}, {p['range'][1]:,}) by trial division, {p['chunks']} equal chunks "
            f"(one task each, submitted at once), {p['workers']} workers, {p['repeat']} runs; "
            f"expected count {w['expected']:,}.", "",
            *tool_table(w, ["tool", "start-up s", "min s", "median s", "speed-up (median)", "speed-up (best)",
                            "count correct"],
                        lambda r: [f"{r['startup_s']:.2f}", f"{r['min_s']:.2f}", f"{r['median_s']:.2f}",
                                   f"{r.get('speedup_median', 0):.2f}×", f"{r.get('speedup_best', 0):.2f}×",
                                   yes(r["correct"])])]


def overhead(w: dict[str, Any]) -> list[str]:
    p = w["params"]
    return [f"`map(identity, range(n))` with each tool's defaults, n = {p['items']:,} unless the tool is too slow "
            f"to map that many {w['run']['repeat']}× within {p['budget_s']:g} s (then fewer: see *items*).", "",
            *tool_table(w, ["tool", "items", "min s", "median s", "items/s (median)", "items/s (best)", "correct"],
                        lambda r: [f"{r['items']:,}", f"{r['min_s']:.3f}", f"{r['median_s']:.3f}",
                                   f"{r['items_per_s_median']:,.0f}", f"{r['items_per_s_best']:,.0f}",
                                   yes(r["correct"])])]


def latency(w: dict[str, Any]) -> list[str]:
    p = w["params"]
    return [f"{p['calls']} sequential `submit(identity, i).result()` round trips, {p['workers']} workers; "
            "median per run, then min and median over runs.", "",
            *tool_table(w, ["tool", "median ms", "best run's median ms", "p95 ms", "correct"],
                        lambda r: [f"{r['median_ms']:.2f}", f"{r['min_ms']:.2f}", f"{r['p95_ms']:.2f}",
                                   yes(r["correct"])])]


def startup(w: dict[str, Any]) -> list[str]:
    return [f"A fresh executor with {w['params']['workers']} workers → first result of a trivial call; "
            "shut-down timed apart.", "",
            *tool_table(w, ["tool", "min s", "median s", "shut-down s (median)"],
                        lambda r: [f"{r['min_s']:.2f}", f"{r['median_s']:.2f}", f"{r['shutdown_median_s']:.2f}"])]


def scaling(w: dict[str, Any]) -> list[str]:
    p = w["params"]
    out = [f"k simulated worker nodes (`python -m core4nb worker URL --processes 1`) on this machine, "
           f"{p['jobs']} jobs that each sleep {p['sleep_s']} s, enqueued at once; wall time from the enqueue until "
           "the last result is in (`Core4Executor(url, workers=0).map(nap, …, chunksize=1)`); *last job done*: the "
           "last job's finish time in the queue. Sleeping jobs hold a node without a core, so this measures the queue. "
           "All nodes share this machine, so they hear its doorbells on both stores; on MongoDB, nodes on other "
           "machines would find new work by polling (every ≤ 0.1 s) instead.",
           ""]
    for r in w["results"]:
        out.append(f"**{r['label']}**" + ("" if r["status"] == "ok" else f": {r['status']}: {r.get('reason')}"))
        out.append("")
        if r.get("points"):
            out += table(["nodes", "min s", "median s", "ideal s", "efficiency (median)", "efficiency (best)",
                          "first claim s", "last job done s (best)", "correct"],
                         [[str(q["nodes"]), f"{q['min_s']:.2f}", f"{q['median_s']:.2f}", f"{q['ideal_s']:.2f}",
                           f"{q['efficiency_median']:.0%}", f"{q['efficiency_best']:.0%}",
                           f"{q['first_claim_s']:.3f}", f"{q['last_finish_s']:.2f}", yes(q["correct"])]
                          for q in r["points"]])
            out.append("")
    aws = w["core4os_aws"]
    out += [f"Reference, {aws['label']}, efficiency relative to 1 node:", "",
            *table(["nodes", "wall s", "efficiency"],
                   [[str(k), f"{t:g}", f"{e:.0%}"] for k, t, e in zip(aws["nodes"], aws["wall_s"], aws["efficiency"],
                                                                      strict=True)])]
    return out


def queue(w: dict[str, Any]) -> list[str]:
    out = ["Store verbs counted by wrapping the store class in the benchmark process (client and an in-process "
           f"worker node with {w['params']['node_processes']} processes); MongoDB wire commands counted by a "
           "pymongo command listener. *store*: one claimant claims and finishes every job (no execution). "
           "*map*: enqueue n trivial jobs, run them, fetch the results. Store calls per job count the verbs that reach "
           "the database (`listen`, a doorbell socket, and `close` are left out).", ""]
    rows = []
    for r in w["results"]:
        if r["status"] != "ok":
            rows.append([r["label"], f"**{r['status']}**: {r.get('reason', '')}", "", "", "", "", ""])
            continue
        for phase in ("store", "map"):
            m = r[phase]
            rate = m["claims_per_s"] if phase == "store" else m["jobs_per_s"]
            by_role = ", ".join(f"{role} {v:.2f}" for role, v in m["round_trips_per_job_by_role"].items())
            wire = f"{m['wire_commands_per_job']:.2f}" if "wire_commands_per_job" in m else "—"
            calls = "; ".join(f"{role}: " + ", ".join(f"{k} {v}" for k, v in c.items())
                              for role, c in m["calls"].items())
            rows.append([r["label"], phase, f"{m['jobs']:,}", f"{rate:,.0f}", f"{m['round_trips_per_job']:.2f} "
                         f"({by_role})", wire, calls])
    return out + table(["store", "phase", "jobs", "claims/s (store) or jobs/s (map)", "store calls per job",
                        "wire commands per job", "calls"], rows)


SECTIONS = {"primes": primes, "overhead": overhead, "latency": latency, "startup": startup, "scaling": scaling,
            "queue": queue, "data": dataplane.section,
            "retention": retention.section, "sklearn": sklearn_bench.section}


def machine_lines(meta: dict[str, Any]) -> list[str]:
    versions = ", ".join(f"{k} {v}" for k, v in meta["versions"].items() if v)
    missing = [k for k, v in meta["versions"].items() if not v]
    return [f"- **Machine**: {meta['cores']} cores ({meta['usable_cores']} usable), {meta['memory_gb']} GB memory, "
            f"{meta['processor']}; {meta['platform']}",
            f"- **Python** {meta['python']} ({meta['implementation']}); core4nb at commit "
            f"`{meta.get('commit') or 'unknown'}` in the latest run (each workload's section names its own)",
            f"- **Versions**: {versions}" + (f"; not installed: {', '.join(missing)}" if missing else ""),
            f"- **Run**: size `{meta['size']}`, {meta['workers']} workers per tool, {meta['repeat']} runs per "
            f"measurement; load average at start {meta['loadavg_at_start']}; updated {meta['updated']}",
            "- A shared machine: other work may run alongside; compare tools within one table (one run), "
            "not across runs."]


def write_report(data: dict[str, Any], outdir: Path) -> list[Path]:
    from benchmarks.plots import write_plots

    workloads = data["workloads"]
    plots = write_plots(workloads, outdir / "plots", data["meta"]["workers"])
    compared = json.loads((outdir / COMPARISON).read_text()) if (outdir / COMPARISON).exists() else None
    lines = ["# core4nb benchmarks", "",
             "Generated by `python -m benchmarks all` (see `benchmarks/__init__.py`); the numbers are in "
             "`results.json`. Each tool runs the same functions (`benchmarks/work.py`) with the same worker count; "
             "start-up is timed apart from the work.", "", *machine_lines(data["meta"]), "",
             "## Targets for core4nb", "", *table(["target", "goal", "measured", "met"],
                                                   [[t["target"], t["goal"], t["measured"],
                                                     "—" if t["met"] is None else yes(t["met"])]
                                                    for t in evaluate(workloads, compared)]), ""]
    if compared:
        lines += ["## Against an earlier version", "", *regression.section(compared), ""]
    for name, section in SECTIONS.items():
        if name not in workloads:
            continue
        lines += [f"## {name}", "", *section(workloads[name]), ""]
        if name in plots:
            lines += [f"![{name}](plots/{plots[name].name})", ""]
        run = workloads[name]["run"]
        load = run.get("loadavg_1min")
        lines += [f"*Run {run['finished']}, {run['seconds']} s, core4nb at commit `{run.get('commit') or 'unknown'}`"
                  + (f"; 1-minute load average {load[0]} before, {load[1]} after (2 cores)" if load else "")
                  + ".*", ""]
    path = outdir / "RESULTS.md"
    path.write_text("\n".join(lines))
    return [path, *plots.values()]
