"""The MongoDB store's claim: one conditional write, ``max_parallel`` as a unique index.

``max_parallel`` is the unique index on (slot, holder). A waiting job's holder is its own
id, a running job's is "held". An unlimited job's slot is its id; a limited job's slot is
``<name>#k`` with k < max_parallel. So no more than M jobs of a name can be running, however
claims race. Mostly a claim is one ``find_one_and_update`` over the claimable filter and
order; when the best job's slot is held (DuplicateKeyError, or None on nx, which swallows
errors) :func:`_claim_contended` walks the candidates in order.

A document the claim's update cannot apply to (``$inc`` of a ``trial`` that is not a
number) makes the server refuse the write; that document is set aside as error, as a
document that cannot be decoded is, so one bad document never blocks the queue.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable
from typing import Any

from pymongo import ASCENDING, DESCENDING, IndexModel, ReturnDocument
from pymongo.collection import Collection
from pymongo.errors import DuplicateKeyError, OperationFailure

from core4nb import transitions
from core4nb.errors import MalformedJob
from core4nb.job import CLAIMABLE_STATES, OPEN_STATES, UNSUCCESSFUL_STATES, Job, JobError, Lease, State
from core4nb.store.decode import decode_job, set_aside_error
from core4nb.transitions import Transition

HELD = "held"  # the `holder` of a running job; (slot, holder) is unique
AUTH_ERRORS = (13, 18)  # Unauthorized, AuthenticationFailed: the store's problem, not the document's
_PEEK = 8  # candidates read per round when the one-shot claim did not succeed
_MAX_ROUNDS = 32  # then answer "nothing claimable now"; the worker polls again
CLAIMABLE = sorted(CLAIMABLE_STATES)  # State is a StrEnum: BSON stores the plain string
# `seq` copies _id because nx breaks on compound indexes containing _id; it lets real MongoDB
# serve the claim from the (state, priority, seq) index instead of sorting in memory.
ORDER = [("priority", DESCENDING), ("seq", ASCENDING)]
INDEXES = [IndexModel([("slot", ASCENDING), ("holder", ASCENDING)], unique=True, name="slot_holder"),
           IndexModel([("state", ASCENDING), ("priority", DESCENDING), ("seq", ASCENDING)], name="claim"),
           IndexModel([("state", ASCENDING), ("lease_until", ASCENDING)], name="lease"),
           IndexModel([("name", ASCENDING), ("state", ASCENDING)], name="name_state"),
           IndexModel("root_id", name="root_id"), IndexModel("parent_id", name="parent_id")]
NO_LEASE = dict.fromkeys(("lease_worker", "lease_node", "lease_pid", "lease_token", "lease_until", "lease_beat",
                          "lease_period"))
_GONE, _SLOT_HELD = object(), object()


def epoch(seconds: float) -> float:
    """A time as nx keeps it: it stores ``$set`` doubles with 15 significant digits (10 µs for
    epoch seconds). Rounding the times we make ourselves keeps what we return equal to what is stored."""
    return float(f"{seconds:.15g}")


def lease_doc(lease: Lease | None) -> dict[str, Any]:
    """A lease as the top-level ``lease_*`` fields that filters and indexes reach."""
    return dict(NO_LEASE) if lease is None else {f"lease_{k}": v for k, v in dataclasses.asdict(lease).items()}


def error_doc(error: JobError | None) -> dict[str, Any] | None:
    return None if error is None else dataclasses.asdict(error)  # a whole subdocument: nx stores it intact


def expect_filter(move: Transition) -> dict[str, Any]:
    """The part of a write's filter that a transition names: the states it expects, and the kill flag."""
    query: dict[str, Any] = {"state": {"$in": sorted(move.expect)}}
    if move.kill_requested is not None:
        query["kill_requested"] = move.kill_requested
    return query


def transition_update(move: Transition, doc_id: Any = None) -> dict[str, Any]:
    """A transition as a Mongo update of the document ``doc_id``: the lease as ``lease_*`` fields, and
    the ``holder`` that makes (slot, holder) unique: "held" while running, else its own id (a job that
    leaves running frees its max_parallel slot)."""
    values = {k: epoch(v) if isinstance(v, float) else v for k, v in move.values().items()}
    if "lease" in values:
        values.update(lease_doc(values.pop("lease")))
    if "error" in values:
        values["error"] = error_doc(values["error"])
    if "kill_requested" in values:
        values["kill_requested"] = bool(values["kill_requested"])
    if move.state is State.RUNNING:
        values["holder"] = HELD
    elif State.RUNNING in move.expect:
        values["holder"] = doc_id
    update: dict[str, Any] = {"$set": values}
    if move.bump:
        update["$inc"] = dict.fromkeys(move.bump, 1)
    return update


def claim_update(lease: Lease, now: float) -> dict[str, Any]:
    """The update that makes a waiting document running under ``lease``."""
    return transition_update(transitions.claim(lease, now))


def doc_fields(doc: dict[str, Any]) -> dict[str, Any]:
    """A job document as the flat fields :func:`~core4nb.store.decode.decode_job` reads (``_id`` is the id)."""
    return {**{k: v for k, v in doc.items() if k != "_id"}, "id": doc.get("_id")}


def key_filter(key_id: str | None) -> dict[str, Any]:
    """A claimant of key id K takes jobs of K or of none (null also matches documents written before key ids)."""
    return {} if key_id is None else {"key_id": {"$in": [None, "", key_id]}}


_CLAIM_EXPECT = expect_filter(transitions.claim(Lease("", "", 0, "", 0.0), 0.0))


def ready_filter(now: float, key_id: str | None = None) -> dict[str, Any]:
    return {**_CLAIM_EXPECT, "query_at": {"$lte": now}, **key_filter(key_id)}


def claim_document(queue: Collection, ready: dict, update: dict, token: str) -> dict | None:
    """Apply ``update`` to the best document matching ``ready``; the document after it, or None."""
    try:
        doc = queue.find_one_and_update(ready, update, sort=ORDER, return_document=ReturnDocument.AFTER)
    except OperationFailure as exc:  # the slot is held, or the best document refuses the update
        if exc.code in AUTH_ERRORS:
            raise
        doc = None
    return doc or _claim_contended(queue, ready, update, token)


def set_aside(queue: Collection, doc_id: Any, problem: str, expect: dict[str, Any]) -> bool:
    """Move a document that cannot be a job to error, if it still matches ``expect``."""
    change = {"state": State.ERROR, "error": error_doc(set_aside_error(problem)), "holder": doc_id,
              "finished_at": epoch(time.time()), **NO_LEASE}  # holder = own id: a held slot is free again
    return queue.update_one({"_id": doc_id, **expect}, {"$set": change}).matched_count == 1


def _claim_contended(queue: Collection, ready: dict, update: dict, token: str) -> dict | None:
    tried: list[Any] = []
    full: list[str] = []  # names whose every slot is held: skip all their jobs
    held: dict[str, set[str]] = {}  # slots known to be held, per name
    for _ in range(_MAX_ROUNDS):
        query = {**ready, "_id": {"$nin": tried}, "name": {"$nin": full}}
        peek = list(queue.find(query, {"name": 1, "state": 1, "max_parallel": 1, "slot": 1}).sort(ORDER).limit(_PEEK))
        if not peek:
            return None
        for cand in peek:
            tried.append(cand["_id"])
            name, limit = cand.get("name"), cand.get("max_parallel")
            if not isinstance(name, str):  # written by hand (a list, a number): it must not break the walk
                _set_aside_if_malformed(queue, cand)
                continue
            if name in full:
                continue
            slots = [cand.get("slot")]
            if isinstance(limit, int) and limit > 0:  # its own slot first (the likeliest free one), then the rest
                if name not in held:
                    held[name] = set(queue.distinct("slot", {"name": name, "state": State.RUNNING}))
                slots = sorted((f"{name}#{k}" for k in range(limit)), key=lambda s: s != cand.get("slot"))
            for slot in slots:
                taken = slot in held.get(name, ())
                outcome = _SLOT_HELD if taken else _take(queue, cand, slot, ready, update, token)
                if outcome is _GONE:
                    break
                if outcome is not _SLOT_HELD:
                    return outcome
                held.setdefault(name, set()).add(slot)
            else:
                if isinstance(limit, int) and limit > 0:
                    full.append(name)
    return None


def _take(queue: Collection, cand: dict, slot: Any, ready: dict, update: dict, token: str) -> Any:
    """Claim one candidate under ``slot``: its document, _SLOT_HELD, or _GONE (not claimable by us now)."""
    query = {**ready, "_id": cand["_id"], "state": cand["state"]}
    update = {**update, "$set": {**update["$set"], "slot": slot}}
    try:
        doc = queue.find_one_and_update(query, update, return_document=ReturnDocument.AFTER)
        if doc is not None:
            return doc
        # None: claimed by another -- or, on nx, an error it swallowed. update_one tells them apart.
        if queue.update_one(query, update).matched_count:
            return queue.find_one({"_id": cand["_id"], "lease_token": token})
    except DuplicateKeyError:
        return _SLOT_HELD
    except OperationFailure as exc:
        if exc.code in AUTH_ERRORS:
            raise
        if not _set_aside_if_malformed(queue, cand):
            raise  # the server's refusal, not the document's
    return _GONE


def _set_aside_if_malformed(queue: Collection, cand: dict) -> bool:
    """Set the candidate aside if decoding names a field that is wrong (a ``trial`` that ``$inc`` cannot
    add to, a ``name`` that is not a string); False when it decodes (or was removed meanwhile)."""
    doc = queue.find_one({"_id": cand["_id"]}, {"payload": 0, "result": 0})
    if doc is None:  # removed meanwhile
        return True
    try:
        decode_job(doc_fields(doc))
    except MalformedJob as malformed:
        set_aside(queue, cand["_id"], str(malformed), {"state": cand["state"]})
        return True
    return False


def gather_roots(queue: Collection, root_ids: Iterable[str | None], now: float,
                 decode: Callable[[dict[str, Any]], Job], *, completed: bool = False) -> list[tuple[State, None]]:
    """Settle each of ``root_ids`` that is gathering, as :func:`~core4nb.transitions.gather` says (a failed
    child also kills the rest of its tree); the moves made, for the bells. Called right after the write that
    changed a child: of two children finishing at once, the second to look sees both final. ``completed``:
    that write completed a child, so while a sibling is open there is nothing more to read."""
    moves: list[tuple[State, None]] = []
    for root_id in set(filter(None, root_ids)):
        busy = queue.find_one({"parent_id": root_id, "state": {"$in": sorted(OPEN_STATES)}}, {"_id": 1}) is not None
        if busy and completed:  # the common case, asked first: one read while a sibling is still at work
            continue
        if queue.find_one({"_id": root_id, "state": State.GATHERING}, {"_id": 1}) is None:
            continue
        bad = queue.find_one({"parent_id": root_id, "state": {"$in": sorted(UNSUCCESSFUL_STATES)}},
                             {"payload": 0, "result": 0, "output": 0}, sort=[("seq", ASCENDING)])
        move = transitions.gather(decode(bad) if bad else None, busy, now)
        if move is None or not queue.update_one({"_id": root_id, **expect_filter(move)},
                                                transition_update(move, root_id)).matched_count:
            continue
        moves.append((move.state, None))
        if bad:
            for kill in (transitions.flag_kill(), transitions.kill_waiting(now)):
                queue.update_many({"root_id": root_id, **expect_filter(kill)}, transition_update(kill))
    return moves
