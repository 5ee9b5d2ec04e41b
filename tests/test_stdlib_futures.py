"""CPython 3.11's own ``concurrent.futures`` tests, run against ``Core4Executor``.

As loky does for its executor: the stock, executor-agnostic mixins of
``Lib/test/test_concurrent_futures.py`` (executor, wait, as_completed, shutdown,
the worker-crash tests) are imported unchanged and combined with a mixin whose
``executor_type`` is ``Core4Executor``, on the embedded store (a fresh SQLite
queue in a tmp ``CORE4NB_HOME`` for every test, served by the executor's local
node). The file comes from Debian's ``libpython3.11-testsuite``, fetched and
unpacked into a cache folder by ``scripts/fetch-stdlib-tests.sh``; Debian's 3.11
may be another patch release than this interpreter (it names both). Without
apt the tests are skipped with that reason, except under CI, where they must run.

Every stock test that is not run is in :data:`SKIPS` with its reason. The
``FutureTests`` class is not used: it builds stock ``Future`` objects by hand and
never touches an executor (tests/test_executor.py covers Core4Future's cancel and repr).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

import pytest

from core4nb import Core4Executor

ROOT = Path(__file__).resolve().parent.parent

_PROCESS_POOL_ONLY = "reads ProcessPoolExecutor internals (_processes, _max_workers, mp_context semaphores)"
_OWN_PROCESS_POOL = "builds a futures.ProcessPoolExecutor itself: it tests the stdlib, not Core4Executor"
_IMPORTS_FROM_CF = ("its child script imports the executor from concurrent.futures; "
                    "test_executor.py::test_interpreter_exit_finishes_submitted_work_and_stops_the_node covers it")
_NOT_BROKEN = ("expects BrokenProcessPool; core4nb fails only that job with ChildCrashed and the pool "
               "carries on (README: differences from ProcessPoolExecutor)")

#: Stock test name → why it does not run against Core4Executor.
SKIPS: dict[str, str] = {
    "test_killed_child": _NOT_BROKEN,
    "test_saturation": _PROCESS_POOL_ONLY,
    "test_idle_process_reuse_one": _PROCESS_POOL_ONLY,
    "test_idle_process_reuse_multiple": _PROCESS_POOL_ONLY,
    "test_max_tasks_per_child": "max_tasks_per_child is a ProcessPoolExecutor option; worker nodes keep warm children",
    "test_max_tasks_per_child_defaults_to_spawn_context": "max_tasks_per_child is a ProcessPoolExecutor option",
    "test_max_tasks_early_shutdown": "max_tasks_per_child is a ProcessPoolExecutor option",
    "test_ressources_gced_in_workers": "needs a multiprocessing Manager from mp_context; arguments are job data here",
    "test_processes_terminate": _PROCESS_POOL_ONLY,
    "test_context_manager_shutdown": _OWN_PROCESS_POOL,
    "test_del_shutdown": _OWN_PROCESS_POOL,
    "test_shutdown_no_wait": _OWN_PROCESS_POOL,
    "test_interpreter_shutdown": _IMPORTS_FROM_CF,
    "test_submit_after_interpreter_shutdown": _IMPORTS_FROM_CF,
    "test_hang_gh83386": _IMPORTS_FROM_CF,
    "test_exit_at_task_unpickle": ("expects BrokenProcessPool; core4nb gives result() the SystemExit the "
                                   "payload raised while it was unpickled"),
    "test_error_at_task_unpickle": ("expects BrokenProcessPool; core4nb gives result() the UnpicklingError "
                                    "the payload raised while it was unpickled"),
    "test_crash_at_task_unpickle": _NOT_BROKEN,
    "test_crash_during_func_exec_on_worker": _NOT_BROKEN,
    "test_crash_during_result_pickle_on_worker": _NOT_BROKEN,
    "test_error_during_result_unpickle_in_result_handler": ("expects BrokenProcessPool; core4nb gives result() "
                                                            "the error the result raised while it was unpickled"),
    "test_exit_during_result_unpickle_in_result_handler": ("expects BrokenProcessPool; core4nb gives result() "
                                                           "the SystemExit the result raised while it was unpickled"),
    "test_shutdown_deadlock": _NOT_BROKEN,
    "test_shutdown_deadlock_pickle": "reads ProcessPoolExecutor internals (_executor_manager_thread)",
    "test_error_at_task_pickle": ("expects submit() to succeed and result() to raise; core4nb raises the "
                                  "PicklingError (UnpicklableError) from submit(), before anything is stored"),
    "test_traceback": ("asserts the cause is the private futures.process._RemoteTraceback; core4nb's "
                       "RemoteTraceback has the same .tb with the line (test_executor.py checks it)"),
    "test_cancel_futures": ("asserts some of 50 jobs started before a shutdown right after their submits; "
                            "a worker node claims jobs one at a time (no call queue filled ahead), so all 50 "
                            "may still wait and be cancelled, as cancel_futures promises"),
}


def _fetch() -> tuple[Path | None, str]:
    """The stock test file, or None and why it cannot be had."""
    if sys.version_info[:2] != (3, 11):
        return None, f"the stock tests are 3.11's; this is Python {sys.version.split()[0]}"
    run = subprocess.run(["bash", str(ROOT / "scripts" / "fetch-stdlib-tests.sh")], capture_output=True, text=True)
    if run.returncode != 0:
        return None, run.stderr.strip().splitlines()[-1] if run.stderr.strip() else "fetching the stock tests failed"
    return Path(run.stdout.strip()), ""


def _load(path: Path):
    """Import the stock file as the module ``test_concurrent_futures`` (it uses this interpreter's test.support)."""
    spec = importlib.util.spec_from_file_location("test_concurrent_futures", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


STOCK_FILE, WHY_NOT = _fetch()

if STOCK_FILE is None:
    def test_the_stock_suite_is_available() -> None:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run CPython's concurrent.futures tests: {WHY_NOT}")
        pytest.skip(WHY_NOT)
else:
    stock = _load(STOCK_FILE)
    STOCK_VERSION = (STOCK_FILE.parents[4] / "VERSION").read_text().strip()

    class Core4Mixin(stock.ExecutorMixin):
        """The stock ExecutorMixin with Core4Executor on a fresh embedded queue (CORE4NB_HOME in tmp)."""

        executor_type = Core4Executor

        def setUp(self) -> None:
            self._home = tempfile.mkdtemp(prefix="core4nb-stdlib-")
            self._old_home = os.environ.get("CORE4NB_HOME")
            os.environ["CORE4NB_HOME"] = self._home
            super().setUp()

        def tearDown(self) -> None:
            try:
                super().tearDown()
            finally:
                if self._old_home is None:
                    os.environ.pop("CORE4NB_HOME", None)
                else:
                    os.environ["CORE4NB_HOME"] = self._old_home
                shutil.rmtree(self._home, ignore_errors=True)

        def get_context(self) -> None:
            return None  # the stock crash tests pass mp_context=self.get_context(): the default

    def _stock_case(name: str, *mixins: type) -> type:
        """A TestCase of the stock mixins on Core4Executor, with the stock tests of SKIPS skipped."""
        case = type(name, (*mixins, Core4Mixin, stock.BaseTestCase), {"__module__": __name__})
        for test, reason in SKIPS.items():
            if hasattr(case, test):
                setattr(case, test, unittest.skip(reason)(getattr(case, test)))
        return case

    Core4ExecutorTest = _stock_case("Core4ExecutorTest", stock.ProcessPoolExecutorTest)
    Core4WaitTest = _stock_case("Core4WaitTest", stock.WaitTests)
    Core4AsCompletedTest = _stock_case("Core4AsCompletedTest", stock.AsCompletedTests)
    Core4ShutdownTest = _stock_case("Core4ShutdownTest", stock.ProcessPoolShutdownTest)
    Core4DeadlockTest = _stock_case("Core4DeadlockTest", stock.ExecutorDeadlockTest)

    def test_the_stock_file_is_debians_3_11() -> None:
        """Names the releases compared: Debian's test file, this interpreter."""
        assert STOCK_VERSION.startswith("3.11."), STOCK_VERSION
        print(f"stock tests of Debian's Python {STOCK_VERSION}, run on Python {sys.version.split()[0]}")
