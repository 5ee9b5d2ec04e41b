"""Storage backends, chosen by URL: ``sqlite:///path`` or ``mongodb://…``.

The only package that imports a database driver.
"""

from __future__ import annotations

from core4nb.errors import ConfigError
from core4nb.store.base import DEFAULT_LEASE_SECONDS, Claimant, Store, WorkerInfo
from core4nb.store.urls import URL_ENV, check_on_this_machine, default_url, embedded_path, env_url, redact_url

__all__ = ["DEFAULT_LEASE_SECONDS", "URL_ENV", "Claimant", "Store", "WorkerInfo", "check_on_this_machine",
           "default_url", "embedded_path", "env_url", "open_store", "redact_url"]


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
