"""Storage backends, chosen by URL: ``sqlite:///path`` or ``mongodb://…``.

The only package that imports a database driver.
"""

from __future__ import annotations

import os
from pathlib import Path

from core4nb.errors import ConfigError
from core4nb.store.base import DEFAULT_LEASE_SECONDS, Claimant, Store, WorkerInfo
from core4nb.store.paths import home
from core4nb.store.urls import redact_url

URL_ENV = "CORE4NB_URL"

__all__ = ["DEFAULT_LEASE_SECONDS", "URL_ENV", "Claimant", "Store", "WorkerInfo", "default_url", "open_store",
           "redact_url"]


def open_store(url: str, *, read_only: bool = False) -> Store:
    """Open the store a URL names; ``read_only``: an existing queue, to look at (``core4nb status``).

    ``sqlite://PATH`` (``sqlite:///home/me/q.db`` is the absolute path ``/home/me/q.db``, ``sqlite://~/q.db``
    one in the home directory)
    or ``mongodb://[user:pass@]host[:port]/DATABASE[?collection_prefix=sys.]``.

    Raises:
        ConfigError: the URL is malformed or names an unknown scheme.
        StoreUnavailable: the database cannot be reached or opened; read-only, there is no queue at the URL.
    """
    if not isinstance(url, str) or "://" not in url:
        raise ConfigError(
            f"queue URL {redact_url(url) if isinstance(url, str) else url!r} is not a URL: use "
            "sqlite:///path/to/queue.db or mongodb://host:27017/dbname"
        )
    scheme = url.split("://", 1)[0].lower()
    if scheme == "sqlite":
        from core4nb.store.sqlite import SQLiteStore

        return SQLiteStore(url, read_only=read_only)
    if scheme in ("mongodb", "mongodb+srv"):
        from core4nb.store.mongo import MongoStore

        return MongoStore(url, read_only=read_only)
    raise ConfigError(
        f"queue URL {redact_url(url)!r} has unknown scheme {scheme!r}: use sqlite:///path or mongodb://host/dbname"
    )


def embedded_path(url: str) -> Path | None:
    """The file of an embedded (``sqlite://``) queue URL, or None for another kind of URL."""
    scheme, sep, raw = url.partition("://")
    return Path(raw).expanduser() if sep and scheme.lower() == "sqlite" and raw else None


def env_url() -> str | None:
    """The queue URL from ``CORE4NB_URL``, or None for the embedded default."""
    return os.environ.get(URL_ENV) or None


def default_url() -> str:
    """``CORE4NB_URL``, else the embedded queue file in :func:`~core4nb.store.paths.home`."""
    return env_url() or f"sqlite://{home() / 'queue.db'}"
