"""The ``core4nb`` package's public names, and what a worker node's processes load at start."""

from __future__ import annotations

import subprocess
import sys

import pytest

import core4nb
from tests.nodes import ROOT


def loaded_after(statement: str) -> set[str]:
    """The core4nb modules a fresh interpreter has loaded after ``statement``."""
    code = f"import sys; {statement}; print(' '.join(m for m in sys.modules if m.startswith('core4nb')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    return set(out.split())


def test_every_public_name_resolves_to_its_owner():
    assert sorted(core4nb.__all__) == sorted(core4nb._OWNERS)
    for name in core4nb.__all__:
        value = getattr(core4nb, name)
        assert value.__module__.startswith(core4nb._OWNERS[name]), name
    assert set(core4nb.__all__) <= set(dir(core4nb))
    namespace: dict = {}
    exec("from core4nb import *", namespace)  # the star import a notebook may do
    assert {name for name in namespace if not name.startswith("__")} == set(core4nb.__all__)


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match=r"^module 'core4nb' has no attribute 'Core4Exec'$"):
        _ = core4nb.Core4Exec
    with pytest.raises(AttributeError, match=r"^module 'core4nb\.worker' has no attribute 'Node'$"):
        _ = core4nb.worker.Node


def test_submodules_are_attributes_of_the_package_on_first_use():
    code = "import core4nb; print(core4nb.errors.JobFailed.__name__, core4nb.worker.WorkerNode.__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert out.split() == ["JobFailed", "WorkerNode"]


def test_a_nodes_child_code_loads_none_of_the_notebook_side():
    # The forkserver preloads this at every node's start: the executor, the widgets, the jobs API and the
    # node's own loop (store writer, reaper) would be start-up time spent on nothing.
    loaded = loaded_after("import core4nb.worker.child")
    assert "core4nb.worker.child" in loaded
    assert loaded.isdisjoint({"core4nb.executor", "core4nb.widgets", "core4nb.jobs", "core4nb.queue",
                              "core4nb.report", "core4nb.worker.node", "core4nb.magics"})


def test_importing_core4nb_loads_only_the_package():
    assert loaded_after("import core4nb") == {"core4nb"}
    assert "core4nb.executor.executor" in loaded_after("from core4nb import Core4Executor")
