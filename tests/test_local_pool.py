"""One local worker node per kernel: ``%%core4``, ``Core4Executor()`` and ``enqueue`` share it.

Counted in a real IPython kernel (nbclient): the node processes are the kernel's
children that run ``core4nb worker``.
"""

from __future__ import annotations

import json
import os

import nbformat
import psutil
from nbclient import NotebookClient

from tests.nodes import ROOT, wait_for

NODES = """
import json, psutil, time
def nodes():
    found = 0
    for p in psutil.Process().children(recursive=True):
        try:
            found += p.cmdline()[1:4] == ["-m", "core4nb", "worker"]
        except psutil.Error:  # exited (a zombie) while we looked: not a running node
            pass
    return found
def nodes_once_settled(expected, timeout=60):
    # A node seen too early (a busy machine: just spawned) or too late (shut down without waiting: it drains,
    # then exits) is not yet the count the cell is about.
    deadline = time.monotonic() + timeout
    while nodes() != expected and time.monotonic() < deadline:
        time.sleep(0.1)
    return nodes()
"""
CELLS = [
    "%load_ext core4nb\nnumbers = range(1000)" + NODES,
    "%%core4 --over numbers --chunks 4 --out sums\nsum(numbers)",
    "from core4nb import Core4Executor, enqueue\n"
    "ex = Core4Executor()\n"
    "counts = {'core4': sum(sums), 'submit': ex.submit(sum, [1, 2]).result(), "
    "'enqueue': enqueue(sum, [3, 4]).result(timeout=120), 'shared': nodes()}",
    # Asked otherwise: another size, or an explicit opt-out, is a node of its own.
    "other = Core4Executor(workers=1)\nown = Core4Executor(share_workers=False)\n"
    "counts['asked_otherwise'] = nodes_once_settled(3)\n"
    "assert other.submit(sum, [5]).result(timeout=120) == 5 and own.submit(sum, [6]).result(timeout=120) == 6\n"
    "other.shutdown(); own.shutdown()\nex.shutdown()\n"
    "counts['magics_still_use_it'] = nodes_once_settled(1)",
    "%unload_ext core4nb\ncounts['after_last_user'] = nodes_once_settled(0)\nprint(json.dumps(counts))",
]


def run_notebook(cells: list[str], tmp_path, monkeypatch) -> str:
    """Run ``cells`` in a fresh kernel (shut down at the end); what the last cell printed."""
    monkeypatch.setenv("CORE4NB_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path / "jupyter"))  # no user kernelspec shadows this Python
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    NotebookClient(notebook, kernel_name="python3", timeout=300, resources={"metadata": {"path": str(tmp_path)}}
                   ).execute()
    return notebook.cells[-1].outputs[-1]["text"]


def test_one_kernel_shares_one_local_node(tmp_path, monkeypatch):
    printed = run_notebook(CELLS, tmp_path, monkeypatch)
    assert json.loads(printed) == {"core4": sum(range(1000)), "submit": 3, "enqueue": 7, "shared": 1,
                                   "asked_otherwise": 3, "magics_still_use_it": 1, "after_last_user": 0}


def test_the_shared_node_stops_when_the_kernel_exits(tmp_path, monkeypatch):
    printed = run_notebook([CELLS[0], CELLS[1], "from core4nb import Core4Executor\nex = Core4Executor()\n"
                            "(node,) = [p.pid for p in psutil.Process().children() if 'worker' in p.cmdline()]\n"
                            "print(json.dumps({'node': node, 'nodes': nodes()}))"], tmp_path, monkeypatch)
    shown = json.loads(printed)
    assert shown["nodes"] == 1
    wait_for(lambda: not psutil.pid_exists(shown["node"]) or psutil.Process(shown["node"]).status() == "zombie",
             timeout=60, what="the kernel's node to stop after the kernel exited")
