"""Code travels: a notebook's own modules go by value, and a node that cannot load a payload because
its packages differ says which one, and hands the job back. Real worker processes, both stores."""

from __future__ import annotations

import importlib
import operator
import secrets
import sys

import numpy as np
import pytest

from core4nb import Queue, State, serialize, shipping
from core4nb.errors import EnvironmentMismatch
from core4nb.serialize import Kind
from tests.nodes import node_log, start_node


class NeedsOtherNumpy:
    """Unpickles by looking up a numpy attribute this numpy lacks: what a version change breaks."""

    def __reduce__(self):
        return operator.attrgetter("attribute_of_another_numpy_version"), (np,)


def identity(x):
    return x


@pytest.fixture
def local_module(tmp_path, monkeypatch):
    """A module in a folder only this process has on its path (the node runs from the checkout)."""
    name = f"mymod_{secrets.token_hex(3)}"
    (tmp_path / f"{name}.py").write_text("def triple(x):\n    return 3 * x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return importlib.import_module(name)


def test_a_local_module_travels_by_value(queue_url, local_module):
    assert shipping.is_local(local_module) and not shipping.is_local(np) and not shipping.is_local(pytest)
    with Queue(queue_url) as queue:
        job_id = queue.enqueue(local_module.triple, 14)
        node = start_node(queue_url, "node", processes=1, burst=True)
        assert node.wait(60) == 0, node_log(node)
        assert queue.result(job_id) == 42


def test_opting_out_leaves_local_modules_by_reference(sqlite_url, tmp_path, monkeypatch):
    monkeypatch.setenv(shipping.LOCAL_ENV, "0")
    name = f"optout_{secrets.token_hex(3)}"
    (tmp_path / f"{name}.py").write_text("def triple(x):\n    return 3 * x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module(name)
    with Queue(sqlite_url) as queue:
        job_id = queue.enqueue(module.triple, 14)
        assert start_node(sqlite_url, "node", processes=1, burst=True).wait(60) == 0
        job = queue.get(job_id)
    assert (job.state, job.error.type) == (State.ERROR, "ModuleNotFoundError")
    assert f"No module named '{name}'" in job.error.message
    sys.modules.pop(name, None)


def _recorded_env(call: tuple) -> dict:
    frame = serialize.dumps(call, key=b"k" * 32, job_id="j", kind=Kind.CALL).frame
    return serialize._split(frame, "call")[1]["env"]


def test_a_payload_records_the_versions_of_the_installed_packages_it_names():
    sklearn = pytest.importorskip("sklearn")
    shipping._distributions.cache_clear()
    shipping.installed_version.cache_clear()
    assert _recorded_env((operator.add, (1, 2), {})) == {}  # the standard library: nothing to record
    assert _recorded_env((np.sum, (np.arange(3),), {})) == {"numpy": np.__version__}  # named after its module
    # Only a first submit naming no installed package skipped reading every distribution's file list:
    assert shipping._distributions.cache_info().currsize == 0
    from sklearn.linear_model import LinearRegression

    # scikit-learn's module is sklearn: found through the installed distributions' file lists
    assert _recorded_env((LinearRegression, (), {})) == {"sklearn": sklearn.__version__}
    assert shipping.environment_differences({"sklearn": "0.0", "numpy": np.__version__}) == [
        f"sklearn 0.0 in the notebook, {sklearn.__version__} here"]


def test_a_package_version_that_breaks_loading_is_named(monkeypatch):
    monkeypatch.setattr(shipping, "referenced_versions", lambda body: {"numpy": "0.0.1"})
    frame = serialize.dumps((identity, (NeedsOtherNumpy(),), {}), key=b"k" * 32, job_id="j", kind=Kind.CALL).frame
    with pytest.raises(EnvironmentMismatch, match=rf"AttributeError.*numpy 0\.0\.1 in the notebook, {np.__version__} "
                                                  r"here; install the notebook's versions on every node"):
        serialize.loads(frame, key=b"k" * 32, job_id="j", kinds={Kind.CALL})


def test_a_node_with_other_package_versions_hands_the_job_back_unspent(queue_url, monkeypatch):
    monkeypatch.setattr(shipping, "referenced_versions", lambda body: {"numpy": "0.0.1"})
    with Queue(queue_url) as queue:
        job_id = queue.enqueue(identity, NeedsOtherNumpy(), options={"attempts": 2})
        node = start_node(queue_url, "other-env", processes=1, burst=True)
        assert node.wait(60) == 0, node_log(node)  # a burst node leaves what it cannot load
        job = queue.get(job_id)
    assert (job.state, job.trial, job.attempts_left) == (State.PENDING, 0, 2)
    assert f"numpy 0.0.1 in the notebook, {np.__version__} here" in job.progress_message
    assert "cannot load it" in job.progress_message
