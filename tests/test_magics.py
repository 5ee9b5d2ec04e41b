"""``%%core4`` and ``%core4`` in a real IPython shell, on real worker processes."""

from __future__ import annotations

import os
import signal
import threading

import psutil
import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

from core4nb import Queue, State
from tests.nodes import PATIENCE, wait_for

SETUP = """
import math
def is_prime(n):
    return n > 1 and all(n % d for d in range(2, math.isqrt(n) + 1))
numbers = range(1, 5000)
"""
BODY = "sum(1 for n in numbers if is_prime(n))"


@pytest.fixture
def shell(tmp_path, monkeypatch):
    monkeypatch.setenv("CORE4NB_HOME", str(tmp_path / "home"))
    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "core4nb")
    ip.run_cell(SETUP)
    yield ip
    ip.run_line_magic("unload_ext", "core4nb")
    InteractiveShell.clear_instance()


def cell(ip, line: str, body: str = BODY):
    return ip.run_cell_magic("core4", line, body)


def serial_chunks(numbers, chunks):
    from core4nb.cells import split

    return [sum(1 for n in part if n > 1 and all(n % d for d in range(2, int(n**0.5) + 1)))
            for part in split(numbers, chunks)]


def test_cell_runs_once_per_chunk_in_order(shell):
    cell(shell, "--chunks 8 --over numbers --out counts")
    assert shell.user_ns["counts"] == serial_chunks(range(1, 5000), 8)
    assert sum(shell.user_ns["counts"]) == 669


def test_default_out_and_reduce(shell):
    cell(shell, "--chunks 5 --over numbers --reduce sum")
    assert shell.user_ns["_core4"] == 669


def test_numpy_and_pandas_are_split_along_rows(shell):
    shell.run_cell("import numpy as np, pandas as pd\n"
                   "arr = np.arange(100)\n"
                   "df = pd.DataFrame({'g': [i % 3 for i in range(90)], 'v': range(90)})")
    cell(shell, "--chunks 4 --over arr --out sums", "int(arr.sum())")
    assert shell.user_ns["sums"] == [300, 925, 1550, 2175]
    cell(shell, "--chunks 3 --over df --out parts", "df.groupby('g')['v'].sum()")
    import pandas as pd

    total = pd.concat(shell.user_ns["parts"]).groupby(level=0).sum()
    assert total.to_dict() == {0: 1305, 1: 1335, 2: 1365}
    assert [len(p) for p in shell.user_ns["parts"]] == [3, 3, 3]


def test_statements_before_last_expression_and_notebook_globals(shell):
    shell.run_cell("OFFSET = 1000")
    cell(shell, "--chunks 2 --over numbers --out shifted", "first = numbers[0]\nfirst + OFFSET")
    assert shell.user_ns["shifted"] == [1001, 3500]


def test_no_wait_returns_a_handle(shell):
    cell(shell, "--chunks 4 --over numbers --out run --no-wait")
    run = shell.user_ns["run"]
    assert run.job_id and run.result() == serial_chunks(range(1, 5000), 4)
    with Queue() as queue:
        assert queue.get(run.job_id).name.startswith("map:")


def test_exception_in_a_chunk_is_raised_as_its_type(shell):
    with pytest.raises(ZeroDivisionError):
        cell(shell, "--chunks 3 --over numbers", "1 / (numbers[0] - 1)")


@pytest.mark.parametrize("line, message", [
    ("--chunks 4", "needs --over"),
    ("--over missing", "no variable 'missing'"),
    ("--over numbers --chunks 0", "--chunks must be at least 1"),
    ("--over numbers --reduce nosuchfn", "--reduce nosuchfn"),
    ("--over numbers --out 'not a name'", "not a valid Python name"),
    ("--over numbers --bogus", "unrecognized arguments"),
])
def test_bad_arguments_raise_usage_error(shell, line, message):
    with pytest.raises(UsageError, match=message):
        cell(shell, line)
    with Queue() as queue:
        assert sum(queue.counts().values()) == 0  # nothing enqueued


def test_bad_cell_body_is_a_usage_error(shell):
    with pytest.raises(UsageError, match="not valid Python"):
        cell(shell, "--over numbers", "def (")


def test_help_shows_argparse_options(shell):
    doc = shell.find_cell_magic("core4").__doc__
    assert "--over NAME" in doc and "--no-wait" in doc and "%core4 status" in doc


def test_line_magics(shell, capsys):
    cell(shell, "--chunks 2 --over numbers --out counts")
    with Queue() as queue:  # the chunks are done; the map's root completes within its defer time
        wait_for(lambda: queue.counts()[State.COMPLETE] == 3, what="the root to complete")
    shell.run_line_magic("core4", "status")
    out = capsys.readouterr().out
    assert "nodes  1" in out and "complete 3" in out
    shell.run_line_magic("core4", "jobs complete")
    assert capsys.readouterr().out.count("complete") >= 2
    with pytest.raises(UsageError, match="takes one of"):
        shell.run_line_magic("core4", "frobnicate")
    with pytest.raises(UsageError, match="usage: %core4 kill ID"):
        shell.run_line_magic("core4", "kill")
    with pytest.raises(UsageError, match="no job with id"):
        shell.run_line_magic("core4", "kill 0123456789abcdef01234567")


def test_connect_bad_url_is_usage_error_and_keeps_old(shell):
    with pytest.raises(UsageError, match="not a URL"):
        shell.run_line_magic("core4", "connect nowhere")
    assert shell._core4nb_magics.url is None


def test_attach_gives_a_future_for_an_earlier_tree(shell):
    cell(shell, "--chunks 3 --over numbers --out run --no-wait")
    root = shell.user_ns["run"].job_id
    future = shell.run_line_magic("core4", f"attach {root}")
    assert future.result(timeout=60) == serial_chunks(range(1, 5000), 3)


def test_ctrl_c_kills_the_tree(shell):
    shell.run_cell("import time\nslow = list(range(6))")
    # A real SIGINT, as Jupyter's interrupt sends: it wakes the blocked wait for results.
    timer = threading.Timer(1.5, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        cell(shell, "--chunks 6 --over slow --out never", "time.sleep(30)")
    timer.cancel()
    with Queue() as queue:
        roots = [j for j in queue.jobs() if j.parent_id is None]
        assert len(roots) == 1
        children = queue.store.find(parent_id=roots[0].id)
        assert len(children) == 6
        # pending chunks are killed at once, running ones by their node within a second or two
        wait_for(lambda: all(c.state == State.KILLED for c in queue.store.find(parent_id=roots[0].id)),
                 what="every chunk killed")
    assert "never" not in shell.user_ns


def test_unload_stops_local_workers(shell):
    cell(shell, "--chunks 2 --over numbers")
    workers = shell._core4nb_magics.executor().local_workers
    pid = workers.pid
    shell.run_line_magic("unload_ext", "core4nb")
    psutil.Process(pid).wait(PATIENCE) if psutil.pid_exists(pid) else None
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    shell.run_line_magic("load_ext", "core4nb")  # the fixture unloads again


def test_what_the_chunks_print_is_printed_in_chunk_order(shell, capsys):
    shell.run_cell("words = ['alpha', 'beta', 'gamma']")
    capsys.readouterr()
    cell(shell, "--chunks 3 --over words --out lengths", "print('chunk', words[0])\nlen(words[0])")
    assert shell.user_ns["lengths"] == [5, 4, 5]
    printed = capsys.readouterr().out  # after the (headless) panel's text line
    assert printed.endswith("\nchunk alpha\nchunk beta\nchunk gamma\n") and printed.count("chunk ") == 3


def test_a_large_global_is_stored_once_for_every_chunk(shell, tmp_path):
    """The broadcast case of a notebook: the body reads a 16 MB table in every one of 16 chunks."""
    shell.run_cell("import numpy as np\ntable = np.arange(2 * 2**20, dtype=np.float64)\nidx = list(range(16))")
    cell(shell, "--chunks 16 --over idx --out sums", "[float(table[i * 1000:(i + 1) * 1000].sum()) for i in idx]")
    expected = [[float(sum(range(i * 1000, (i + 1) * 1000)))] for i in range(16)]
    assert shell.user_ns["sums"] == expected
    with Queue(f"sqlite://{tmp_path / 'home' / 'queue.db'}") as queue:
        assert [b.size for b in queue.store.blobs.listing()] == [16 * 2**20]  # one blob for 16 payloads


def test_a_mistyped_option_is_refused_with_the_right_one(shell):
    with pytest.raises(UsageError, match=r"unrecognized arguments: --chunk 8; did you mean --chunks\?"):
        cell(shell, "--chunk 8 --over numbers --out counts")
    assert "counts" not in shell.user_ns


def test_line_magic_runs_lists_the_cells_tree(shell, capsys):
    cell(shell, "--chunks 3 --over numbers --out counts")
    with Queue() as queue:  # the chunks are done; the map's root completes within its defer time
        wait_for(lambda: queue.counts()[State.COMPLETE] == 4, what="the root to complete")
        run_id = queue.jobs()[0].root_id
    capsys.readouterr()
    shell.run_line_magic("core4", "runs")
    header, row = capsys.readouterr().out.splitlines()
    assert header.split() == ["ROOT", "NAME", "AGE", "JOBS", "FIRST", "ERROR"]
    assert row.split()[:2] == [run_id, "map:cell_over_numbers"]
    assert row.split()[3:] == ["complete", "4"]
