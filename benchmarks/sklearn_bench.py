"""The ``sklearn`` workload: ``GridSearchCV`` of a ``RandomForestClassifier`` through each tool's joblib backend.

- data: ``make_classification`` with 20,000 samples × 50 features (tiny: 2,000 × 20)
- grid: 24 candidates × 3 folds = 72 fits (tiny: 4 × 3), ``n_jobs`` = the workers (2)
- tools: joblib's default loky backend, Dask's (``parallel_config(backend="dask")`` on a ``LocalCluster``), Ray's
  (``ray.util.joblib.register_ray``), core4nb's (``import core4nb.joblib``; embedded, and on the MongoDB
  wire-protocol test server when ``core4nb-mongo`` is among ``--backends``)

Every tool runs in a fresh interpreter (``python -m benchmarks.sklearn_bench one TOOL SIZE REPEAT``): start-up
(cluster or executor, and a warm-up call so every worker is up) is timed apart from the search; the search is
repeated and reported as best and median wall time. Correct means the same ``cv_results_`` scores as loky's, to
the last bit (every tool fits the same seeded forests).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TOOLS = ("loky", "dask", "ray", "core4nb", "core4nb-mongo")
NEEDS = {"dask": "distributed", "ray": "ray", "core4nb-mongo": "nx_27017"}
LABELS = {"loky": "joblib loky (default backend)", "dask": "Dask joblib backend (LocalCluster)",
          "ray": "Ray joblib backend", "core4nb": "core4nb (embedded)",
          "core4nb-mongo": "core4nb (mongo wire server, 2 local workers)"}
SIZES: dict[str, dict[str, Any]] = {
    "full": {"samples": 20_000, "features": 50, "folds": 3,
             "grid": {"n_estimators": [20, 40], "max_depth": [8, 16, None], "max_features": ["sqrt", 0.2],
                      "min_samples_leaf": [1, 4]}},
    "tiny": {"samples": 2_000, "features": 20, "folds": 3, "grid": {"n_estimators": [5, 10], "max_depth": [4, None]}},
}
WORKERS = 2
#: Every tool's workers get one thread each, as loky gives its workers (cpu_count // n_jobs on 2 cores).
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def _warm_up(x: int) -> int:
    """Import what a fit needs, in each worker, before the clock runs (a short nap spreads the calls)."""
    import sklearn.ensemble
    import sklearn.model_selection  # noqa: F401

    time.sleep(0.05)
    return x


def _open(tool: str, scratch: Path) -> tuple[dict[str, Any], Any]:
    """(``parallel_config`` arguments, close function) for one tool, started and warmed up."""
    import joblib

    if tool == "loky":
        config, close = {"backend": "loky"}, lambda: None
    elif tool == "dask":
        import dask

        from benchmarks.backends import dask_client

        dask.config.set({"temporary-directory": str(scratch)})  # its scratch space goes with ours
        _client, close = dask_client(WORKERS)  # the default client, which joblib's dask backend finds

        config = {"backend": "dask"}
    elif tool == "ray":
        import ray
        from ray.util.joblib import register_ray

        # Ray's session files hold sockets (at most 107 bytes a path): a short directory of its own, removed after.
        session = tempfile.mkdtemp(prefix="c4ray-", dir="/tmp")
        ray.init(num_cpus=WORKERS, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
                 _temp_dir=session)
        register_ray()

        def close() -> None:
            ray.shutdown()
            shutil.rmtree(session, ignore_errors=True)

        config = {"backend": "ray"}
    else:
        import core4nb.joblib  # noqa: F401  (registers the backend)
        from core4nb import Core4Executor

        os.environ["CORE4NB_HOME"] = str(scratch / "home")
        os.environ["CORE4NB_KEY_FILE"] = str(scratch / "key")
        server, url = None, None
        if tool == "core4nb-mongo":
            sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
            from tests.servers import WireServer

            server = WireServer(scratch / "nx").start()
            os.environ["CORE4NB_BLOB_CACHE"] = str(scratch / "cache")
            url = server.url.rstrip("/") + "/bench?collection_prefix=sys_"
        executor = Core4Executor(url, workers=WORKERS)

        def close() -> None:
            executor.shutdown(wait=True)
            if server is not None:
                server.stop()

        config = {"backend": "core4nb", "url": executor.url}
    with joblib.parallel_config(**config):  # every worker up, with scikit-learn imported
        joblib.Parallel(n_jobs=WORKERS, batch_size=1)(joblib.delayed(_warm_up)(i) for i in range(4 * WORKERS))
    return config, close


def run_one(tool: str, size: str, repeat: int) -> dict[str, Any]:
    """One tool in this (fresh) interpreter: start-up, then ``repeat`` grid searches."""
    import joblib
    from sklearn.datasets import make_classification
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.model_selection import GridSearchCV

    p = SIZES[size]
    X, y = make_classification(n_samples=p["samples"], n_features=p["features"], n_informative=p["features"] // 2,
                               random_state=0)
    scratch = Path(tempfile.mkdtemp(prefix="c4sk-"))
    start = time.perf_counter()
    config, close = _open(tool, scratch)
    startup = time.perf_counter() - start
    times, search = [], None
    try:
        for _ in range(repeat):
            model = RandomForestClassifier(random_state=0)
            search = GridSearchCV(model, p["grid"], cv=p["folds"], n_jobs=WORKERS)
            start = time.perf_counter()
            with joblib.parallel_config(**config):
                search.fit(X, y)
            times.append(time.perf_counter() - start)
    finally:
        close()
        shutil.rmtree(scratch, ignore_errors=True)
    return {"tool": tool, "startup_s": startup, "times_s": times, "min_s": min(times),
            "median_s": sorted(times)[len(times) // 2], "best_params": search.best_params_,
            "best_score": float(search.best_score_),
            "scores": [float(s) for s in search.cv_results_["mean_test_score"]]}


def run(size: str, repeat: int, tools: list[str], timeout: float = 600) -> list[dict[str, Any]]:
    """Each tool in a fresh interpreter; correct = the same scores as loky's."""
    env = {**os.environ, **dict.fromkeys(THREAD_VARS, "1")}
    out = []
    for tool in tools:
        entry = {"backend": tool, "tool": tool, "label": LABELS[tool]}
        need = NEEDS.get(tool)
        if need and importlib.util.find_spec(need) is None:
            out.append({**entry, "status": "skipped", "reason": f"{need} is not installed (pip install -e '.[bench]')"})
            continue
        print(f"  {tool} …", flush=True)
        cmd = [sys.executable, "-m", "benchmarks.sklearn_bench", "one", tool, size, str(repeat)]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env,
                                  cwd=Path(__file__).resolve().parent.parent)
            lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
            if done.returncode or not lines:
                raise RuntimeError((done.stderr or done.stdout or "no output").strip().splitlines()[-1][:300])
            out.append({**entry, **json.loads(lines[-1]), "status": "ok"})
        except Exception as exc:
            out.append({**entry, "status": "error", "reason": f"{type(exc).__name__}: {exc}"})
    loky = next((r for r in out if r["tool"] == "loky" and r["status"] == "ok"), None)
    for r in out:
        if r["status"] == "ok":
            same = loky is not None and (r["scores"], r["best_params"]) == (loky["scores"], loky["best_params"])
            r["correct"] = same
            r["vs_loky"] = r["min_s"] / loky["min_s"] if loky else None
    return out


def workload(ctx: Any, backends: list[Any]) -> dict[str, Any]:
    """``python -m benchmarks sklearn``: loky, Dask and Ray always, core4nb's stores among ``--backends``."""
    chosen = {b.key for b in backends}
    tools = [t for t in TOOLS if not t.startswith("core4nb") or t in chosen]
    p = SIZES[ctx.size]
    candidates = 1
    for values in p["grid"].values():
        candidates *= len(values)
    return {"params": {"samples": p["samples"], "features": p["features"], "candidates": candidates,
                       "folds": p["folds"], "grid": p["grid"], "workers": WORKERS, "repeat": ctx.repeat},
            "results": run(ctx.size, ctx.repeat, tools, timeout=ctx.timeout)}


def targets(results: list[dict[str, Any]]) -> list[tuple[str, str, str | None, bool | None]]:
    """(target, goal, measured, met): core4nb within 5 % of loky, and faster than Dask and Ray."""
    ok = {r["tool"]: r for r in results if r["status"] == "ok"}
    mine, loky = ok.get("core4nb"), ok.get("loky")
    out: list[tuple[str, str, str | None, bool | None]] = []
    if mine and loky:
        ratio = mine["min_s"] / loky["min_s"]
        out.append(("sklearn: GridSearchCV on core4nb vs joblib's loky", "≤ 1.05× time (best)",
                    f"{ratio:.2f}× ({mine['min_s']:.2f} s vs {loky['min_s']:.2f} s)",
                    ratio <= 1.05 and mine["correct"]))
    else:
        out.append(("sklearn: GridSearchCV on core4nb vs joblib's loky", "≤ 1.05× time (best)", None, None))
    peers = [ok[t] for t in ("dask", "ray") if t in ok]
    if mine and peers:
        slowest_win = all(mine["min_s"] < p["min_s"] for p in peers)
        measured = ", ".join(f"{p['tool']} {p['min_s']:.2f} s" for p in peers)
        out.append(("sklearn: core4nb vs Dask's and Ray's joblib backends", "faster than each (best)",
                    f"core4nb {mine['min_s']:.2f} s; {measured}", slowest_win))
    else:
        out.append(("sklearn: core4nb vs Dask's and Ray's joblib backends", "faster than each (best)", None, None))
    return out


def section(w: dict[str, Any]) -> list[str]:
    """The RESULTS.md section of ``python -m benchmarks sklearn``."""
    p = w["params"]
    lines = [f"`GridSearchCV(RandomForestClassifier(random_state=0), grid, cv={p['folds']}, n_jobs={p['workers']})` on "
             f"`make_classification` ({p['samples']:,} × {p['features']}), {p['candidates']} candidates × "
             f"{p['folds']} folds, grid `{json.dumps(p['grid'])}`, each tool's joblib backend with {p['workers']} "
             f"workers of one thread, in a fresh interpreter per tool (`benchmarks/sklearn_bench.py`); start-up "
             "(cluster or executor and a warm-up call) timed apart. *Correct*: the same `cv_results_` scores and best "
             "parameters as loky's.", "",
             "| tool | start-up s | best s | median s | × loky (best) | best score | correct |",
             "|---|---|---|---|---|---|---|"]
    for r in w["results"]:
        if r["status"] != "ok":
            lines.append(f"| {r['label']} | **{r['status']}**: {r.get('reason', '')} | | | | | |".replace("\n", " "))
            continue
        ratio = "—" if r.get("vs_loky") is None else f"{r['vs_loky']:.2f}×"
        lines.append(f"| {r['label']} | {r['startup_s']:.2f} | {r['min_s']:.2f} | {r['median_s']:.2f} | {ratio} | "
                     f"{r['best_score']:.4f} | {'yes' if r['correct'] else '**NO**'} |")
    return lines


if __name__ == "__main__":
    if sys.argv[1:2] == ["one"]:
        tool, size, repeat = sys.argv[2:5]
        print(json.dumps(run_one(tool, size, int(repeat)), default=str))
        sys.exit(0)
    sys.exit("usage: python -m benchmarks sklearn [--size tiny|full]  (this module runs one tool: "
             "python -m benchmarks.sklearn_bench one TOOL SIZE REPEAT)")
