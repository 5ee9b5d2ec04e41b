"""PNG plots of a results file (matplotlib, Agg backend): one per workload."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import NullFormatter, ScalarFormatter

CORE4NB = "#d62728"
PEER = "#1f77b4"
SERIAL = "#7f7f7f"


def _ok(workload: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in workload["results"] if r["status"] == "ok"]


def _color(key: str) -> str:
    return CORE4NB if key.startswith("core4nb") else SERIAL if key == "serial" else PEER


def _short(label: str) -> str:
    return (label.replace("concurrent.futures.", "").replace(" (local cluster, load-balanced view)", "")
            .replace(" (LocalCluster, processes)", "").replace("mongo wire-protocol test server", "mongo wire server")
            .replace(" (tuned: chunksize=100)", "\n(chunksize=100)"))


def _bars(ax: Any, rows: list[dict[str, Any]], value: str, best: str | None, fmt: str) -> None:
    labels = [_short(r["label"]) for r in rows]
    values = [r[value] for r in rows]
    y = range(len(rows))
    ax.barh(y, values, color=[_color(r["backend"]) for r in rows])
    if best:
        ax.plot([r[best] for r in rows], list(y), "k|", markersize=14)
    for i, (r, v) in enumerate(zip(rows, values, strict=True)):
        at = max(v, r[best]) if best else v  # right of the bar and of its best-run mark
        ax.annotate(fmt.format(v), (at, i), xytext=(6, 0), textcoords="offset points", va="center", fontsize=8)
    ax.set_yticks(list(y), labels, fontsize=8)
    ax.invert_yaxis()
    ax.margins(x=0.18)


def bar_plot(workload: dict[str, Any], value: str, best: str | None, title: str, xlabel: str, fmt: str,
             path: Path, *, log: bool = False, reference: float | None = None,
             reference_label: str = "core4nb target") -> Path | None:
    rows = _ok(workload)
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(8, 0.5 * len(rows) + 1.6))
    _bars(ax, rows, value, best, fmt)
    if log:
        ax.set_xscale("log")
    if reference is not None:
        ax.axvline(reference, color="k", linestyle="--", linewidth=1)
        ax.annotate(reference_label, (reference, 0.0), xycoords=("data", "axes fraction"), xytext=(3, 3),
                    textcoords="offset points", fontsize=7, color="k")
    ax.set_title(title + ("; | = best run" if best else ""), fontsize=10)
    ax.set_xlabel(xlabel)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def scaling_plot(workload: dict[str, Any], path: Path) -> Path | None:
    rows = [r for r in workload["results"] if r.get("points")]  # a failed store keeps the points it measured
    if not rows:
        return None
    fig, (wall, eff) = plt.subplots(1, 2, figsize=(11, 4.4))
    aws, params = workload["core4os_aws"], workload["params"]
    measured = sorted({p["nodes"] for r in rows for p in r["points"]})
    nodes = sorted(set(measured) | set(aws["nodes"]))
    wall.plot(measured, [params["jobs"] * params["sleep_s"] / k for k in measured], "k--",
              label=f"ideal ({params['jobs']} × {params['sleep_s']} s / k)")
    for r, marker in zip(rows, "os", strict=False):
        ks = [p["nodes"] for p in r["points"]]
        wall.plot(ks, [p["median_s"] for p in r["points"]], marker + "-", label=_short(r["label"]))
        eff.plot(ks, [100 * p["efficiency_median"] for p in r["points"]], marker + "-", label=_short(r["label"]))
    eff.plot(aws["nodes"], [100 * e for e in aws["efficiency"]], "^:", color="#2ca02c",
             label="core4os on AWS (primes, vs 1 node)")
    eff.axhline(100, color="k", linestyle="--", linewidth=1)
    eff.axhline(90, color="grey", linestyle=":", linewidth=1)
    eff.annotate("target 90 %", (nodes[-1], 90), xytext=(-50, -12), textcoords="offset points", fontsize=8)
    for ax, ks in ((wall, measured), (eff, nodes)):
        ax.set_xscale("log", base=2)
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.set_xlabel("worker nodes (1 process each)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    wall.set_yscale("log")
    wall.set_yticks([params["jobs"] * params["sleep_s"] / k for k in measured])
    wall.yaxis.set_major_formatter(ScalarFormatter())
    wall.yaxis.set_minor_formatter(NullFormatter())
    wall.set_ylabel("wall time, s (median)")
    wall.set_title(f"{workload['params']['jobs']} jobs × {workload['params']['sleep_s']} s sleep", fontsize=10)
    eff.set_ylabel("efficiency, % of ideal")
    eff.set_ylim(0, max(115, 5 + max(100 * p["efficiency_median"] for r in rows for p in r["points"])))
    eff.set_title("efficiency vs ideal; core4os's AWS figures for reference", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_plots(workloads: dict[str, Any], outdir: Path, workers: int) -> dict[str, Path]:
    outdir.mkdir(parents=True, exist_ok=True)
    made: dict[str, Path | None] = {}
    if "primes" in workloads:
        made["primes"] = bar_plot(workloads["primes"], "speedup_median", "speedup_best",
                                  f"primes: speed-up over serial with {workers} workers (median)",
                                  "× serial", "{:.2f}×", outdir / "primes_speedup.png", reference=workers,
                                  reference_label=f"ideal {workers}×")
    if "overhead" in workloads:
        made["overhead"] = bar_plot(workloads["overhead"], "items_per_s_median", "items_per_s_best",
                                    "overhead: map of a trivial function, items per second (log scale)",
                                    "items / s", "{:,.0f}", outdir / "overhead.png", log=True, reference=100_000)
    if "latency" in workloads:
        made["latency"] = bar_plot(workloads["latency"], "median_ms", "min_ms",
                                   "latency: submit → result round trip, median ms (log scale)", "ms", "{:.2f}",
                                   outdir / "latency.png", log=True, reference=5)
    if "startup" in workloads:
        made["startup"] = bar_plot(workloads["startup"], "median_s", "min_s",
                                   "startup: executor with 2 workers → first result", "s", "{:.2f}",
                                   outdir / "startup.png", reference=1)
    if "scaling" in workloads:
        made["scaling"] = scaling_plot(workloads["scaling"], outdir / "scaling.png")
    if "data" in workloads:
        from benchmarks.dataplane import plot

        made["data"] = plot(workloads["data"]["results"], outdir / "data.png")
    if "sklearn" in workloads:
        made["sklearn"] = bar_plot(workloads["sklearn"], "median_s", "min_s",
                                   "sklearn: GridSearchCV of a random forest, median wall s", "s",
                                   "{:.2f}", outdir / "sklearn.png")
    return {k: v for k, v in made.items() if v is not None}
