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
    ("--over numbers --max-parallel 0", r"^bad job option max_parallel=0: must be an integer >= 1 or None$"),
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


def test_what_the_chunks_print_is_printed_once_labelled_with_its_chunk(shell, capsys):
    shell.run_cell("words = ['alpha', 'beta', 'gamma']")
    capsys.readouterr()
    cell(shell, "--chunks 3 --over words --out lengths", "print('chunk', words[0])\nlen(words[0])")
    assert shell.user_ns["lengths"] == [5, 4, 5]
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[")]  # not the panel's
    assert sorted(printed) == ["[chunk 1/3] chunk alpha", "[chunk 2/3] chunk beta", "[chunk 3/3] chunk gamma"]


def test_output_streams_while_the_chunks_run(shell, capsys, tmp_path):
    """Lines show while their chunk still runs, in order per chunk, stdout and stderr alike, never twice."""
    release = tmp_path / "release"
    shell.run_cell(f"import os, sys, time\nRELEASE = {str(release)!r}\nparts = ['a', 'b']")
    capsys.readouterr()
    body = ("print('before', parts[0], flush=True)\nprint('warn', parts[0], file=sys.stderr)\n"
            "while not os.path.exists(RELEASE):\n    time.sleep(0.05)\nprint('after', parts[0])\nparts[0]")
    cell(shell, "--chunks 2 --over parts --out got --no-wait", body)
    seen: list[str] = []

    def printed(*lines: str) -> bool:
        seen.extend(capsys.readouterr().out.splitlines())
        return all(line in seen for line in lines)

    wait_for(lambda: printed("[chunk 1/2] before a", "[chunk 1/2] warn a", "[chunk 2/2] before b",
                             "[chunk 2/2] warn b"), timeout=60, what="the chunks' first lines while they run")
    assert not any("after" in line for line in seen)  # the chunks are still waiting
    release.touch()
    assert shell.user_ns["got"].result() == ["a", "b"]
    wait_for(lambda: printed("[chunk 1/2] after a", "[chunk 2/2] after b"), timeout=30, what="the last lines")
    for chunk, part in ((1, "a"), (2, "b")):
        mine = [line for line in seen if line.startswith(f"[chunk {chunk}/2]")]
        assert mine == [f"[chunk {chunk}/2] before {part}", f"[chunk {chunk}/2] warn {part}",
                        f"[chunk {chunk}/2] after {part}"]


def test_the_local_node_never_writes_to_the_notebooks_streams(shell, capfd, tmp_path):
    """What bypasses a job's capture (a write to file descriptor 2) goes to the node's log, not a cell."""
    shell.run_cell("import os\nmarks = [1]")
    capfd.readouterr()
    cell(shell, "--chunks 1 --over marks --out done", "os.write(2, b'fd-level line\\n')\nmarks[0]")
    assert shell.user_ns["done"] == [1]
    out, err = capfd.readouterr()
    assert "fd-level" not in out + err
    log = tmp_path / "home" / "local-nodes.log"
    wait_for(lambda: "fd-level line" in log.read_text(), what="the line in the node's log")


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


# -- in a real Jupyter kernel (nbclient), as a saved notebook records it ---------------------------------------

def run_notebook(tmp_path, monkeypatch, *sources: str):
    """Execute a notebook of these code cells in a real kernel; return its cells as saved."""
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("CORE4NB_HOME", str(tmp_path / "home"))
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(src) for src in sources])
    client = NotebookClient(nb, timeout=180, kernel_name="python3", allow_errors=True,
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    path = tmp_path / "saved.ipynb"
    nbformat.write(nb, path)
    return nbformat.read(path, as_version=4).cells


def texts(cell_, kind: str = "text/plain") -> list[str]:
    return [o.get("text", "") if o.output_type == "stream" else o.get("data", {}).get(kind, "")
            for o in cell_.outputs]


def test_in_a_kernel_output_lands_in_the_submitting_cell_and_the_saved_notebook_tells_the_end(tmp_path, monkeypatch):
    release = tmp_path / "release"
    cells = run_notebook(
        tmp_path, monkeypatch,
        f"%load_ext core4nb\nimport os, sys, time\nRELEASE = {str(release)!r}\nparts = ['a', 'b']",
        "%%core4 --over parts --chunks 2 --out run --no-wait\nprint('before', parts[0], flush=True)\n"
        "print('warn', parts[0], file=sys.stderr)\nwhile not os.path.exists(RELEASE):\n    time.sleep(0.05)\n"
        "print('after', parts[0])\nparts[0]",
        # An unrelated cell running while the chunks print: none of their lines may land here.
        "from core4nb import Queue\nwith Queue() as q:\n"
        "    chunks = [j.id for j in q.store.find(parent_id=run.job_id)]\n"
        "    while 'before' not in ''.join(q.store.outputs(chunks).values()):\n"
        "        time.sleep(0.05)\ntime.sleep(1.5)\nopen(RELEASE, 'w').close()\nrun.result()",
        "run.panel.wait(60)\nprint('next cell')",
    )
    submitting, unrelated, last = cells[1], cells[2], cells[3]
    assert unrelated.outputs and "'a', 'b'" in texts(unrelated)[-1]  # run.result()
    assert not any("before" in t or "warn" in t for t in texts(unrelated) + texts(last))
    assert [o.get("name") for o in unrelated.outputs if o.output_type == "stream"] == []
    printed = "\n".join(texts(submitting))
    for chunk, part in ((1, "a"), (2, "b")):
        mine = [line for line in printed.splitlines() if line.startswith(f"[chunk {chunk}/2]")]
        assert mine == [f"[chunk {chunk}/2] before {part}", f"[chunk {chunk}/2] warn {part}",
                        f"[chunk {chunk}/2] after {part}"]
    html_ = "\n".join(texts(submitting, "text/html"))
    assert html_.count("<details>") == 2 and "chunk 1/2 · 3 lines" in html_
    panel = [t for t in texts(submitting) if "cell_over_parts" in t]
    assert len(panel) == 1 and panel[0].startswith("complete: cell_over_parts [####################] 2/2 chunks")


def test_in_a_kernel_ctrl_c_is_one_true_line_and_a_chunk_error_shows_the_users_line(tmp_path, monkeypatch):
    cells = run_notebook(
        tmp_path, monkeypatch,
        "%load_ext core4nb\nimport os, signal, threading, time\nfrom core4nb import Queue, State\n"
        "numbers = list(range(100))\nslow = list(range(8))",
        # Jupyter's interrupt is a SIGINT to the kernel: sent once two chunks completed, six never will.
        "def interrupt_after_two():\n    with Queue() as q:\n"
        "        while q.counts()[State.COMPLETE] < 2:\n            time.sleep(0.05)\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "threading.Thread(target=interrupt_after_two, daemon=True).start()",
        "%%core4 --over slow --chunks 8 --workers 2\ntime.sleep(0 if slow[0] < 2 else 60)\nslow[0]",
        "%%core4 --over numbers --chunks 10\nx = 1\ny = 1 / (numbers[0] - 40)\ny",
    )
    interrupted, failing = cells[2], cells[3]
    [error] = [o for o in interrupted.outputs if o.output_type == "error"]
    assert error.ename == "Interrupted" and len(error.traceback) == 1
    assert error.traceback[0].startswith("interrupted: 2 done, 6 killed (job tree ")
    [panel] = [t for t in texts(interrupted) if "cell_over_slow" in t]
    assert panel.startswith("killed: cell_over_slow [#####---------------] 2/8 chunks  complete 2  killed 6")
    [html_] = [t for t in texts(interrupted, "text/html") if "core4nb-panel" in t]
    assert 'data-state="complete" style="padding:0 0.6em;text-align:right">2<' in html_
    assert 'data-state="killed" style="padding:0 0.6em;text-align:right">6<' in html_

    [error] = [o for o in failing.outputs if o.output_type == "error"]
    assert error.ename == "ZeroDivisionError" and len(error.traceback) == 2
    note, remote = error.traceback
    assert note == "chunk 5/10, numbers[40:50] raised ZeroDivisionError"
    assert remote.splitlines() == ["Traceback (most recent call last):", '  File "<core4 cell>", line 2, in <module>',
                                   "    y = 1 / (numbers[0] - 40)", "        ~~^~~~~~~~~~~~~~~~~~~",
                                   "ZeroDivisionError: division by zero"]
    [panel] = [t for t in texts(failing) if "cell_over_numbers" in t]
    assert panel.startswith("broken: cell_over_numbers")


def test_in_a_kernel_submit_and_enqueue_stream_to_their_own_cells(tmp_path, monkeypatch):
    release = tmp_path / "release"
    cells = run_notebook(
        tmp_path, monkeypatch,
        f"import os, sys, time\nfrom core4nb import Core4Executor, enqueue\nRELEASE = {str(release)!r}\n"
        "def noisy(tag):\n    print(tag, 'starts', flush=True)\n    print(tag, 'warns', file=sys.stderr)\n"
        "    while not os.path.exists(RELEASE):\n        time.sleep(0.05)\n    print(tag, 'ends')\n    return tag\n"
        "ex = Core4Executor(workers=2)",
        "future = ex.submit(noisy, 'submitted')",
        "handle = enqueue(noisy, 'enqueued')",
        # Runs while both jobs print: their lines belong to the cells above, once each.
        "from core4nb import Queue\nwith Queue() as q:\n"
        "    while ''.join(q.store.outputs([future.job_id, handle.id]).values()).count('warns') < 2:\n"
        "        time.sleep(0.05)\n"
        "time.sleep(1.5)\nopen(RELEASE, 'w').close()\nfuture.result(60), handle.result(60), handle.output",
    )
    submitted, enqueued, waiting = cells[1], cells[2], cells[3]
    assert "\n".join(texts(submitted)).splitlines() == ["submitted starts", "submitted warns", "submitted ends"]
    assert "\n".join(texts(enqueued)).splitlines() == ["enqueued starts", "enqueued warns", "enqueued ends"]
    assert texts(waiting) == ["('submitted', 'enqueued', 'enqueued starts\\nenqueued warns\\nenqueued ends\\n')"]
