"""Nodes that share no files with the client (tests/isolated.py): code, data and control travel through
the MongoDB queue alone. A notebook's own module and package, ``__main__`` functions and classes, large
arguments and results (blobs), kill, a node SIGKILLed mid-job, and an embedded queue a node cannot see."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from core4nb import Queue, State
from core4nb.keys import load_key
from tests import jobfuncs
from tests.isolated import private_dir, start_isolated_node, why_not
from tests.nodes import PATIENCE, node_log, stop_node, wait_for

pytestmark = pytest.mark.skipif(why_not() is not None, reason=why_not() or "")

MODULE = """
def triple(x):
    return 3 * x
"""
PACKAGE_INIT = "from mypkg.sub import square\n"
PACKAGE_SUB = """
import numpy as np

def square(x):
    return x * x

def big(n):
    return np.arange(n, dtype=np.float64)
"""
CLIENT = """
import json, sys
import numpy as np
sys.path.insert(0, ".")                    # the notebook's folder, which no node can see
import mymod, mypkg
from core4nb import Queue

class Point:                               # a class of __main__
    def __init__(self, x): self.x = x
    def norm(self): return abs(self.x)

def describe(p):
    return f"{type(p).__name__}({p.x}) norm {p.norm()}"

q = Queue(sys.argv[1])
ids = {"main": q.enqueue(describe, Point(-4)), "module": q.enqueue(mymod.triple, 5),
       "package": q.enqueue(mypkg.square, 7), "submodule": q.enqueue(mypkg.sub.big, 2_000_000),
       "array_in": q.enqueue(np.sum, np.ones(2_000_000))}
print(json.dumps(ids), flush=True)
out = {}
for name, job_id in ids.items():
    value = q.result(job_id, timeout=150)
    out[name] = [float(value.sum()), len(value)] if name == "submodule" else (
        float(value) if name == "array_in" else value)
print(json.dumps(out), flush=True)
"""


@pytest.fixture
def key() -> str:
    return load_key().decode()


@pytest.fixture
def base_temp(tmp_path_factory):
    return tmp_path_factory.getbasetemp()


def test_code_and_data_travel_to_a_node_that_shares_no_files(mongo_url, tmp_path, key, base_temp):
    folder = tmp_path / "notebook"
    (folder / "mypkg").mkdir(parents=True)
    (folder / "mymod.py").write_text(MODULE)
    (folder / "mypkg" / "__init__.py").write_text(PACKAGE_INIT)
    (folder / "mypkg" / "sub.py").write_text(PACKAGE_SUB)
    (folder / "client.py").write_text(CLIENT)
    client = subprocess.Popen([sys.executable, "client.py", mongo_url], cwd=folder, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env={**os.environ, "CORE4NB_KEY": key})
    ids = json.loads(client.stdout.readline())
    node = start_isolated_node(mongo_url, "far", key, base_temp)
    assert node.wait(180) == 0, node_log(node)
    out, err = client.communicate(timeout=120)
    assert client.returncode == 0, err
    assert json.loads(out) == {"main": "Point(-4) norm 4", "module": 15, "package": 49,
                               "submodule": [float(sum(range(2_000_000))), 2_000_000], "array_in": 2_000_000.0}
    log = node_log(node)
    assert log.count("fetched from GridFS") == 1  # the argument blob; results go the other way
    assert len(ids) == 5


def test_kill_and_a_lost_node_across_machines(mongo_url, tmp_path, key, base_temp, monkeypatch):
    monkeypatch.setenv("CORE4NB_KEY", key)
    # a path the node writes into its own private tmpfs: it must never appear on this side
    marker = str(private_dir(base_temp) / f"core4nb-isolated-{os.getpid()}-{time.monotonic_ns()}.txt")
    with Queue(mongo_url) as queue:
        slow = queue.enqueue(jobfuncs.record, marker, "slow", 60.0)
        lost = queue.enqueue(jobfuncs.record, marker, "lost", 3.0, options={"attempts": 2, "error_time": 0.1})
        first = start_isolated_node(mongo_url, "doomed", key, base_temp, burst=False, lease=1.5)
        wait_for(lambda: queue.get(slow).state == State.RUNNING and queue.get(lost).state == State.RUNNING,
                 timeout=60, what="both jobs running on the isolated node")
        queue.kill(slow)
        wait_for(lambda: queue.get(slow).state == State.KILLED, what="the kill")
        os.killpg(first.pid, signal.SIGKILL)  # the machine dies mid-job
        first.wait(PATIENCE)
        time.sleep(0.5)
        rescuer = start_isolated_node(mongo_url, "rescuer", key, base_temp, burst=False, lease=1.5)
        try:  # it reaps the dead node's job once its lease expires, and runs it again
            wait_for(lambda: queue.get(lost).state == State.COMPLETE, timeout=90, what="the rescue")
        finally:
            stop_node(rescuer)
        job = queue.get(lost)
        assert (job.state, job.trial, queue.result(lost)) == (State.COMPLETE, 2, "lost")
        assert not os.path.exists(marker)  # written on the node's side only


def test_a_node_cannot_serve_an_embedded_queue_it_cannot_see(sqlite_url, key, base_temp):
    with Queue(sqlite_url) as queue:
        queue.enqueue(jobfuncs.add, 1, 2)
    node = start_isolated_node(sqlite_url, "blind", key, base_temp)
    assert node.wait(60) == 1
    assert textwrap.dedent("does not exist on this machine: an embedded queue serves the machine that holds its "
                           "file") in node_log(node)
