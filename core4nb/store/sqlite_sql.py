"""The embedded store's table: its schema, the claim statement, and rows ↔ jobs.

:mod:`core4nb.store.sqlite` owns connections, locking and the store's verbs;
this module owns what those verbs say to SQLite.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import time
from collections.abc import Sequence
from contextlib import suppress
from typing import Any

from core4nb.job import CLAIMABLE_STATES, LARGE_FIELDS, SCALAR_FIELDS, State, new_token
from core4nb.serialize import frame_digests
from core4nb.store.base import Claimant
from core4nb.store.decode import set_aside_error

COLUMNS = {  # Job fields, the lease flattened into lease_* columns, blobs apart, the error as JSON text
    "id": "TEXT PRIMARY KEY", "name": "TEXT NOT NULL", "payload": "BLOB", "args_summary": "TEXT NOT NULL",
    "parent_id": "TEXT", "root_id": "TEXT NOT NULL", "priority": "INTEGER NOT NULL", "max_parallel": "INTEGER",
    "attempts": "INTEGER NOT NULL", "attempts_left": "INTEGER NOT NULL", "trial": "INTEGER NOT NULL",
    "defer_time": "REAL NOT NULL", "defer_max": "REAL", "error_time": "REAL NOT NULL", "wall_time": "REAL",
    "state": "TEXT NOT NULL", "query_at": "REAL NOT NULL",
    "lease_worker": "TEXT", "lease_node": "TEXT", "lease_pid": "INTEGER", "lease_token": "TEXT", "lease_until": "REAL",
    "progress_value": "REAL", "progress_message": "TEXT NOT NULL", "enqueued_at": "REAL NOT NULL",
    "started_at": "REAL", "finished_at": "REAL", "deferred_since": "REAL", "runtime": "REAL",
    "result": "BLOB", "error": "TEXT", "kill_requested": "INTEGER NOT NULL DEFAULT 0", "restarted_from": "TEXT",
    "output": "TEXT NOT NULL DEFAULT ''",  # added after 0.1: add_missing_columns() brings older files up to date
    # The blob digests the payload and the result name (space separated): what remove and sweep_blobs keep.
    "payload_refs": "TEXT NOT NULL DEFAULT ''", "result_refs": "TEXT NOT NULL DEFAULT ''",
    "keep": "INTEGER NOT NULL DEFAULT 0",
}
# A new Job field must get a column here, or jobs would silently lose it.
assert set(SCALAR_FIELDS) <= set(COLUMNS), set(SCALAR_FIELDS) - set(COLUMNS)

# queue_name (name, state) of earlier versions is dropped: nothing read it, and every state change paid for it.
SCHEMA = f"""
CREATE TABLE IF NOT EXISTS queue ({", ".join(f"{c} {t}" for c, t in COLUMNS.items())});
CREATE INDEX IF NOT EXISTS queue_claim
    ON queue (state, priority DESC, id, query_at, kill_requested, max_parallel, name);
CREATE INDEX IF NOT EXISTS queue_root ON queue (root_id, state);
CREATE INDEX IF NOT EXISTS queue_parent ON queue (parent_id, state);
DROP INDEX IF EXISTS queue_name;
CREATE TABLE IF NOT EXISTS worker (name TEXT PRIMARY KEY, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS setting (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS pruned (root_id TEXT PRIMARY KEY, pruned_at REAL NOT NULL, finished_at REAL);
PRAGMA user_version = 1;
"""

ALL = ", ".join(COLUMNS)
NO_BLOBS = ", ".join(c for c in COLUMNS if c not in LARGE_FIELDS)
INSERT = f"INSERT INTO queue ({ALL}) VALUES ({', '.join(':' + c for c in COLUMNS)})"
CLAIMABLE = "('pending', 'deferred', 'failed')"
assert {State(s) for s in ("pending", "deferred", "failed")} == CLAIMABLE_STATES
NO_LEASE = dict.fromkeys(("lease_worker", "lease_node", "lease_pid", "lease_token", "lease_until"))

# The best claimable job: priority, then FIFO, skipping names already at max_parallel. `busy` counts the
# running jobs per name once per claim (few rows); a per-candidate COUNT(*) made every claim crawl past a long
# run of blocked jobs (20k blocked ahead: 68 → 300 claims/s). queue_claim carries the filtered columns so that
# the scan past blocked jobs never touches the table. A trial that is not an integer is left as it is (SQLite
# would make 'abc' + 1 a valid 1), so that decoding the claimed row sees the malformed value and sets it aside.
CLAIM = f"""
UPDATE queue SET state = 'running', lease_worker = :worker, lease_node = :node, lease_pid = :pid,
    lease_token = :token, lease_until = :until, started_at = :now,
    trial = CASE WHEN typeof(trial) = 'integer' THEN trial + 1 ELSE trial END
WHERE id = (
    WITH busy(name, n) AS MATERIALIZED (SELECT name, COUNT(*) FROM queue WHERE state = 'running' GROUP BY name)
    SELECT q.id FROM queue AS q
    WHERE q.state IN {CLAIMABLE} AND q.query_at <= :now AND q.kill_requested = 0
      AND (q.max_parallel IS NULL OR q.max_parallel > COALESCE((SELECT n FROM busy WHERE busy.name = q.name), 0))
    ORDER BY q.priority DESC, q.id ASC LIMIT 1)
RETURNING rowid AS _rowid, {ALL}
"""

# A claim's cheap first look (a read: WAL readers never wait for the writer). Nothing due: no claim transaction.
ANY_DUE = f"SELECT 1 FROM queue WHERE state IN {CLAIMABLE} AND query_at <= :now AND kill_requested = 0 LIMIT 1"


def add_missing_columns(conn: sqlite3.Connection) -> None:
    """Bring a queue file written by an earlier version up to :data:`COLUMNS` (inside the opener's write
    transaction). Every column added after 0.1 has a default, so existing rows stay valid."""
    present = {row[1] for row in conn.execute("PRAGMA table_info(queue)")}
    for column, kind in COLUMNS.items():
        if column not in present:
            conn.execute(f"ALTER TABLE queue ADD COLUMN {column} {kind}")


def claim_params(claimant: Claimant, lease_seconds: float) -> dict[str, Any]:
    """The parameters of :data:`CLAIM`: a fresh lease for ``claimant`` from now."""
    now = time.time()
    return {"worker": claimant.worker, "node": claimant.node, "pid": claimant.pid, "token": new_token(),
            "until": now + lease_seconds, "now": now}


def claim_rows(conn: sqlite3.Connection, params: dict[str, Any]) -> list[sqlite3.Row]:
    """Run :data:`CLAIM` inside the caller's write transaction: the claimed row, or none."""
    # RETURNING: fetch every row before COMMIT, or the statement is still "in progress".
    return conn.execute(CLAIM, params).fetchall()


def columns(fields: dict[str, Any]) -> dict[str, Any]:
    """Job attribute values → column values."""
    out = dict(fields)
    if "state" in out:
        out["state"] = str(State(out["state"]))
    for flag in ("kill_requested", "keep"):
        if flag in out:
            out[flag] = int(bool(out[flag]))
    for blob in ("payload", "result"):
        if blob in out:
            out[f"{blob}_refs"] = " ".join(frame_digests(out[blob]))
        if out.get(blob) is not None:
            out[blob] = bytes(out[blob])
    if "lease" in out:
        lease = out.pop("lease")
        out.update(NO_LEASE if lease is None else {f"lease_{k}": v for k, v in dataclasses.asdict(lease).items()})
    if "error" in out:
        out["error"] = None if out["error"] is None else json.dumps(dataclasses.asdict(out["error"]))
    return out


def fields(row: sqlite3.Row) -> dict[str, Any]:
    """A row as the fields decode_job reads; error JSON decoded (left as text if it is not JSON: decoding names it)."""
    data = dict(zip(row.keys(), row, strict=True))
    if isinstance(data.get("error"), str):
        with suppress(ValueError):
            data["error"] = json.loads(data["error"])
    return data


def referenced_blobs(conn: sqlite3.Connection, where: str = "1", params: Sequence[Any] = ()) -> set[str]:
    """The digests the payloads and results of the selected rows name."""
    rows = conn.execute(f"SELECT payload_refs, result_refs FROM queue WHERE ({where}) "
                        "AND (payload_refs != '' OR result_refs != '')", params)
    return {name for row in rows for refs in row for name in refs.split()}


FINAL = "('complete', 'error', 'inactive', 'killed')"
# Trees whose every job is final and none pinned, by the time their last job finished.
_FINISHED_TREES = f"""SELECT root_id, MAX(finished_at) AS done FROM queue GROUP BY root_id
HAVING SUM(state NOT IN {FINAL}) = 0 AND SUM(keep) = 0 AND MAX(finished_at) IS NOT NULL"""
PRUNABLE = f"SELECT root_id, done FROM ({_FINISHED_TREES}) WHERE done < ?"
WAITING = f"SELECT COUNT(*) FROM ({_FINISHED_TREES}) WHERE done >= ?"


def set_aside(conn: sqlite3.Connection, rowid: int, problem: str, now: float) -> None:
    """Move a row that cannot be read as a job to error (by rowid: its id may be the malformed part)."""
    conn.execute("UPDATE queue SET state = 'error', error = ?, finished_at = ?, lease_worker = NULL, lease_node = "
                 "NULL, lease_pid = NULL, lease_token = NULL, lease_until = NULL WHERE rowid = ?",
                 (json.dumps(dataclasses.asdict(set_aside_error(problem))), now, rowid))


def where(**filters: Any) -> tuple[str, list[Any]]:
    """A WHERE clause ANDing the given filters; None means "any"."""
    terms, params = ["1"], []
    for column, value in filters.items():
        if value is None:
            continue
        if column in ("ids", "states"):
            # json_each(): any number of values in one parameter (no SQLITE_MAX_VARIABLE_NUMBER limit).
            values = [str(State(v)) for v in value] if column == "states" else list(value)
            terms.append(f"{column[:-1]} IN (SELECT value FROM json_each(?))")
            params.append(json.dumps(values))
        else:
            terms.append(f"{column} = ?")
            params.append(value)
    return " AND ".join(terms), params


