"""Fixtures shared by every test: a fresh queue URL on each store backend.

``queue_url`` is parametrized over the embedded SQLite store and the MongoDB
store (the ``nx-27017`` wire-protocol server started here, or a real MongoDB
when ``CORE4NB_TEST_MONGO_URL`` is set). Every test gets its own database.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from core4nb.serialize import load_key
from tests.servers import WireServer

REAL_MONGO_URL = os.environ.get("CORE4NB_TEST_MONGO_URL")
BACKENDS = ["sqlite", "mongo-wire"] + (["mongo-real"] if REAL_MONGO_URL else [])


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
