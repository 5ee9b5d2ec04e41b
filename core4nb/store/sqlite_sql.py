"""The embedded store's table: its schema, the claim statement, and rows ↔ jobs.

:mod:`core4nb.store.sqlite` owns connections, locking and the store's verbs;
this module owns what those verbs say to SQLite.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import sqlite3
import time
from collections.abc import Iterable, Mapping, Sequence
from contextlib import suppress
from typing import Any

from core4nb import transitions
from core4nb.errors import MalformedJob
from core4nb.job import (
    CLAIMABLE_STATES,
    DEFAULT_LOST_RETRIES,
    LARGE_FIELDS,
    OPEN_STATES,
    SCALAR_FIELDS,
    UNSUCCESSFUL_STATES,
    Job,
    Lease,
    State,
    new_token,
)
from core4nb.serialize import frame_digests
from core4nb.store.base import Claimant, lease_for, listed_job
from core4nb.store.decode import decode_job, set_aside_error
from core4nb.transitions import Transition

COLUMNS = {  # Job fields, the lease flattened into lease_* columns, blobs apart, the error as JSON text
    "id": "TEXT PRIMARY KEY", "name": "TEXT NOT NULL", "payload": "BLOB", "args_summary": "TEXT NOT NULL",
    "parent_id": "TEXT", "root_id": "TEXT NOT NULL", "priority": "INTEGER NOT NULL", "max_parallel": "INTEGER",
    "attempts": "INTEGER NOT NULL", "attempts_left": "INTEGER NOT NULL", "trial": "INTEGER NOT NULL",
    "defer_time": "REAL NOT NULL", "defer_max": "REAL", "error_time": "REAL NOT NULL", "wall_time": "REAL",
    "state": "TEXT NOT NULL", "query_at": "REAL NOT NULL",
    "lease_worker": "TEXT", "lease_node": "TEXT", "lease_pid": "INTEGER", "lease_token": "TEXT", "lease_until": "REAL",
    "lease_beat": "INTEGER", "lease_period": "REAL",  # added after 0.1, NULL in older rows (read as the defaults)
    "progress_value": "REAL", "progress_message": "TEXT NOT NULL", "enqueued_at": "REAL NOT NULL",
    "started_at": "REAL", "finished_at": "REAL", "deferred_since": "REAL", "runtime": "REAL",
    "result": "BLOB", "error": "TEXT", "kill_requested": "INTEGER NOT NULL DEFAULT 0", "restarted_from": "TEXT",
    # Added after 0.1 (job.ADDED_FIELDS), each with a default: add_missing_columns() brings older files up to date.
    "output": "TEXT NOT NULL DEFAULT ''", "lost_retries": f"INTEGER NOT NULL DEFAULT {DEFAULT_LOST_RETRIES}",
    "lost_left": f"INTEGER NOT NULL DEFAULT {DEFAULT_LOST_RETRIES}", "lost_on": "TEXT NOT NULL DEFAULT ''",
    "key_id": "TEXT NOT NULL DEFAULT ''", "keep": "INTEGER NOT NULL DEFAULT 0",
    "gather": "INTEGER NOT NULL DEFAULT 0",
    # The blob digests the payload and the result name (space separated): what remove and sweep_blobs keep.
    "payload_refs": "TEXT NOT NULL DEFAULT ''", "result_refs": "TEXT NOT NULL DEFAULT ''",
}
#: Columns added after 0.1: every other one is in any core4nb queue file (else it is not one).
ADDED_COLUMNS = frozenset({"output", "lost_retries", "lost_left", "lost_on", "key_id", "lease_beat", "lease_period",
                           "keep", "payload_refs", "result_refs", "gather"})
# A new Job field must get a column here, or jobs would silently lose it.
assert set(SCALAR_FIELDS) <= set(COLUMNS), set(SCALAR_FIELDS) - set(COLUMNS)

# queue_name (name, state) of earlier versions is dropped: nothing read it, and every state change paid for it;
# queue_claim (without key_id) is replaced by queue_claim_key. Run after add_missing_columns (key_id may be new).
SCHEMA = f"""
CREATE TABLE IF NOT EXISTS queue ({", ".join(f"{c} {t}" for c, t in COLUMNS.items())});
"""
VERSION = 4  # PRAGMA user_version: 2 has key_id and lease_beat, and queue_claim_key; 3 blob refs, keep, retention;
# 4 gather (passive roots)
INDEXES = f"""
CREATE INDEX IF NOT EXISTS queue_claim_key
    ON queue (state, priority DESC, id, query_at, kill_requested, key_id, max_parallel, name);
DROP INDEX IF EXISTS queue_claim;
CREATE INDEX IF NOT EXISTS queue_root ON queue (root_id, state);
CREATE INDEX IF NOT EXISTS queue_parent ON queue (parent_id, state);
DROP INDEX IF EXISTS queue_name;
CREATE TABLE IF NOT EXISTS worker (name TEXT PRIMARY KEY, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS setting (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS pruned (root_id TEXT PRIMARY KEY, pruned_at REAL NOT NULL, finished_at REAL);
PRAGMA user_version = {VERSION};
"""

ALL = ", ".join(COLUMNS)
NO_BLOBS = ", ".join(c for c in COLUMNS if c not in LARGE_FIELDS)
INSERT = f"INSERT INTO queue ({ALL}) VALUES ({', '.join(':' + c for c in COLUMNS)})"


@functools.cache
def states_sql(states: frozenset[State]) -> str:
    """The states as an SQL list: ``('deferred', 'failed')``."""
    return "(" + ", ".join(f"'{state}'" for state in sorted(states)) + ")"


CLAIMABLE = states_sql(CLAIMABLE_STATES)
OPEN = states_sql(OPEN_STATES)
UNSUCCESSFUL = states_sql(UNSUCCESSFUL_STATES)
NO_LEASE = dict.fromkeys(("lease_worker", "lease_node", "lease_pid", "lease_token", "lease_until", "lease_beat",
                          "lease_period"))

# A claimant of key id K takes jobs of K or of none (written before key ids); a claimant without one (None), any.
KEY_MATCH = "(:key_id IS NULL OR {q}key_id IN ('', :key_id))"


def columns(fields: dict[str, Any]) -> dict[str, Any]:
    """Job attribute values → column values."""
    out = dict(fields)
    if "state" in out:
        out["state"] = str(State(out["state"]))
    for flag in ("kill_requested", "keep", "gather"):
        if flag in out:
            out[flag] = int(bool(out[flag]))
    for blob in ("payload", "result"):
        if blob in out:
            out[f"{blob}_refs"] = " ".join(frame_digests(out[blob]))
        if out.get(blob) is not None:
            out[blob] = bytes(out[blob])
    if "lease" in out:
        lease = out.pop("lease")
        # vars(), not dataclasses.asdict(): a flat dataclass needs no deep copy, and a claim pays for it
        out.update(NO_LEASE if lease is None else {f"lease_{k}": v for k, v in vars(lease).items()})
    if "error" in out:
        out["error"] = None if out["error"] is None else json.dumps(dataclasses.asdict(out["error"]))
    return out


def transition_sql(move: Transition, q: str = "") -> tuple[str, str, dict[str, Any]]:
    """A transition as SQL: (SET clause, WHERE terms for the states and the kill flag it expects, parameters
    named by column). A bumped field that is not an integer is left as it is (SQLite would make 'abc' + 1
    a valid 1), so that decoding the row sees the malformed value and sets it aside."""
    values = columns(move.values())
    return (*_transition_clauses(tuple(values), move.bump, move.expect, move.kill_requested, q), values)


@functools.lru_cache(maxsize=256)  # a handful of shapes (finish, retry, defer, reap…), written for every job
def _transition_clauses(names: tuple[str, ...], bump: tuple[str, ...], expect: frozenset[State],
                        kill_requested: bool | None, q: str) -> tuple[str, str]:
    sets = [f"{c} = :{c}" for c in names]
    sets += [f"{c} = CASE WHEN typeof({c}) = 'integer' THEN {c} + 1 ELSE {c} END" for c in bump]
    where = f"{q}state IN {states_sql(expect)}"
    if kill_requested is not None:
        where += f" AND {q}kill_requested = {int(kill_requested)}"
    return ", ".join(sets), where


# The best claimable job: priority, then FIFO, skipping names already at max_parallel. `busy` counts the
# running jobs per name once per claim (few rows); a per-candidate COUNT(*) made every claim crawl past a long
# run of blocked jobs (20k blocked ahead: 68 → 300 claims/s). queue_claim carries the filtered columns so that
# the scan past blocked jobs never touches the table.
_CLAIM_SET, _CLAIM_WHERE, _ = transition_sql(transitions.claim(Lease("", "", 0, "", 0.0), 0.0), q="q.")
CLAIM = f"""
UPDATE queue SET {_CLAIM_SET}
WHERE id = (
    WITH busy(name, n) AS MATERIALIZED (SELECT name, COUNT(*) FROM queue WHERE state = 'running' GROUP BY name)
    SELECT q.id FROM queue AS q
    WHERE {_CLAIM_WHERE} AND q.query_at <= :now AND {KEY_MATCH.format(q="q.")}
      AND (q.max_parallel IS NULL OR q.max_parallel > COALESCE((SELECT n FROM busy WHERE busy.name = q.name), 0))
    ORDER BY q.priority DESC, q.id ASC LIMIT 1)
RETURNING rowid AS _rowid, {ALL}
"""

# A claim's cheap first look (a read: WAL readers never wait for the writer). Nothing due: no claim transaction.
ANY_DUE = (f"SELECT 1 FROM queue WHERE state IN {CLAIMABLE} AND query_at <= :now AND kill_requested = 0 "
           f"AND {KEY_MATCH.format(q='')} LIMIT 1")


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
    lease = lease_for(claimant, new_token(), lease_seconds, now)
    return {**columns(transitions.claim(lease, now).values()), "now": now, "key_id": claimant.key_id}


def claim_rows(conn: sqlite3.Connection, params: dict[str, Any]) -> list[sqlite3.Row]:
    """Run :data:`CLAIM` inside the caller's write transaction: the claimed row, or none."""
    # RETURNING: fetch every row before COMMIT, or the statement is still "in progress".
    return conn.execute(CLAIM, params).fetchall()


LEASES = ("SELECT id, lease_worker, lease_node, lease_pid, lease_token, lease_until, lease_beat, lease_period "
          "FROM queue WHERE state = 'running' AND lease_token IS NOT NULL")
# Reap candidates: expired on this clock (from holders on :host, or any when NULL), or seen silent (:ids).
GONE = ("FROM queue WHERE state = 'running' AND ((lease_until < :now AND (:host IS NULL OR lease_node = :host)) "
        "OR id IN (SELECT value FROM json_each(:ids)))")


def reap_rows(conn: sqlite3.Connection, params: dict[str, Any], silent: dict[str, Any]) -> list[Job]:
    """Inside the caller's write transaction: reap the candidates of :data:`GONE` that are still gone."""
    reaped = []
    for row in conn.execute(f"SELECT rowid AS _rowid, {NO_BLOBS} {GONE}", params).fetchall():
        try:
            job = decode_job(fields(row))
        except MalformedJob as exc:  # e.g. written as running by hand: no node will ever finish it
            set_aside(conn, row["_rowid"], str(exc), params["now"])
            continue
        why = transitions.gone_because(job, params["now"], params["host"], silent)
        if why is None:
            continue
        sets, expect, values = transition_sql(transitions.reap(job, why, params["now"]))
        # Conditional on the token and heartbeat count it was judged by: a late heartbeat wins.
        rows = conn.execute(f"UPDATE queue SET {sets} WHERE id = :_id AND {expect} AND lease_token = :_token "
                            f"AND COALESCE(lease_beat, 0) = :_beat RETURNING {NO_BLOBS}",
                            {**values, "_id": job.id, "_token": job.lease.token, "_beat": job.lease.beat}).fetchall()
        reaped.extend(decode_job(fields(row)) for row in rows)
    return reaped


def gather_roots(conn: sqlite3.Connection, root_ids: Iterable[str | None], now: float, *,
                 completed: bool = False) -> list[tuple[State, None]]:
    """Inside the caller's write transaction (the one that changed a child, or inserted the root): settle each
    of ``root_ids`` that is gathering, as :func:`~core4nb.transitions.gather` says; a failed child also kills
    the rest of its tree. ``completed``: the write completed a child, so while a sibling is open there is
    nothing to look for (a failed one would have settled the root). Returns the moves made, for the bells.
    A gathering job is always a root (a map's)."""
    moves: list[tuple[State, None]] = []
    for root_id in set(filter(None, root_ids)):
        busy = conn.execute(f"SELECT 1 FROM queue WHERE parent_id = ? AND state IN {OPEN} LIMIT 1", (root_id,))
        busy = busy.fetchone() is not None
        if busy and completed:  # the common case, asked first: a sibling is still at work
            continue
        if conn.execute("SELECT 1 FROM queue WHERE id = ? AND state = 'gathering'", (root_id,)).fetchone() is None:
            continue
        bad = conn.execute(f"SELECT {NO_BLOBS} FROM queue WHERE parent_id = ? AND state IN {UNSUCCESSFUL} "
                           "ORDER BY id LIMIT 1", (root_id,)).fetchone()
        move = transitions.gather(listed_job(fields(bad)) if bad else None, busy, now)
        if move is None:
            continue
        kills = (transitions.flag_kill(), transitions.kill_waiting(now)) if bad else ()
        for change, where in ((move, "id = :_id"), *((kill, "root_id = :_id") for kill in kills)):
            sets, expect, values = transition_sql(change)
            conn.execute(f"UPDATE queue SET {sets} WHERE {where} AND {expect}", {**values, "_id": root_id})
        moves.append((move.state, None))
    return moves


def fields(row: sqlite3.Row) -> dict[str, Any]:
    """A row as the fields decode_job reads; error JSON decoded (left as text if it is not JSON: decoding names it)."""
    data = dict(zip(row.keys(), row, strict=True))
    if isinstance(data.get("error"), str):
        with suppress(ValueError):
            data["error"] = json.loads(data["error"])
    return data


def referenced_blobs(conn: sqlite3.Connection, where: str = "1",
                     params: Mapping[str, Any] | Sequence[Any] = ()) -> set[str]:
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


