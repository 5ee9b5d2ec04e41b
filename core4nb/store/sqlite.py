"""The embedded queue: one SQLite file shared by the worker processes of one machine.

Why it is built this way (measured in notes/mongo-test-server.md, "The embedded store"):

- WAL journal: readers (status, widgets) never block the writer and vice versa;
  ``busy_timeout`` makes racing writers wait their turn instead of failing.
- Every write runs inside ``BEGIN IMMEDIATE``, which takes the database's single
  write lock up front. A read-then-write inside one such transaction therefore
  cannot interleave with another process's write: that is what makes ``claim``
  (and its ``max_parallel`` count) race-free without a lock table.
- Real columns for everything a query filters or orders on; blobs stay in their
  own columns and are only read when asked for.
- One connection per thread and per process: a SQLite connection must never be
  used from both sides of a ``fork``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from core4nb.errors import ConfigError, JobNotFound, MalformedJob, PayloadError, StoreUnavailable
from core4nb.job import CLAIMABLE_STATES, SCALAR_FIELDS, Job, State, new_token
from core4nb.store import base, bell
from core4nb.store.base import DEFAULT_LEASE_SECONDS, Claimant, Store, WorkerInfo, check_finish, lease_for, redact_url
from core4nb.store.decode import decode_job
from core4nb.store.decode import set_aside_error as _set_aside_error

BUSY_TIMEOUT = 30.0  # seconds a writer waits for the lock before giving up
# SQLite's own busy handler sleeps up to 100 ms between tries: when 32 idle nodes are woken at once,
# the last ones then claim long after the lock is free. Short jittered sleeps in Python instead.
_LOCK_RETRY = (0.0005, 0.002)
MAX_SET_ASIDE = 16  # malformed rows one claim moves to error before it answers "nothing now"

_COLUMNS = {  # Job fields, the lease flattened into lease_* columns, blobs apart, the error as JSON text
    "id": "TEXT PRIMARY KEY", "name": "TEXT NOT NULL", "payload": "BLOB", "args_summary": "TEXT NOT NULL",
    "parent_id": "TEXT", "root_id": "TEXT NOT NULL", "priority": "INTEGER NOT NULL", "max_parallel": "INTEGER",
    "attempts": "INTEGER NOT NULL", "attempts_left": "INTEGER NOT NULL", "trial": "INTEGER NOT NULL",
    "defer_time": "REAL NOT NULL", "defer_max": "REAL", "error_time": "REAL NOT NULL", "wall_time": "REAL",
    "state": "TEXT NOT NULL", "query_at": "REAL NOT NULL",
    "lease_worker": "TEXT", "lease_node": "TEXT", "lease_pid": "INTEGER", "lease_token": "TEXT", "lease_until": "REAL",
    "progress_value": "REAL", "progress_message": "TEXT NOT NULL", "enqueued_at": "REAL NOT NULL",
    "started_at": "REAL", "finished_at": "REAL", "deferred_since": "REAL", "runtime": "REAL",
    "result": "BLOB", "error": "TEXT", "kill_requested": "INTEGER NOT NULL DEFAULT 0", "restarted_from": "TEXT",
}
# A new Job field must get a column here, or jobs would silently lose it.
assert set(SCALAR_FIELDS) <= set(_COLUMNS), set(SCALAR_FIELDS) - set(_COLUMNS)

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS queue ({", ".join(f"{c} {t}" for c, t in _COLUMNS.items())});
CREATE INDEX IF NOT EXISTS queue_claim
    ON queue (state, priority DESC, id, query_at, kill_requested, max_parallel, name);
CREATE INDEX IF NOT EXISTS queue_root ON queue (root_id, state);
CREATE INDEX IF NOT EXISTS queue_parent ON queue (parent_id, state);
CREATE INDEX IF NOT EXISTS queue_name ON queue (name, state);
CREATE TABLE IF NOT EXISTS worker (name TEXT PRIMARY KEY, doc TEXT NOT NULL);
PRAGMA user_version = 1;
"""

_ALL = ", ".join(_COLUMNS)
_NO_BLOBS = ", ".join(c for c in _COLUMNS if c not in ("payload", "result"))
_CLAIMABLE = "('pending', 'deferred', 'failed')"
assert {State(s) for s in ("pending", "deferred", "failed")} == CLAIMABLE_STATES
_NO_LEASE = dict.fromkeys(("lease_worker", "lease_node", "lease_pid", "lease_token", "lease_until"))

# The best claimable job: priority, then FIFO, skipping names already at max_parallel. `busy` counts the
# running jobs per name once per claim (few rows); a per-candidate COUNT(*) made every claim crawl past a long
# run of blocked jobs (20k blocked ahead: 68 → 300 claims/s). queue_claim carries the filtered columns so that
# the scan past blocked jobs never touches the table. A trial that is not an integer is left as it is (SQLite
# would make 'abc' + 1 a valid 1), so that decoding the claimed row sees the malformed value and sets it aside.
_CLAIM = f"""
UPDATE queue SET state = 'running', lease_worker = :worker, lease_node = :node, lease_pid = :pid,
    lease_token = :token, lease_until = :until, started_at = :now,
    trial = CASE WHEN typeof(trial) = 'integer' THEN trial + 1 ELSE trial END
WHERE id = (
    WITH busy(name, n) AS MATERIALIZED (SELECT name, COUNT(*) FROM queue WHERE state = 'running' GROUP BY name)
    SELECT q.id FROM queue AS q
    WHERE q.state IN {_CLAIMABLE} AND q.query_at <= :now AND q.kill_requested = 0
      AND (q.max_parallel IS NULL OR q.max_parallel > COALESCE((SELECT n FROM busy WHERE busy.name = q.name), 0))
    ORDER BY q.priority DESC, q.id ASC LIMIT 1)
RETURNING rowid AS _rowid, {_ALL}
"""

# Error codes that mean "the database is not usable right now", not "the SQL is wrong".
_UNAVAILABLE = ("SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_IOERR", "SQLITE_READONLY", "SQLITE_CANTOPEN",
                "SQLITE_FULL", "SQLITE_NOTADB", "SQLITE_CORRUPT")


def _begin_immediate(conn: sqlite3.Connection) -> None:
    """Take the write lock, retrying briefly and often while another writer holds it."""
    deadline = time.monotonic() + BUSY_TIMEOUT
    conn.execute("PRAGMA busy_timeout = 0")
    try:
        while True:
            try:
                conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if getattr(exc, "sqlite_errorname", "") != "SQLITE_BUSY" or time.monotonic() > deadline:
                    raise
                time.sleep(random.uniform(*_LOCK_RETRY))
    finally:
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT * 1000)}")


def _columns(fields: dict[str, Any]) -> dict[str, Any]:
    """Job attribute values → column values."""
    out = dict(fields)
    if "state" in out:
        out["state"] = str(State(out["state"]))
    if "kill_requested" in out:
        out["kill_requested"] = int(bool(out["kill_requested"]))
    for blob in ("payload", "result"):
        if out.get(blob) is not None:
            out[blob] = bytes(out[blob])
    if "lease" in out:
        lease = out.pop("lease")
        out.update(_NO_LEASE if lease is None else {f"lease_{k}": v for k, v in dataclasses.asdict(lease).items()})
    if "error" in out:
        out["error"] = None if out["error"] is None else json.dumps(dataclasses.asdict(out["error"]))
    return out


def _fields(row: sqlite3.Row) -> dict[str, Any]:
    """A row as the fields decode_job reads; error JSON decoded (left as text if it is not JSON: decoding names it)."""
    data = dict(zip(row.keys(), row, strict=True))
    if isinstance(data.get("error"), str):
        with suppress(ValueError):
            data["error"] = json.loads(data["error"])
    return data


def _set_aside(conn: sqlite3.Connection, rowid: int, problem: str, now: float) -> None:
    """Move a row that cannot be read as a job to error (by rowid: its id may be the malformed part)."""
    conn.execute("UPDATE queue SET state = 'error', error = ?, finished_at = ?, lease_worker = NULL, lease_node = "
                 "NULL, lease_pid = NULL, lease_token = NULL, lease_until = NULL WHERE rowid = ?",
                 (json.dumps(dataclasses.asdict(_set_aside_error(problem))), now, rowid))


def _where(**filters: Any) -> tuple[str, list[Any]]:
    """A WHERE clause ANDing the given filters; None means "any"."""
    where, params = ["1"], []
    for column, value in filters.items():
        if value is None:
            continue
        if column in ("ids", "states"):
            # json_each(): any number of values in one parameter (no SQLITE_MAX_VARIABLE_NUMBER limit).
            values = [str(State(v)) for v in value] if column == "states" else list(value)
            where.append(f"{column[:-1]} IN (SELECT value FROM json_each(?))")
            params.append(json.dumps(values))
        else:
            where.append(f"{column} = ?")
            params.append(value)
    return " AND ".join(where), params


class SQLiteStore(Store):
    """The queue in one SQLite file: ``SQLiteStore("sqlite:///path/to/queue.db")``."""

    def __init__(self, url: str) -> None:
        self.url = url
        scheme, _, raw = url.partition("://")
        if scheme.lower() != "sqlite" or not raw or raw.startswith(":memory:") or "?" in raw:
            raise ConfigError(f"queue URL {redact_url(url)!r} does not name a file: use sqlite:///path/to/queue.db "
                              "(three slashes for an absolute path; worker processes must share the file)")
        self.path = Path(raw).expanduser()
        self._check_path()
        self._bells = bell.bell_dir(self.path)
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._closed = False
        with self._tx() as conn:  # every opener runs it: IF NOT EXISTS makes it idempotent, the lock serial
            for statement in filter(str.strip, _SCHEMA.split(";")):
                conn.execute(statement)

    def _check_path(self) -> None:
        path, fix = self.path, "point the queue URL at a writable file, e.g. sqlite:///tmp/core4nb/queue.db"
        if path.is_dir():
            raise ConfigError(f"queue path {path} is a directory, not a file; use e.g. sqlite://{path / 'queue.db'}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            why = "a file is in the way" if isinstance(exc, FileExistsError | NotADirectoryError) else exc.strerror
            raise StoreUnavailable(f"cannot create directory {path.parent} for the queue: {why}; {fix}") from None
        # WAL needs to create <file>-wal and -shm next to the database, so the directory must be writable too.
        if not os.access(path.parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.R_OK | os.W_OK)):
            raise StoreUnavailable(f"queue file {path} (or its directory) is not writable by this user; {fix}")

    # -- connections -----------------------------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        if self._closed:
            raise StoreUnavailable(f"queue store {redact_url(self.url)} was closed; open a new one with open_store()")
        if os.getpid() != self._pid:
            # Forked: the parent's connections (and lock) are not ours to use, nor to close.
            self._pid, self._lock, self._local, self._conns = os.getpid(), threading.Lock(), threading.local(), []
        conn = getattr(self._local, "conn", None)
        if conn is None:
            with self._errors():
                # Autocommit mode: transactions are explicit (BEGIN IMMEDIATE) so we control locking.
                conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False)
                conn.row_factory = sqlite3.Row
                conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT * 1000)}")
                conn.execute("PRAGMA journal_mode = WAL")
                # NORMAL is crash-safe in WAL (a dying process loses nothing); only power loss may lose last commits.
                conn.execute("PRAGMA synchronous = NORMAL")
            self._local.conn = conn
            with self._lock:
                self._conns.append(conn)
        return conn

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """Report a database that cannot be used as StoreUnavailable; SQL bugs and constraints stay as they are."""
        try:
            yield
        except sqlite3.DatabaseError as exc:
            name = getattr(exc, "sqlite_errorname", "") or ""
            if name == "SQLITE_TOOBIG":  # a blob over SQLite's length limit (1 GB unless lowered)
                limit = self._conn().getlimit(sqlite3.SQLITE_LIMIT_LENGTH) / 2**20
                raise PayloadError(f"a payload or result is over the embedded queue's size limit of {limit:.0f} MB "
                                   "(SQLite's largest blob): pass large data by path, or use a MongoDB queue "
                                   "(large blobs go to GridFS)") from None
            if name.startswith(_UNAVAILABLE):
                raise StoreUnavailable(f"queue file {self.path} cannot be used: {exc}; check the disk, the file's "
                                       "permissions and that it is a core4nb SQLite queue") from None
            raise

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction holding the database's write lock from its start."""
        conn = self._conn()
        with self._errors():
            _begin_immediate(conn)
            try:
                yield conn
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def _read(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[sqlite3.Row]:
        with self._errors():
            return self._conn().execute(sql, params).fetchall()

    def close(self) -> None:
        if os.getpid() == self._pid:  # a forked child must not close its parent's connections
            with self._lock:
                for conn in self._conns:
                    conn.close()
        self._conns, self._closed = [], True

    # -- jobs --------------------------------------------------------------------------------------
    def insert(self, jobs: Sequence[Job]) -> None:
        rows = [_columns({**{f: getattr(j, f) for f in SCALAR_FIELDS}, "payload": j.payload, "result": j.result,
                          "lease": j.lease, "error": j.error}) for j in jobs]
        if not rows:
            return
        try:
            with self._tx() as conn:
                conn.executemany(f"INSERT INTO queue ({_ALL}) VALUES ({', '.join(':' + c for c in _COLUMNS)})", rows)
        except sqlite3.IntegrityError:
            ids = [j.id for j in jobs]
            raise ValueError(f"a job id among {ids[:5]}{'…' if len(ids) > 5 else ''} is already in queue "
                             f"{redact_url(self.url)} (or repeated); nothing was inserted") from None
        bell.ring(self._bells, "work")

    def listen(self, role: str) -> bell.Bell:
        return bell.Bell(self._bells, role)

    def _not_found(self, job_id: str) -> JobNotFound:
        return JobNotFound(f"no job with id {job_id} in queue {redact_url(self.url)}; list jobs with `core4nb jobs`")

    def get(self, job_id: str, *, blobs: bool = True) -> Job:
        rows = self._read(f"SELECT {_ALL if blobs else _NO_BLOBS} FROM queue WHERE id = ?", (job_id,))
        if not rows:
            raise self._not_found(job_id)
        return base.listed_job(_fields(rows[0]))

    def find(self, *, ids: Iterable[str] | None = None, states: Iterable[State] | None = None,
             root_id: str | None = None, parent_id: str | None = None, limit: int | None = None,
             blobs: bool = False) -> list[Job]:
        where, params = _where(ids=ids, states=states, root_id=root_id, parent_id=parent_id)
        sql = f"SELECT {_ALL if blobs else _NO_BLOBS} FROM queue WHERE {where} ORDER BY id"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return [base.listed_job(_fields(row)) for row in self._read(sql, params)]

    def counts(self, *, root_id: str | None = None, parent_id: str | None = None) -> dict[State, int]:
        where, params = _where(root_id=root_id, parent_id=parent_id)
        return base.count_states(self._read(f"SELECT state, COUNT(*) FROM queue WHERE {where} GROUP BY state", params))

    def has_waiting(self) -> bool:
        return bool(self._read(f"SELECT 1 FROM queue WHERE state IN {_CLAIMABLE} AND kill_requested = 0 "
                               "AND typeof(query_at) IN ('integer', 'real') LIMIT 1"))

    def claim(self, claimant: Claimant, *, lease_seconds: float = DEFAULT_LEASE_SECONDS) -> Job | None:
        with self._tx() as conn:
            for _ in range(MAX_SET_ASIDE):
                now = time.time()
                lease = lease_for(claimant, new_token(), lease_seconds, now)
                # RETURNING: fetch every row before COMMIT, or the statement is still "in progress".
                rows = conn.execute(_CLAIM, {**dataclasses.asdict(lease), "now": now}).fetchall()
                if not rows:
                    return None
                try:
                    return decode_job(_fields(rows[0]))
                except MalformedJob as exc:  # never run it, never hand it to a node: move it to error
                    _set_aside(conn, rows[0]["_rowid"], str(exc), now)
        return None

    def finish(self, job_id: str, token: str, state: State, **fields: Any) -> bool:
        state = check_finish(state, fields)
        with self._tx() as conn:
            row = conn.execute("SELECT kill_requested, max_parallel FROM queue WHERE id = ? AND state = 'running' "
                               "AND lease_token = ?", (job_id, token)).fetchone()
            if row is None:
                return False  # not ours any more: reaped, killed, finished or removed
            now = time.time()
            # A job with a kill request is never claimed again, so it must not go back to waiting.
            if row[0] and state.is_claimable:
                state = State.KILLED
            values = {"state": str(state), **_NO_LEASE, **({"finished_at": now} if state.is_final else {})}
            values.update(_columns(fields))
            assignments = ", ".join(f"{c} = :{c}" for c in values)
            conn.execute(f"UPDATE queue SET {assignments} WHERE id = :_id", {**values, "_id": job_id})
        if state.is_final:
            bell.ring(self._bells, "done")
        if row[1] is not None or state == State.PENDING:  # a max_parallel slot is free, or a job handed back
            bell.ring(self._bells, "work")
        return True

    def heartbeat(self, leases: dict[str, str], *, lease_seconds: float = DEFAULT_LEASE_SECONDS) -> set[str]:
        lost = set()
        if not leases:
            return lost
        with self._tx() as conn:
            until = time.time() + lease_seconds
            for job_id, token in leases.items():
                cur = conn.execute("UPDATE queue SET lease_until = ? WHERE id = ? AND state = 'running' "
                                   "AND lease_token = ?", (until, job_id, token))
                if cur.rowcount == 0:
                    lost.add(job_id)
        return lost

    def set_progress(self, job_id: str, token: str, value: float | None, message: str) -> bool:
        with self._tx() as conn:
            cur = conn.execute("UPDATE queue SET progress_value = ?, progress_message = ? WHERE id = ? "
                               "AND state = 'running' AND lease_token = ?", (value, message, job_id, token))
        return cur.rowcount == 1

    def reap(self) -> list[Job]:
        reaped = []
        with self._tx() as conn:
            now = time.time()
            expired = conn.execute(f"SELECT rowid AS _rowid, {_NO_BLOBS} FROM queue WHERE state = 'running' "
                                   "AND lease_until < ?", (now,)).fetchall()
            for row in expired:
                try:
                    job = decode_job(_fields(row))
                except MalformedJob as exc:  # e.g. written as running by hand: no node will ever finish it
                    _set_aside(conn, row["_rowid"], str(exc), now)
                    continue
                state, left, error = base.reap_outcome(job, now)
                lease = job.lease
                values = _columns({"state": state, "attempts_left": left, "error": error, "lease": None,
                                   "query_at": now + job.error_time if state is State.FAILED else job.query_at,
                                   "finished_at": now if state.is_final else job.finished_at})
                assignments = ", ".join(f"{c} = :{c}" for c in values)
                # Conditional on the token it was reaped under: belt and braces on top of the write lock.
                rows = conn.execute(f"UPDATE queue SET {assignments} WHERE id = :_id AND state = 'running' AND "
                                    f"lease_token = :_token RETURNING {_NO_BLOBS}",
                                    {**values, "_id": job.id, "_token": lease.token}).fetchall()
                reaped.extend(decode_job(_fields(row)) for row in rows)
        return reaped

    def _subtree(self, job_id: str, tree: bool) -> tuple[str, list[Any]]:
        """A WHERE clause selecting the job (and with ``tree`` its descendants)."""
        rows = self._read("SELECT root_id FROM queue WHERE id = ?", (job_id,))
        if not rows:
            raise self._not_found(job_id)
        if not tree:
            return "id = ?", [job_id]
        if rows[0][0] == job_id:  # a root: its tree is exactly the jobs carrying its root_id
            return "root_id = ?", [job_id]
        return ("id IN (WITH RECURSIVE sub(id) AS (SELECT ? UNION SELECT q.id FROM queue AS q JOIN sub "
                "ON q.parent_id = sub.id) SELECT id FROM sub)"), [job_id]

    def request_kill(self, job_id: str, *, tree: bool = True) -> int:
        where, params = self._subtree(job_id, tree)
        with self._tx() as conn:
            killed = conn.execute(f"UPDATE queue SET state = 'killed', finished_at = ? WHERE {where} "
                                  f"AND state IN {_CLAIMABLE}", [time.time(), *params]).rowcount
            flagged = conn.execute(f"UPDATE queue SET kill_requested = 1 WHERE {where} AND state = 'running'",
                                   params).rowcount
        if killed:
            bell.ring(self._bells, "done")
        return killed + flagged

    def kill_requests(self, job_ids: Iterable[str]) -> set[str]:
        rows = self._read("SELECT id FROM queue WHERE id IN (SELECT value FROM json_each(?)) "
                          "AND state = 'running' AND kill_requested = 1", (json.dumps(list(job_ids)),))
        return {row[0] for row in rows}

    def remove(self, job_id: str) -> int:
        where, params = self._subtree(job_id, tree=True)
        with self._tx() as conn:
            return conn.execute(f"DELETE FROM queue WHERE {where}", params).rowcount

    # -- worker nodes ------------------------------------------------------------------------------
    def save_worker(self, info: WorkerInfo) -> None:
        with self._tx() as conn:
            conn.execute("INSERT OR REPLACE INTO worker (name, doc) VALUES (?, ?)",
                         (info.name, json.dumps(dataclasses.asdict(info))))

    def workers(self) -> list[WorkerInfo]:
        return [WorkerInfo(**json.loads(row[0])) for row in self._read("SELECT doc FROM worker ORDER BY name")]

    def remove_worker(self, name: str) -> None:
        with self._tx() as conn:
            conn.execute("DELETE FROM worker WHERE name = ?", (name,))
