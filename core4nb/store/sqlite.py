"""The embedded queue: one SQLite file shared by the worker processes of one machine.

Why it is built this way (the table and its SQL are in :mod:`core4nb.store.sqlite_sql`):

- WAL journal: readers (status, widgets) never block the writer and vice versa;
  racing writers retry the write lock in short jittered steps (``sqlite_file.begin_immediate``).
- Every write runs inside ``BEGIN IMMEDIATE``, which takes the database's single
  write lock up front. A read-then-write inside one such transaction therefore
  cannot interleave with another process's write: that is what makes ``claim``
  (and its ``max_parallel`` count) race-free without a lock table.
- The lock is held for the statements alone (32 nodes woken at once queue on it):
  values are converted before it and claimed rows decoded after it; an idle
  node's claim is a read that finds nothing due, no lock at all; and a node's
  outcome shares one transaction with its next claim (``finish_and_claim``).
- Real columns for everything a query filters or orders on; blobs stay in their
  own columns and are only read when asked for.
- One connection per thread and per process: a SQLite connection must never be
  used from both sides of a ``fork``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from core4nb import transitions
from core4nb.errors import BlobMissing, ConfigError, JobNotFound, MalformedJob, PayloadError, StoreUnavailable
from core4nb.job import LARGE_FIELDS, OUTPUT_LIMIT, SCALAR_FIELDS, Job, Lease, State
from core4nb.store import base, bell, sqlite_file
from core4nb.store import sqlite_sql as sql
from core4nb.store.base import DEFAULT_LEASE_SECONDS, Claimant, Store, WorkerInfo
from core4nb.store.blobfiles import FileBlobs
from core4nb.store.decode import decode_job, decode_lease
from core4nb.store.sqlite_keeping import SQLiteHousekeeping
from core4nb.store.urls import redact_url

log = logging.getLogger("core4nb.store")

MAX_SET_ASIDE = 16  # malformed rows one claim moves to error before it answers "nothing now"

# Error codes that mean "the database is not usable right now", not "the SQL is wrong".
_UNAVAILABLE = ("SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_IOERR", "SQLITE_READONLY", "SQLITE_CANTOPEN",
                "SQLITE_FULL", "SQLITE_NOTADB", "SQLITE_CORRUPT")


class SQLiteStore(SQLiteHousekeeping, Store):
    """The queue in one SQLite file: ``SQLiteStore("sqlite:///path/to/queue.db")``."""

    claims_locally = True

    def __init__(self, url: str, *, read_only: bool = False) -> None:
        self.url = url
        scheme, _, raw = url.partition("://")
        if scheme.lower() != "sqlite" or not raw or raw.startswith(":memory:") or "?" in raw:
            raise ConfigError(f"queue URL {redact_url(url)!r} does not name a file: use sqlite:///path/to/queue.db "
                              "(three slashes for an absolute path; worker processes must share the file)")
        self.path = Path(raw).expanduser()
        if read_only:
            sqlite_file.check_existing(self.path)
        self.read_only = read_only or sqlite_file.check_path(self.path)
        self._bells = bell.bell_dir(self.path)
        self.blobs = FileBlobs(self.path.with_name(self.path.name + "-blobs"))
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._closed = False
        with self._errors():
            current = sqlite_file.retry_busy(lambda: sqlite_file.schema_is_current(self._conn(), self.path))
        if current:  # a read first: a reader never waits for another's write lock
            return
        if self.read_only:
            raise StoreUnavailable(f"queue file {self.path} is opened read-only and has no current core4nb schema "
                                   "(empty, or written by an earlier version): open it once with write access "
                                   "(e.g. Core4Executor or `core4nb worker` on it), to upgrade it")
        with self._tx() as conn:  # IF NOT EXISTS makes it idempotent, the lock serial
            sqlite_file.create_schema(conn)
        self._convert_to_incremental_vacuum()

    def _convert_to_incremental_vacuum(self) -> None:
        """A queue file made before pruning existed keeps freed pages for ever: convert it once (VACUUM)."""
        conn = self._conn()
        if conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2:
            return
        try:
            conn.execute("PRAGMA auto_vacuum = INCREMENTAL")  # recorded now, applied by the VACUUM
            sqlite_file.retry_busy(lambda: conn.execute("VACUUM"))
        except sqlite3.OperationalError as exc:  # busy: another process holds the lock; the next open tries again
            log.info("queue file %s not converted to incremental vacuum yet: %s", self.path, exc)

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
                conn = sqlite_file.connect(self.path, sqlite_file.BUSY_TIMEOUT, read_only=self.read_only)
                conn.row_factory = sqlite3.Row
                # SQLite's busy handler off: a lock is waited for in sqlite_file.retry_busy (short jittered
                # steps). Setting the timeout around each write instead cost two statements per transaction.
                conn.execute("PRAGMA busy_timeout = 0")
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
            sqlite_file.begin_immediate(conn)
            try:
                yield conn
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def _read(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[sqlite3.Row]:
        with self._errors():  # a WAL reader meets a lock only while another connection recovers the log
            return sqlite_file.retry_busy(lambda: self._conn().execute(sql, params).fetchall())

    def close(self) -> None:
        if os.getpid() == self._pid:  # a forked child must not close its parent's connections
            with self._lock:
                for conn in self._conns:
                    conn.close()
        self._conns, self._closed = [], True

    # -- jobs --------------------------------------------------------------------------------------
    def insert(self, jobs: Sequence[Job]) -> None:
        rows = [sql.columns({**{f: getattr(j, f) for f in SCALAR_FIELDS}, **{f: getattr(j, f) for f in LARGE_FIELDS},
                          "lease": j.lease, "error": j.error}) for j in jobs]
        if not rows:
            return
        blobs = {name: data for job in jobs for name, data in job.blobs.items()}
        self.blobs.put(blobs)  # before the lock: writing 100s of MB must not stall every node's claims
        try:
            with self._tx() as conn:
                self._check_blobs(jobs, [row["payload_refs"].split() for row in rows], blobs)
                conn.executemany(sql.INSERT, rows)
                gathered = sql.gather_roots(conn, [j.id for j in jobs if j.state is State.GATHERING], time.time())
        except sqlite3.IntegrityError:
            raise base.duplicate_job(jobs, self.url) from None
        bell.ring(self._bells, "work")
        bell.ring_after(self._bells, gathered)

    def _check_blobs(self, jobs: Sequence[Job], names: Sequence[list[str]], blobs: dict[str, memoryview]) -> None:
        """Under the write lock: every blob the jobs name (``names``, per job) is there (a racing remove or
        sweep may have deleted one stored just before; it is written again). Raises BlobMissing for one
        nobody has."""
        for job, named in zip(jobs, names, strict=True):
            for name in named:
                if not self.blobs.has(name):
                    if name not in blobs:
                        raise BlobMissing(f"job {job.id} ({job.name}) names blob {name}, which queue "
                                          f"{redact_url(self.url)} no longer has (removed or swept); submit it anew")
                    self.blobs.put({name: blobs[name]})

    def listen(self, role: str) -> bell.Bell | None:
        return bell.listen(self._bells, role)

    def _not_found(self, job_id: str) -> JobNotFound:
        rows = self._read("SELECT pruned_at, finished_at FROM pruned WHERE root_id = ?", (job_id,))
        return base.not_found(job_id, self.url, rows[0] if rows else None)

    def get(self, job_id: str, *, blobs: bool = True) -> Job:
        rows = self._read(f"SELECT {sql.ALL if blobs else sql.NO_BLOBS} FROM queue WHERE id = ?", (job_id,))
        if not rows:
            raise self._not_found(job_id)
        return base.listed_job(sql.fields(rows[0]))

    def find(self, *, ids: Iterable[str] | None = None, states: Iterable[State] | None = None,
             root_id: str | None = None, parent_id: str | None = None, limit: int | None = None,
             blobs: bool = False) -> list[Job]:
        where, params = sql.where(ids=ids, states=states, root_id=root_id, parent_id=parent_id)
        query = f"SELECT {sql.ALL if blobs else sql.NO_BLOBS} FROM queue WHERE {where} ORDER BY id"
        if limit is not None:
            query += f" LIMIT {int(limit)}"
        return [base.listed_job(sql.fields(row)) for row in self._read(query, params)]

    def counts(self, *, root_id: str | None = None, parent_id: str | None = None) -> dict[State, int]:
        where, params = sql.where(root_id=root_id, parent_id=parent_id)
        return base.count_states(self._read(f"SELECT state, COUNT(*) FROM queue WHERE {where} GROUP BY state", params))

    def has_waiting(self, *, key_id: str | None = None, exclude: Iterable[str] = ()) -> bool:
        return bool(self._read(f"SELECT 1 FROM queue WHERE state IN {sql.CLAIMABLE} AND kill_requested = 0 "
                               f"AND typeof(query_at) IN ('integer', 'real') AND {sql.KEY_MATCH.format(q='')} "
                               "AND id NOT IN (SELECT value FROM json_each(:exclude)) LIMIT 1",
                               {"key_id": key_id, "exclude": json.dumps(list(exclude))}))

    def waiting_key_ids(self) -> set[str]:
        return {row[0] for row in self._read(f"SELECT DISTINCT key_id FROM queue WHERE state IN {sql.CLAIMABLE}")}

    def claim(self, claimant: Claimant, *, lease_seconds: float = DEFAULT_LEASE_SECONDS,
              rung: bool = False) -> Job | None:
        jobs = self.claim_many(claimant, 1, lease_seconds=lease_seconds, rung=rung)
        return jobs[0] if jobs else None

    def claim_many(self, claimant: Claimant, n: int, *, lease_seconds: float = DEFAULT_LEASE_SECONDS,
                   rung: bool = False) -> list[Job]:
        del rung  # a ring wakes every node of the file, and one job leaves all but one with nothing to claim:
        # each reads first (readers share the file) rather than queue for the write lock. Skipping the read
        # when rung cost 32 simulated nodes 1-4 points of scaling efficiency, and saved no measurable latency.
        jobs: list[Job] = []
        key = {"key_id": claimant.key_id}
        for _ in range(MAX_SET_ASIDE):
            # Idle nodes poll without taking the write lock, and without making a lease they would not use.
            if len(jobs) >= n or not self._read(sql.ANY_DUE, {"now": time.time(), **key}):
                break
            claimed: list[tuple[sqlite3.Row, float]] = []
            with self._tx() as conn:  # the lock is held for the UPDATEs alone: decoding waits until it is released
                while len(jobs) + len(claimed) < n:
                    params = sql.claim_params(claimant, lease_seconds)
                    rows = sql.claim_rows(conn, params)
                    if not rows:
                        break
                    claimed.append((rows[0], params["now"]))
                    # Another slot to fill: a look under the lock, cheaper than the claim it most often spares
                    # (a lone job, the end of a map), and than a claim of its own after this one.
                    if len(jobs) + len(claimed) < n and not conn.execute(sql.ANY_DUE, {"now": params["now"],
                                                                                     **key}).fetchone():
                        break
            decoded = [job for row, now in claimed if (job := self._decoded(row, now)) is not None]
            jobs += decoded
            if len(decoded) == len(claimed):  # none was malformed and set aside: what was due is taken
                break
        return jobs

    def _decoded(self, row: sqlite3.Row, now: float) -> Job | None:
        """The claimed row as a job; a malformed one is moved to error (it is ours: we hold its lease)."""
        try:
            return decode_job(sql.fields(row))
        except MalformedJob as exc:  # never run it, never hand it to a node
            with self._tx() as conn:
                sql.set_aside(conn, row["_rowid"], str(exc), now)
            return None

    def _finish(self, job_id: str, token: str, state: State, claimant: Claimant | None, lease_seconds: float,
                fields: dict[str, Any]) -> tuple[bool, Job | None]:
        """finish(), and with a claimant the claim of the next job in the same transaction."""
        now = time.time()
        moves = [(move, *sql.transition_sql(move)) for move in transitions.finish(state, fields, now)]
        params, claimed = None, []
        moved = []  # (new state, max_parallel) of the job once a move matched, and of a root it completed
        with self._tx() as conn:
            for move, sets, expect, values in moves:  # the first that matches: see transitions.finish
                rows = conn.execute(f"UPDATE queue SET {sets} WHERE id = :_id AND lease_token = :_token AND {expect} "
                                    "RETURNING max_parallel, parent_id", {**values, "_id": job_id, "_token": token})
                rows = rows.fetchall()  # whole: a RETURNING statement left unfinished would still be in progress
                if rows:
                    moved.append((move.state, rows[0][0]))
                    if move.state.is_final:  # its gathering parent may be done now: in the same transaction
                        moved += sql.gather_roots(conn, [rows[0][1]], values["finished_at"],
                                                  completed=move.state is State.COMPLETE)
                    break
            # Most finishes find nothing due (a lone job, the end of a map): one read, not the claim's UPDATE.
            if claimant and conn.execute(sql.ANY_DUE, {"now": now, "key_id": claimant.key_id}).fetchone():
                params = sql.claim_params(claimant, lease_seconds)
                claimed = sql.claim_rows(conn, params)
        bell.ring_after(self._bells, moved)
        job = self._decoded(claimed[0], params["now"]) if claimed else None
        if claimant and claimed and job is None:  # it was malformed and is set aside: claim the next one
            job = self.claim(claimant, lease_seconds=lease_seconds)
        return bool(moved), job

    def heartbeat(self, leases: dict[str, str], *, lease_seconds: float = DEFAULT_LEASE_SECONDS) -> set[str]:
        lost = set()
        if not leases:
            return lost
        with self._tx() as conn:
            until = time.time() + lease_seconds
            for job_id, token in leases.items():  # the count tells other machines it lives, whatever their clocks
                cur = conn.execute("UPDATE queue SET lease_until = ?, lease_beat = COALESCE(lease_beat, 0) + 1 "
                                   "WHERE id = ? AND state = 'running' AND lease_token = ?", (until, job_id, token))
                if cur.rowcount == 0:
                    lost.add(job_id)
        return lost

    def set_progress(self, job_id: str, token: str, value: float | None, message: str) -> bool:
        with self._tx() as conn:
            cur = conn.execute("UPDATE queue SET progress_value = ?, progress_message = ? WHERE id = ? "
                               "AND state = 'running' AND lease_token = ?", (value, message, job_id, token))
        return cur.rowcount == 1

    def append_output(self, job_id: str, token: str, text: str, *, first: bool = False) -> bool:
        kept = "''" if first else "output"
        with self._tx() as conn:
            cur = conn.execute(f"UPDATE queue SET output = substr({kept} || ?, ?) WHERE id = ? AND state = 'running' "
                               "AND lease_token = ?", (text, -OUTPUT_LIMIT, job_id, token))
        return cur.rowcount == 1

    def outputs(self, job_ids: Iterable[str]) -> dict[str, str]:
        rows = self._read("SELECT id, output FROM queue WHERE id IN (SELECT value FROM json_each(?))",
                          (json.dumps(list(job_ids)),))
        return {row[0]: row[1] for row in rows}

    def leases(self) -> dict[str, Lease]:
        out = {}
        for row in self._read(sql.LEASES):
            with suppress(MalformedJob):  # a hand-made running row: reap() sets it aside once it expires
                out[row["id"]] = decode_lease(dict(zip(row.keys(), row, strict=True)))
        return out

    def reap(self, *, host: str | None = None, silent: Mapping[str, Lease] | None = None) -> list[Job]:
        params = {"now": time.time(), "host": host, "ids": json.dumps(list(silent or ()))}
        if not self._read(f"SELECT 1 {sql.GONE} LIMIT 1", params):  # nothing to reap: no write lock
            return []
        with self._tx() as conn:
            params["now"] = time.time()
            reaped = sql.reap_rows(conn, params, dict(silent or {}))
            gathered = sql.gather_roots(conn, [job.parent_id for job in reaped if job.is_final], params["now"])
        bell.ring_after(self._bells, [(job.state, job.max_parallel) for job in reaped] + gathered)
        return reaped

    def _subtree(self, job_id: str, tree: bool) -> tuple[str, dict[str, str]]:
        """A WHERE clause selecting the job (and with ``tree`` its descendants), and its parameter."""
        rows = self._read("SELECT root_id FROM queue WHERE id = ?", (job_id,))
        if not rows:
            raise self._not_found(job_id)
        params = {"_subtree": job_id}
        if not tree:
            return "id = :_subtree", params
        if rows[0][0] == job_id:  # a root: its tree is exactly the jobs carrying its root_id
            return "root_id = :_subtree", params
        return ("id IN (WITH RECURSIVE sub(id) AS (SELECT :_subtree UNION SELECT q.id FROM queue AS q JOIN sub "
                "ON q.parent_id = sub.id) SELECT id FROM sub)"), params

    def request_kill(self, job_id: str, *, tree: bool = True) -> int:
        where, params = self._subtree(job_id, tree)
        with self._tx() as conn:
            counts, now = [], time.time()
            for move in (transitions.flag_kill(), transitions.kill_waiting(now)):
                sets, expect, values = sql.transition_sql(move)
                counts.append(conn.execute(f"UPDATE queue SET {sets} WHERE {where} AND {expect}",
                                           {**values, **params}).rowcount)
            gathered = []
            if counts[1]:  # a job killed now may settle its gathering parent (a chunk's root)
                parent = conn.execute("SELECT parent_id FROM queue WHERE id = ?", (job_id,)).fetchone()
                gathered = sql.gather_roots(conn, [parent[0]], now)
        bell.ring_after(self._bells, [(State.KILLED, None)] * bool(counts[1]) + gathered)
        return counts[0]

    def kill_requests(self, job_ids: Iterable[str]) -> set[str]:
        rows = self._read("SELECT id FROM queue WHERE id IN (SELECT value FROM json_each(?)) "
                          "AND state = 'running' AND kill_requested = 1", (json.dumps(list(job_ids)),))
        return {row[0] for row in rows}

    def remove(self, job_id: str) -> int:
        where, params = self._subtree(job_id, tree=True)
        with self._tx() as conn:  # under the lock: no insert can start to rely on a blob deleted here
            named = sql.referenced_blobs(conn, where, params)
            removed = conn.execute(f"DELETE FROM queue WHERE {where}", params).rowcount
            if named:
                self.blobs.delete(named - sql.referenced_blobs(conn))
        return removed

    # -- worker nodes ------------------------------------------------------------------------------
    def save_worker(self, info: WorkerInfo) -> None:
        with self._tx() as conn:
            conn.execute("INSERT OR REPLACE INTO worker (name, doc) VALUES (?, ?)",
                         (info.name, json.dumps(dataclasses.asdict(info))))

    def workers(self) -> list[WorkerInfo]:
        out = []
        for name, doc in self._read("SELECT name, doc FROM worker ORDER BY name"):
            try:
                data = json.loads(doc)
            except (TypeError, ValueError):
                data = doc
            out.append(base.decode_worker(data, name))
        return out

    def remove_worker(self, name: str) -> None:
        with self._tx() as conn:
            conn.execute("DELETE FROM worker WHERE name = ?", (name,))
