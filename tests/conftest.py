"""Fixtures shared by every test: a fresh queue URL on each store backend.

``queue_url`` is parametrized over the embedded SQLite store and the MongoDB
store (the ``nx-27017`` wire-protocol server started here, or a real MongoDB
when ``CORE4NB_TEST_MONGO_URL`` is set). Every test gets its own database.

``CORE4NB_TEST_LOAD=N`` runs the whole session on a busy machine: N CPU-bound processes
(``cores``: one per core) spin from the first test to the last, so timing assumptions fail here
rather than on a newcomer's loaded laptop.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from core4nb.keys import load_key
from tests.servers import WireServer

REAL_MONGO_URL = os.environ.get("CORE4NB_TEST_MONGO_URL")
BACKENDS = ["sqlite", "mongo-wire"] + (["mongo-real"] if REAL_MONGO_URL else [])


def load_processes() -> int:
    """How many CPU-bound processes ``CORE4NB_TEST_LOAD`` asks for (0: a quiet run)."""
    value = os.environ.get("CORE4NB_TEST_LOAD", "").strip().lower()
    if value in ("", "0"):
        return 0
    if value == "cores":
        return os.cpu_count() or 1
    if not value.isdigit():
        raise pytest.UsageError(f"CORE4NB_TEST_LOAD={value!r}: use a number of CPU-bound processes, or 'cores'")
    return int(value)


def pytest_configure(config: pytest.Config) -> None:
    load_processes()  # a bad value is one usage error before any test, not an error in each


def pytest_report_header() -> str | None:
    count = load_processes()
    return f"under load: {count} CPU-bound processes (CORE4NB_TEST_LOAD)" if count else None


@pytest.fixture(scope="session", autouse=True)
def _machine_load() -> Iterator[None]:
    """The ``CORE4NB_TEST_LOAD`` burners, started before the first test and stopped by pid after the last."""
    spin = "import os\nparent = os.getppid()\nwhile os.getppid() == parent: pass"  # ends if pytest is killed
    burners = [subprocess.Popen([sys.executable, "-c", spin], start_new_session=True) for _ in range(load_processes())]
    yield
    for burner in burners:
        os.kill(burner.pid, signal.SIGKILL)
        burner.wait()


@pytest.fixture(autouse=True)
def _isolated_key(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test signs with its own cluster key file, never the user's."""
    monkeypatch.delenv("CORE4NB_KEY", raising=False)
    monkeypatch.delenv("CORE4NB_URL", raising=False)
    monkeypatch.setenv("CORE4NB_KEY_FILE", str(tmp_path_factory.mktemp("key") / "key"))
    # MongoDB queues read blobs through a per-machine cache: the tests' own, never ~/.cache.
    monkeypatch.setenv("CORE4NB_BLOB_CACHE", str(tmp_path_factory.mktemp("blob-cache")))
    load_key()  # made now: a MongoDB queue's worker started before the first enqueue never makes one itself


@pytest.fixture(scope="session")
def wire_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WireServer]:
    server = WireServer(tmp_path_factory.mktemp("nx")).start()
    yield server
    server.stop()


def _mongo_url(base: str, prefix: str) -> str:
    """A fresh database on the server at ``base``; nx rejects ``sys.`` names (notes)."""
    db = f"c4t_{secrets.token_hex(4)}"
    return f"{base.rstrip('/')}/{db}?collection_prefix={prefix}"


@pytest.fixture(params=BACKENDS)
def queue_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A URL to an empty queue on each backend."""
    if request.param == "sqlite":
        yield f"sqlite://{tmp_path / 'queue.db'}"
    elif request.param == "mongo-wire":
        yield _mongo_url(request.getfixturevalue("wire_server").url, "sys_")
    else:
        url = _mongo_url(REAL_MONGO_URL, "sys.")
        yield url
        import pymongo

        client = pymongo.MongoClient(url)
        client.drop_database(client.get_default_database().name)
        client.close()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite://{tmp_path / 'queue.db'}"


@pytest.fixture
def mongo_url(request: pytest.FixtureRequest) -> str:
    """A fresh database on the MongoDB wire-protocol test server (or the real MongoDB when given)."""
    if REAL_MONGO_URL:
        return _mongo_url(REAL_MONGO_URL, "sys.")
    return _mongo_url(request.getfixturevalue("wire_server").url, "sys_")
