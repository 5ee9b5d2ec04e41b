"""The embedded queue's file on disk: where it may live, how it is opened and write-locked, its schema.

:mod:`core4nb.store.sqlite` owns the store's verbs; this module decides whether a path is
fit to be a queue (see :func:`check_path`), opens it read-only when this user cannot write
it (``core4nb status`` and ``jobs`` still work), and creates or upgrades its schema only when
it is not current -- so a reader never waits for the write lock another process holds.
"""

from __future__ import annotations

import logging
import os
import random
import sqlite3
import stat
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import TypeVar
from urllib.parse import quote

from core4nb.errors import ConfigError, StoreUnavailable
from core4nb.store import paths
from core4nb.store import sqlite_sql as sql

FIX = "point the queue URL at a writable file, e.g. sqlite://~/.core4nb/queue.db"
PRIVATE = "keep the queue in a directory only you own and can write, e.g. sqlite://~/.core4nb/queue.db"
BUSY_TIMEOUT = 30.0  # seconds a writer waits for the lock before giving up
# SQLite's own busy handler sleeps up to 100 ms between tries: when 32 idle nodes are woken at once,
# the last ones then claim long after the lock is free. Short jittered sleeps in Python instead (retry_busy).
_LOCK_RETRY = (0.0005, 0.002)
log = logging.getLogger("core4nb.store")
T = TypeVar("T")


def check_path(path: Path) -> bool:
    """Check that ``path`` can be a queue file: not another user's, not writable by others (whoever can
    write it controls the jobs); create its directory (0700) and the file (0600) when they are missing.
    Returns True when this user can only read it: then it is opened read-only."""
    if path.is_dir():
        raise ConfigError(f"queue path {path} is a directory, not a file; use e.g. sqlite://{path / 'queue.db'}")
    try:
        paths.make_private_dirs(path.parent)
    except OSError as exc:
        why = "a file is in the way" if isinstance(exc, NotADirectoryError) else exc.strerror
        raise StoreUnavailable(f"cannot create directory {path.parent} for the queue: {why}; {FIX}") from None
    for part in (path.parent, path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        _check_owner_and_mode(part)
    # WAL needs to create <file>-wal and -shm next to the database, so the directory must be writable too.
    writable = os.access(path.parent, os.W_OK | os.X_OK) and (not path.exists() or os.access(path, os.W_OK))
    if not writable and not (path.exists() and os.access(path, os.R_OK)):
        raise StoreUnavailable(f"queue file {path} (or its directory) is not writable by this user; {FIX}")
    if writable and not path.exists():
        with suppress(FileExistsError):  # 0600 from the start; SQLite gives -wal and -shm the file's mode
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    return not writable


def check_existing(path: Path) -> None:
    """For a reader (``core4nb status``, ``jobs``): the queue file must be there; nothing is created."""
    for part in (path.parent, path, Path(f"{path}-wal"), Path(f"{path}-shm")):  # a queue in /tmp: say so first
        _check_owner_and_mode(part)
    if not path.is_file():
        where = "is a directory" if path.is_dir() else "does not exist"
        raise StoreUnavailable(f"no queue at {path}: the file {where}; check the URL (the first Core4Executor, "
                               "enqueue or `core4nb worker` on a URL creates its queue)")
    if not os.access(path, os.R_OK):
        raise StoreUnavailable(f"queue file {path} is not readable by this user; {FIX}")


def _check_owner_and_mode(part: Path) -> None:
    """Refuse a queue file or directory another user owns or may write; warn when others may read it."""
    try:
        st = part.stat()
    except FileNotFoundError:
        return
    kind = "directory" if stat.S_ISDIR(st.st_mode) else "file"
    if st.st_uid != os.geteuid():
        raise ConfigError(f"queue {kind} {part} belongs to another user (uid {st.st_uid}), who could change "
                          f"the jobs your workers run; {PRIVATE}")
    if st.st_mode & stat.S_IWOTH:
        raise ConfigError(f"queue {kind} {part} is writable by other users (mode {stat.S_IMODE(st.st_mode):o}), "
                          f"who could change the jobs your workers run; {PRIVATE}, or run `chmod o-w {part}`")
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("queue %s %s is open to other users (mode %o): they can read job arguments and results; "
                    "run `chmod %s %s`", kind, part, stat.S_IMODE(st.st_mode), "700" if kind == "directory" else
                    "600", part)


def connect(path: Path, timeout: float, *, read_only: bool) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit: BEGIN IMMEDIATE controls locking)."""
    if not read_only:
        conn = sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=False)
        try:
            present = _columns(conn, path)  # another application's file is left as it is: no WAL switch either
        except ConfigError:
            conn.close()
            raise
        if not present:  # a new file, before any table exists: pages freed by a prune go back to the disk
            conn.execute("PRAGMA auto_vacuum = INCREMENTAL")  # (on a file with tables it would wait for the lock)
        conn.execute("PRAGMA journal_mode = WAL")
        # NORMAL is crash-safe in WAL (a dying process loses nothing); only power loss may lose last commits.
        conn.execute("PRAGMA synchronous = NORMAL")
        return conn
    # Read-only: no journal change, no schema. Where not even the WAL index can be made (a read-only
    # directory without one), nobody can change the file either: read it as immutable.
    shm = Path(f"{path}-shm").exists() or os.access(path.parent, os.W_OK)
    uri = f"file:{quote(str(path))}?mode=ro" + ("" if shm else "&immutable=1")
    return sqlite3.connect(uri, uri=True, timeout=timeout, isolation_level=None, check_same_thread=False)


def _columns(conn: sqlite3.Connection, path: Path) -> set[str]:
    """The columns of the file's ``queue`` table (none: a new file).

    Raises:
        ConfigError: the file has a ``queue`` table that is not core4nb's (another application's database).
    """
    present = {row[1] for row in conn.execute("PRAGMA table_info(queue)")}
    missing = sorted(set(sql.COLUMNS) - sql.ADDED_COLUMNS - present)
    if present and missing:
        raise ConfigError(f"{path} is not a core4nb queue: its table 'queue' has no column {missing[0]!r} (another "
                          "application's database?); leave it alone and point the queue URL at another file, "
                          "e.g. sqlite://~/.core4nb/queue.db")
    return present


def schema_is_current(conn: sqlite3.Connection, path: Path) -> bool:
    """Whether the file already has this version's schema (then opening it writes nothing)."""
    present = _columns(conn, path)
    return conn.execute("PRAGMA user_version").fetchone()[0] == sql.VERSION and set(sql.COLUMNS) <= present


def create_schema(conn: sqlite3.Connection) -> None:
    """Inside the opener's write transaction: create or upgrade the tables and indexes (idempotent)."""
    for statement in filter(str.strip, sql.SCHEMA.split(";")):
        conn.execute(statement)
    sql.add_missing_columns(conn)
    for statement in filter(str.strip, sql.INDEXES.split(";")):
        conn.execute(statement)


def retry_busy(action: Callable[[], T]) -> T:
    """``action()``, tried again in short jittered steps while another connection holds a lock it needs
    (SQLITE_BUSY), for up to :data:`BUSY_TIMEOUT`. A store's connections run with SQLite's own busy
    timeout at 0 (see ``SQLiteStore._conn``), so every statement that may meet a lock goes through this."""
    deadline = time.monotonic() + BUSY_TIMEOUT
    while True:
        try:
            return action()
        except sqlite3.OperationalError as exc:
            if not getattr(exc, "sqlite_errorname", "").startswith("SQLITE_BUSY") or time.monotonic() > deadline:
                raise
        time.sleep(random.uniform(*_LOCK_RETRY))


def begin_immediate(conn: sqlite3.Connection) -> None:
    """Take the write lock, retrying briefly and often while another writer holds it."""
    retry_busy(lambda: conn.execute("BEGIN IMMEDIATE"))
