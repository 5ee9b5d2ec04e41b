"""The data workloads: ``arrays_in``, ``arrays_out`` and ``broadcast``, each tool in its own idiom.

- ``arrays_in``: ``map(lambda a: a.sum(), 32 arrays of 8 MB)``
- ``arrays_out``: ``map(make, range(32))``, each call returns an 8 MB array
- ``broadcast``: 32 tasks each sum a slice of ONE large array (100 MB; also 200 MB at ``--size full``):
  ProcessPoolExecutor a ``partial``, loky a closure, joblib its auto-memmapping, Dask
  ``scatter(broadcast=True)``, Ray ``put``, core4nb a closure (naive) and ``share`` (its idiom).

Every (workload, tool) runs in a fresh interpreter (``python -m benchmarks.dataplane one …``), so peak RSS
is that tool's alone. Each repeat uses new data (a store that deduplicates gains nothing from a repeat).
Reported: best and median time, the client's peak RSS beside the data it holds, the workers' peak
USS/PSS (sampled), and for core4nb the store's growth beside the distinct bytes sent.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any

MB = 2**20
TOOLS = ("process", "loky", "joblib", "dask", "ray", "core4nb", "core4nb-share", "core4nb-mongo")
NEEDS = {"loky": "loky", "joblib": "joblib", "dask": "distributed", "ray": "ray", "core4nb-mongo": "nx_27017"}
SIZES = {"full": {"tasks": 32, "array_mb": 8, "broadcast_mb": [100, 200]},
         "tiny": {"tasks": 8, "array_mb": 2, "broadcast_mb": [16]}}
WORKERS = 2


def array_sum(a):
    return float(a.sum())


def make(i, n):
    import numpy as np

    return np.full(n, float(i))


def slice_sum(big, i, tasks):
    step = len(big) // tasks
    return float(big[i * step : (i + 1) * step].sum())


class Sampler:
    """Peak summed USS and PSS of this process's descendants, sampled every 0.2 s."""

    def __init__(self) -> None:
        import psutil

        self._me, self.uss, self.pss = psutil.Process(), 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import psutil

        while not self._stop.wait(0.2):
            uss = pss = 0
            for proc in self._me.children(recursive=True):
                try:
                    info = proc.memory_full_info()
                    uss, pss = uss + info.uss, pss + getattr(info, "pss", 0)
                except psutil.Error:
                    pass
            self.uss, self.pss = max(self.uss, uss), max(self.pss, pss)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _open(tool: str, scratch: Path):
    """(submit-many function, share function or None, close function, store size function)."""
    if tool == "process":
        from concurrent.futures import ProcessPoolExecutor

        ex = ProcessPoolExecutor(WORKERS)
        return (lambda fn, *its: list(ex.map(fn, *its))), None, ex.shutdown, None
    if tool == "loky":
        import loky

        ex = loky.ProcessPoolExecutor(WORKERS)
        return (lambda fn, *its: list(ex.map(fn, *its))), None, ex.shutdown, None
    if tool == "joblib":
        from joblib import Parallel, delayed

        par = Parallel(n_jobs=WORKERS)  # default: auto-memmapping of arrays over 1 MB
        return (lambda fn, *its: par(delayed(fn)(*args) for args in zip(*its, strict=True))), None, lambda: None, None
    if tool == "dask":
        from benchmarks.backends import dask_client

        client, close = dask_client(WORKERS)
        return ((lambda fn, *its: client.gather(client.map(fn, *its, pure=False))),
                (lambda value: client.scatter(value, broadcast=True)), close, None)
    if tool == "ray":
        import ray

        # Its own short temp dir (AF_UNIX socket paths are limited to 107 bytes), removed at close.
        ray_dir = tempfile.mkdtemp(prefix="c4r-", dir="/tmp")
        ray.init(num_cpus=WORKERS, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
                 _temp_dir=ray_dir)
        remotes: dict = {}

        def close_ray() -> None:
            ray.shutdown()
            shutil.rmtree(ray_dir, ignore_errors=True)

        def many(fn, *its):
            remote = remotes.get(fn) or remotes.setdefault(fn, ray.remote(lambda *args, _fn=fn: _fn(*args)))
            return ray.get([remote.remote(*args) for args in zip(*its, strict=True)])

        return many, ray.put, close_ray, None
    from core4nb import Core4Executor

    os.environ["CORE4NB_HOME"] = home = str(scratch / "home")
    os.environ["CORE4NB_KEY_FILE"] = str(scratch / "key")
    server = None
    if tool == "core4nb-mongo":
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        from tests.servers import WireServer

        server = WireServer(scratch / "nx").start()
        os.environ["CORE4NB_BLOB_CACHE"] = str(scratch / "cache")
        ex = Core4Executor(server.url.rstrip("/") + "/bench?collection_prefix=sys_", workers=WORKERS)
    else:
        ex = Core4Executor(workers=WORKERS)

    def close() -> None:
        ex.shutdown(wait=True)
        if server is not None:
            server.stop()

    def size() -> int:
        if server is not None:
            return sum(b.size for b in ex.store.blobs.listing())
        return sum(p.stat().st_size for p in Path(home).rglob("*") if p.is_file())

    share = ex.share if tool == "core4nb-share" else None
    return (lambda fn, *its: list(ex.map(fn, *its))), share, close, size


def run_one(tool: str, workload: str, size: str, repeat: int) -> dict[str, Any]:
    """One tool, one workload, in this (fresh) interpreter."""
    p = SIZES[size]
    scratch = Path(tempfile.mkdtemp(prefix="c4bench-"))
    try:
        return _measure(tool, workload, p, repeat, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _measure(tool: str, workload: str, p: dict[str, Any], repeat: int, scratch: Path) -> dict[str, Any]:
    import numpy as np

    tasks, n = p["tasks"], p["array_mb"] * MB // 8
    many, share, close, store_size = _open(tool, scratch)
    many(array_sum, [np.ones(4)] * WORKERS)  # warm-up: every worker up
    base_rss = _rss_now()
    sampler = Sampler()
    times, correct, sent, held = [], True, 0, 0
    broadcast_mb = p["broadcast_mb"][-1] if workload == "broadcast_big" else p["broadcast_mb"][0]
    for rep in range(repeat):
        if workload == "arrays_in":
            arrays = [np.random.default_rng(rep * 1000 + i).random(n) for i in range(tasks)]
            held, sent = max(held, sum(a.nbytes for a in arrays)), sent + sum(a.nbytes for a in arrays)
            expect = [float(a.sum()) for a in arrays]
            start = time.perf_counter()
            got = many(array_sum, arrays)
            del arrays
        elif workload == "arrays_out":
            start = time.perf_counter()
            got = many(partial(make, n=n), [rep * tasks + i for i in range(tasks)])
            expect = [float(rep * tasks + i) * n for i in range(tasks)]
            correct &= all(g.shape == (n,) for g in got)
            got = [float(g.sum()) for g in got]
            held, sent = max(held, tasks * n * 8), sent + tasks * n * 8
        else:
            big = np.arange(broadcast_mb * MB // 8, dtype=np.float64)
            big += rep  # in place: the client holds one array, not a temporary beside it
            held, sent = max(held, big.nbytes), sent + big.nbytes
            expect = [slice_sum(big, i, tasks) for i in range(tasks)]
            start = time.perf_counter()
            if share is not None:
                handle = share(big)
                got = many(partial(slice_sum, tasks=tasks), [handle] * tasks, range(tasks))
            elif tool == "process":  # stdlib pickle: a partial, the array pickled into every task
                got = many(partial(slice_sum, big, tasks=tasks), range(tasks))
            elif tool in ("joblib",):  # joblib memmaps the argument once
                got = many(partial(slice_sum, tasks=tasks), [big] * tasks, range(tasks))
            else:  # the closure a notebook cell makes
                got = many(lambda i, big=big: slice_sum(big, i, tasks), range(tasks))
        times.append(time.perf_counter() - start)
        big = arrays = handle = None  # this repeat's data goes before the next one's is made
        # to the last bits: a float sum depends on the array's alignment (SIMD), which transport may change
        correct &= len(got) == len(expect) and all(
            math.isclose(g, e, rel_tol=1e-12) for g, e in zip(got, expect, strict=False))
        del got
    sampler.stop()
    growth = store_size() if store_size else None
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    close()
    return {"tool": tool, "workload": workload, "times_s": times, "min_s": min(times),
            "median_s": sorted(times)[len(times) // 2], "correct": bool(correct), "client_peak_rss_mb": peak_rss / MB,
            "client_base_rss_mb": base_rss / MB, "data_held_mb": held / MB, "sent_mb": sent / MB,
            "workers_peak_uss_mb": sampler.uss / MB, "workers_peak_pss_mb": sampler.pss / MB,
            "store_growth_mb": None if growth is None else growth / MB,
            **({"broadcast_mb": broadcast_mb} if workload.startswith("broadcast") else {})}


def _rss_now() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _touch_memory(gb: float = 3.0) -> None:
    """Write (then free) ``gb`` of memory in a throw-away process before each tool runs. On a fresh virtual
    machine the first write to a page the guest never used costs ~3 µs (measured: a 100 MB file write took
    0.32 s into such pages, 0.06 s into pages used before): whichever tool happens to meet new pages pays
    for the machine's history. Touched once, they are what a machine that has run a while hands out."""
    subprocess.run([sys.executable, "-c", f"import numpy; numpy.ones(int({gb} * 2**30 // 8))"], check=False)


def run(size: str, repeat: int, tools: list[str], workloads: list[str], timeout: float = 600) -> list[dict]:
    """Every (workload, tool) in a fresh interpreter, tools interleaved within a workload."""
    out = []
    for workload in workloads:
        for tool in tools:
            if tool == "core4nb-share" and not workload.startswith("broadcast"):
                continue  # share() is the broadcast idiom; elsewhere it is the naive run again
            need = NEEDS.get(tool)
            if need and importlib.util.find_spec(need) is None:
                out.append({"tool": tool, "workload": workload, "status": "skipped",
                            "reason": f"{need} is not installed (pip install -e '.[bench]')"})
                continue
            _touch_memory()
            cmd = [sys.executable, "-m", "benchmarks.dataplane", "one", tool, workload, size, str(repeat)]
            print(f"  {workload} {tool} …", flush=True)
            try:
                done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                                      cwd=Path(__file__).resolve().parent.parent)
                lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
                if done.returncode or not lines:
                    raise RuntimeError((done.stderr or done.stdout).strip().splitlines()[-1][:300])
                out.append({**json.loads(lines[-1]), "status": "ok"})
            except Exception as exc:
                out.append({"tool": tool, "workload": workload, "status": "error",
                            "reason": f"{type(exc).__name__}: {exc}"})
    return out


def workload(ctx: Any, backends: list[Any]) -> dict[str, Any]:
    """``python -m benchmarks data``: every data workload, the tools of ``--backends`` plus joblib and Ray."""
    chosen = {b.key for b in backends}
    tools = [t for t in TOOLS if t in ("joblib", "ray") or t.replace("-share", "") in chosen]
    names = ["arrays_in", "arrays_out", "broadcast"] + (["broadcast_big"] if ctx.size == "full" else [])
    results = run(ctx.size, ctx.repeat, tools, names, timeout=ctx.timeout)
    for r in results:
        r.update(backend=f"{r['workload']}:{r['tool']}", label=r["tool"])
    return {"params": {**SIZES[ctx.size], "workers": WORKERS, "repeat": ctx.repeat}, "results": results}


def best_peer(results: list[dict], workload: str) -> dict | None:
    peers = [r for r in results if r["workload"] == workload and r["status"] == "ok" and r["correct"]
             and not r["tool"].startswith("core4nb")]
    return min(peers, key=lambda r: r["min_s"]) if peers else None


def targets(results: list[dict]) -> list[tuple[str, str, str | None, bool | None]]:
    """(target, goal, measured, met) for the data plane, from one run's results."""
    out = []
    for name in dict.fromkeys(r["workload"] for r in results):
        mine = next((r for r in results if r["workload"] == name and r["tool"] == "core4nb" and r["status"] == "ok"),
                    None)
        peer = best_peer(results, name)
        if mine and peer:
            ratio = mine["min_s"] / peer["min_s"]
            out.append((f"{name}: core4nb (embedded, naive code) vs best peer", "≤ 1.0× time",
                        f"{ratio:.2f}× ({mine['min_s']:.3f} s vs {peer['tool']} {peer['min_s']:.3f} s)", ratio <= 1.0))
            growth = mine["store_growth_mb"] / mine["sent_mb"]
            out.append((f"{name}: store growth", "≤ 1.1× distinct bytes sent",
                        f"{growth:.2f}× ({mine['store_growth_mb']:.0f} MB for {mine['sent_mb']:.0f} MB)",
                        growth <= 1.1))
            rss = (mine["client_peak_rss_mb"] - mine["client_base_rss_mb"]) / mine["data_held_mb"]
            out.append((f"{name}: client peak RSS", "≤ 1.5× the data it holds",
                        f"{rss:.2f}× (+{mine['client_peak_rss_mb'] - mine['client_base_rss_mb']:.0f} MB for "
                        f"{mine['data_held_mb']:.0f} MB)", rss <= 1.5))
    return out


def plot(results: list[dict], path: Path) -> Path | None:
    """Time per tool, one panel per workload (log scale), core4nb's bars highlighted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    names = list(dict.fromkeys(r["workload"] for r in results))
    if not names:
        return None
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.6), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        rows = [r for r in results if r["workload"] == name and r["status"] == "ok"]
        colors = ["#d62728" if r["tool"].startswith("core4nb") else "#7f7f7f" for r in rows]
        ax.barh([r["tool"] for r in rows], [r["min_s"] for r in rows], color=colors)
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # minor labels overlap on short ranges
        ax.invert_yaxis()
        size = next((f", {r['broadcast_mb']} MB" for r in rows if "broadcast_mb" in r), "")
        ax.set_title(f"{name}{size}: best s (log)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def section(w: dict[str, Any]) -> list[str]:
    """The RESULTS.md section of ``python -m benchmarks data``."""
    p = w["params"]
    sizes = " and ".join(map(str, p["broadcast_mb"]))
    return [f"{p['tasks']} tasks, arrays of {p['array_mb']} MB, broadcast of {sizes} MB, "
            f"{p['workers']} workers; each tool in its own idiom and in a fresh interpreter per workload "
            "(`benchmarks/dataplane.py`); best of the repeats, each on new data. × best peer: time over the fastest "
            "non-core4nb tool in the same table. Client RSS: peak of the notebook-side process (the data it holds "
            "in brackets); workers: peak of the summed USS / PSS of every process the tool started. Before each tool, "
            "a throw-away process writes 3 GB of memory: on this fresh virtual machine the first write to a page "
            "never used costs ~3 µs, which made a 100 MB blob write take 0.32 s instead of 0.06 s for whichever "
            "tool met new pages first.", "",
            *table(w["results"])]


def table(results: list[dict]) -> list[str]:
    """RESULTS.md lines: one table per workload, the ratio to the best peer's time beside each."""
    lines = []
    for workload in dict.fromkeys(r["workload"] for r in results):
        rows = [r for r in results if r["workload"] == workload]
        peers = [r["min_s"] for r in rows if r["status"] == "ok" and not r["tool"].startswith("core4nb")]
        best = min(peers) if peers else None
        size = next((f" ({r['broadcast_mb']} MB)" for r in rows if "broadcast_mb" in r), "")
        lines += [f"### {workload}{size}", "",
                  "| tool | best s | median s | × best peer | client peak RSS MB (data held) "
                  "| workers peak USS / PSS MB | store growth MB (sent) | correct |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in rows:
            if r["status"] != "ok":
                lines.append(f"| {r['tool']} | {r['status']}: {r['reason']} | | | | | | |")
                continue
            ratio = f"{r['min_s'] / best:.2f}×" if best else "—"
            growth = "—" if r["store_growth_mb"] is None else f"{r['store_growth_mb']:.0f} ({r['sent_mb']:.0f})"
            lines.append(f"| {r['tool']} | {r['min_s']:.3f} | {r['median_s']:.3f} | {ratio} | "
                         f"{r['client_peak_rss_mb']:.0f} ({r['data_held_mb']:.0f}) | "
                         f"{r['workers_peak_uss_mb']:.0f} / {r['workers_peak_pss_mb']:.0f} | {growth} | "
                         f"{'yes' if r['correct'] else 'NO'} |")
        lines.append("")
    return lines


def main(argv: list[str]) -> int:
    if argv[:1] == ["one"]:
        tool, workload, size, repeat = argv[1:5]
        print(json.dumps(run_one(tool, workload, size, int(repeat))))
        return 0
    import argparse

    parser = argparse.ArgumentParser(prog="python -m benchmarks.dataplane", description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=list(SIZES), default="full")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--tools", default=",".join(TOOLS))
    parser.add_argument("--workloads", default="arrays_in,arrays_out,broadcast,broadcast_big")
    parser.add_argument("--json", type=Path, default=Path(__file__).resolve().parent / "dataplane.json")
    args = parser.parse_args(argv)
    big_too = len(SIZES[args.size]["broadcast_mb"]) > 1
    workloads = [w for w in args.workloads.split(",") if w != "broadcast_big" or big_too]
    results = run(args.size, args.repeat, args.tools.split(","), workloads)
    args.json.write_text(json.dumps({"size": args.size, "repeat": args.repeat, "loadavg": os.getloadavg(),
                                     "results": results}, indent=1))
    print("\n".join(table(results)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
