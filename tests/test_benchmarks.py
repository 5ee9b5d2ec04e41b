"""Smoke test of ``python -m benchmarks``: every workload at tiny size, serial +
ProcessPoolExecutor + core4nb on its embedded store.

Benchmarks, not tests: only keys and sane, correct values are checked, never timings.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.nodes import PATIENCE

ROOT = Path(__file__).resolve().parent.parent
WORKLOADS = ["primes", "overhead", "latency", "startup", "scaling", "queue", "data", "retention", "sklearn"]


BACKENDS = ["serial", "process", "core4nb"]
# The tiny run of every workload took over 280 s on a loaded 2-core machine: beyond pytest's 300 s per test.
pytestmark = pytest.mark.timeout(9 * PATIENCE)


def run_benchmarks(tmp: Path, *args: str, env: dict[str, str] | None = None,
                   timeout: float = 8 * PATIENCE) -> dict[str, Any]:
    """Run the CLI in a fresh interpreter (it sets up its own environment); return its JSON."""
    scratch = tmp / "scratch"
    scratch.mkdir(parents=True, exist_ok=True)
    full_env = {**os.environ, "TMPDIR": str(scratch), **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "benchmarks", *args, "--out", str(tmp), "--json",
                           str(tmp / "results.json")], cwd=ROOT, env=full_env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"benchmarks failed:\n{proc.stdout}\n{proc.stderr}"
    # core4nb's per-user doorbell directory may stay (shared by every queue); it must be empty.
    left = [p for p in scratch.iterdir() if not (p.name.startswith("core4nb-bells-") and not any(p.iterdir()))]
    assert left == [], "the benchmark left files behind in its temp directory"
    assert not processes_mentioning(str(scratch)), "the benchmark left processes behind"
    return json.loads((tmp / "results.json").read_text())


def processes_mentioning(text: str) -> list[int]:
    psutil = pytest.importorskip("psutil")
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        if any(text in part for part in proc.info["cmdline"] or ()):
            found.append(proc.info["pid"])
    return found


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    out = tmp_path_factory.mktemp("bench")
    data = run_benchmarks(out, "all", "--size", "tiny", "--repeat", "1", "--backends", ",".join(BACKENDS))
    return data, out


def results(data: dict[str, Any], workload: str) -> dict[str, dict[str, Any]]:
    return {r["backend"]: r for r in data["workloads"][workload]["results"]}


def test_every_workload_ran_with_every_backend(tiny: tuple[dict[str, Any], Path]) -> None:
    data, _ = tiny
    assert set(data["workloads"]) == set(WORKLOADS)
    for name in ["primes", "overhead", "latency", "startup"]:
        by_backend = results(data, name)
        assert set(BACKENDS) <= set(by_backend), name
        for key in BACKENDS:
            assert by_backend[key]["status"] == "ok", (name, by_backend[key])
            assert by_backend[key]["correct"] is True, (name, key)
    meta = data["meta"]
    assert meta["cores"] >= 1 and meta["memory_gb"] > 0 and meta["python"].startswith("3.")
    assert {"core4nb", "loky", "dask", "ipyparallel"} <= set(meta["versions"])
    assert meta["size"] == "tiny" and meta["workers"] == 2
    assert {t["target"] for t in data["targets"]} and all(t["met"] in (True, False, None) for t in data["targets"])


def test_primes_counts_equal_the_serial_count(tiny: tuple[dict[str, Any], Path]) -> None:
    data, _ = tiny
    primes = data["workloads"]["primes"]
    assert primes["params"]["chunks"] == 64
    assert primes["expected"] == 45_322  # primes below 550,000
    by_backend = results(data, "primes")
    assert by_backend["serial"]["value"] == primes["expected"]
    for key in BACKENDS:
        entry = by_backend[key]
        assert entry["value"] == by_backend["serial"]["value"]
        assert 0 < entry["min_s"] <= entry["median_s"]
        assert entry["startup_s"] >= 0 and entry["speedup_median"] > 0
    assert by_backend["serial"]["speedup_median"] == pytest.approx(1.0)


def test_overhead_latency_startup_values(tiny: tuple[dict[str, Any], Path]) -> None:
    data, _ = tiny
    overhead = results(data, "overhead")
    assert overhead["process-tuned"]["options"] == {"chunksize": 100}
    for entry in overhead.values():
        assert entry["items"] >= 1_000 and entry["items_per_s_median"] > 0
        assert entry["items_per_s_best"] >= entry["items_per_s_median"]
    for entry in results(data, "latency").values():
        assert 0 <= entry["min_ms"] <= entry["median_ms"] and entry["p95_ms"] >= 0
    for entry in results(data, "startup").values():
        assert 0 <= entry["min_s"] <= entry["median_s"]


def test_scaling_and_queue(tiny: tuple[dict[str, Any], Path]) -> None:
    data, _ = tiny
    scaling, queue = results(data, "scaling")["core4nb"], results(data, "queue")["core4nb"]
    assert data["workloads"]["scaling"]["core4os_aws"]["efficiency"][0] == pytest.approx(1.0)
    assert scaling["status"] == "ok", scaling
    params = data["workloads"]["scaling"]["params"]
    assert [p["nodes"] for p in scaling["points"]] == params["nodes"]
    for point in scaling["points"]:
        assert point["correct"] is True
        assert point["ideal_s"] == pytest.approx(params["jobs"] * params["sleep_s"] / point["nodes"])
        assert 0 < point["efficiency_median"] <= point["efficiency_best"]
    assert queue["status"] == "ok", queue
    assert queue["store"]["claimed"] == queue["jobs"] and queue["correct"] is True
    worker = queue["map"]["calls"]["worker"]
    # Every job claimed: alone, with the outcome before it in one transaction, or (the embedded store)
    # with the other free slots' jobs in one claim_many, which takes at most one job per slot.
    slots = queue["node_processes"]
    assert worker.get("claim", 0) + worker.get("finish_and_claim", 0) + slots * worker.get("claim_many", 0) \
        >= queue["jobs"]
    assert queue["map"]["calls"]["client"]["insert"] >= 1
    assert worker.get("finish", 0) + worker.get("finish_and_claim", 0) >= queue["jobs"]  # every outcome recorded
    assert queue["map"]["round_trips_per_job"] >= 1


def test_data_workloads_moved_arrays_correctly(tiny: tuple[dict[str, Any], Path]) -> None:
    data, _ = tiny
    rows = {r["backend"]: r for r in data["workloads"]["data"]["results"]}
    for workload in ["arrays_in", "arrays_out", "broadcast"]:
        for tool in ["process", "core4nb"]:
            row = rows[f"{workload}:{tool}"]
            assert row["status"] == "ok" and row["correct"] is True, row
        mine = rows[f"{workload}:core4nb"]
        assert mine["data_held_mb"] > 0 and mine["store_growth_mb"] >= mine["sent_mb"] * 0.9
    assert rows["broadcast:core4nb-share"]["correct"] is True


def test_sklearn_workload_matches_loky(tiny: tuple[dict[str, Any], Path]) -> None:
    data, _ = tiny
    rows = results(data, "sklearn")
    assert data["workloads"]["sklearn"]["params"]["candidates"] == 4
    for tool in ["loky", "core4nb"]:
        assert rows[tool]["status"] == "ok" and rows[tool]["correct"] is True, rows[tool].get("reason")
        assert 0 < rows[tool]["min_s"] <= rows[tool]["median_s"] and rows[tool]["startup_s"] > 0
    assert rows["core4nb"]["scores"] == rows["loky"]["scores"]
    assert {r["status"] for r in rows.values()} <= {"ok", "skipped"}, rows  # Dask and Ray: run when installed


def test_report_and_plots(tiny: tuple[dict[str, Any], Path]) -> None:
    _, out = tiny
    text = (out / "RESULTS.md").read_text()
    for heading in ["## Targets for core4nb", *(f"## {w}" for w in WORKLOADS)]:
        assert heading in text
    for name in ["primes_speedup", "overhead", "latency", "startup", "scaling", "data", "sklearn"]:
        png = out / "plots" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert f"plots/{name}.png" in text


def test_a_missing_peer_is_reported_as_skipped(tmp_path: Path) -> None:
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "loky.py").write_text("raise ImportError('loky hidden by the test')\n")
    data = run_benchmarks(tmp_path, "startup", "--size", "tiny", "--repeat", "1", "--backends", "serial,loky",
                          "--no-report", env={"PYTHONPATH": str(fake)})
    loky = results(data, "startup")["loky"]
    assert loky["status"] == "skipped"
    assert "loky hidden by the test" in loky["reason"]
    assert results(data, "startup")["serial"]["status"] == "ok"


def test_compare_runs_this_checkout_against_a_commit_alternately(tmp_path: Path) -> None:
    """``benchmarks.compare``: both trees run each repetition, in turn; the table gives this ÷ the commit; the
    commit's worktree is gone afterwards; ``--record`` keeps the comparison and puts it into RESULTS.md, and a
    later record of one workload replaces its rows and keeps the others'."""
    out, kept = tmp_path / "runs", tmp_path / "kept"
    kept.mkdir()
    shutil.copy(ROOT / "benchmarks" / "results.json", kept / "results.json")

    def compare(*workloads: str, reps: int) -> subprocess.CompletedProcess:
        proc = subprocess.run([sys.executable, "-m", "benchmarks.compare", "HEAD", *workloads, "--reps", str(reps),
                               "--size", "tiny", "--backends", "core4nb", "--out", str(out), "--record", str(kept)],
                              cwd=ROOT, capture_output=True, text=True, timeout=12 * PATIENCE,
                              env={**os.environ, "TMPDIR": str(tmp_path)})
        assert proc.returncode == 0, f"compare failed:\n{proc.stdout}\n{proc.stderr}"
        return proc

    proc = compare("latency", "scaling", reps=2)
    assert sorted(p.name for p in out.glob("*.json")) == [
        f"{w}-{tree}-{rep}.json" for w in ("latency", "scaling") for tree in ("HEAD", "this") for rep in (0, 1)]
    order = [line.split(": ")[1] for line in proc.stdout.splitlines() if line.startswith("latency run")]
    assert order == ["this", "HEAD", "HEAD", "this"]
    rows = [line.split(" | ") for line in proc.stdout.splitlines() if line.startswith("| ")][1:]  # past the header
    assert [row[:2] for row in rows] == [["| latency (ms)", "core4nb"],
                                         ["| scaling (efficiency at the most nodes)", "core4nb"]]
    for row in rows:  # every workload has a figure from both trees, and their ratio
        assert len(row) == 5 and "no result" not in row[2] + row[3] and "÷" not in row[4]
        best, median = (float(x) for x in row[4].strip(" |").split(" / "))
        assert best > 0 and median > 0
    trees = subprocess.run(["git", "worktree", "list"], cwd=ROOT, capture_output=True, text=True).stdout
    assert str(tmp_path) not in trees
    record = json.loads((kept / "comparison.json").read_text())
    head = subprocess.run(["git", "rev-parse", "--short=7", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    assert record["ref_commit"] == head.strip()
    assert [(r["workload"], r["backend"], r["reps"], len(r["ref"]), len(r["this"])) for r in record["rows"]] == [
        ("latency", "core4nb", 2, 2, 2), ("scaling", "core4nb", 2, 2, 2)]
    report = (kept / "RESULTS.md").read_text()
    assert "## Against an earlier version" in report
    for row in rows:  # the printed ratios are the ones RESULTS.md judges
        workload = row[0].strip("| ").split(" ")[0]
        assert f"| no regression: {workload} on core4nb vs `{head.strip()}` | " in report
        assert f"{row[4].strip(' |').split(' / ')[0]}× best" in report
    # Latency once more, with other reps: its row is replaced, scaling's (same two commits) is kept.
    again = compare("latency", reps=1)
    assert "kept 1 row(s) of an earlier run" in again.stdout
    record = json.loads((kept / "comparison.json").read_text())
    assert [(r["workload"], r["reps"], len(r["this"])) for r in record["rows"]] == [
        ("latency", 1, 1), ("scaling", 2, 2)]
    report = (kept / "RESULTS.md").read_text()
    assert "compare HEAD latency --reps 1 --record`" in report and "compare HEAD scaling --reps 2 --record`" in report
    assert f"| no regression: latency on core4nb vs `{head.strip()}` | ≤ 1.05× HEAD (best of 1 interleaved runs) |" \
        in report
