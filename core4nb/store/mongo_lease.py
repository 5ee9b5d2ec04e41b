"""The MongoDB store's leases: heartbeats, what a reaper watches, and reaping.

A heartbeat extends ``lease_until`` (on the holder's clock) and increments ``lease_beat``.
A reaper on another machine does not trust ``lease_until`` (its clock may be off by minutes):
it reaps a job whose heartbeat count it saw unchanged for longer than the lease period on its
own monotonic clock (the node keeps those observations), and trusts ``lease_until`` only for
holders on its own host. Every reap is conditional on the token and count it judged.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from pymongo import UpdateOne
from pymongo.collection import Collection

from core4nb import transitions
from core4nb.errors import MalformedJob
from core4nb.job import Job, Lease, State
from core4nb.store import mongo_claim as claims
from core4nb.store.decode import decode_job, decode_lease

_LEASE_FIELDS = {f"lease_{name}": 1 for name in Lease.__dataclass_fields__}


def heartbeat(queue: Collection, leases: dict[str, str], lease_seconds: float) -> set[str]:
    """Extend the leases ``{job_id: token}``; the ids whose lease is lost."""
    if not leases:
        return set()
    until = claims.epoch(time.time() + lease_seconds)
    ops = [UpdateOne({"_id": job_id, "state": State.RUNNING, "lease_token": token},
                     {"$set": {"lease_until": until}, "$inc": {"lease_beat": 1}}) for job_id, token in leases.items()]
    if queue.bulk_write(ops, ordered=False).matched_count == len(ops):
        return set()  # the common case: one round trip for all of a node's jobs
    query = {"_id": {"$in": list(leases)}, "state": State.RUNNING}
    alive = {d["_id"] for d in queue.find(query, {"lease_token": 1}) if d.get("lease_token") == leases[d["_id"]]}
    return set(leases) - alive


def running_leases(queue: Collection) -> dict[str, Lease]:
    out = {}
    for doc in queue.find({"state": State.RUNNING, "lease_token": {"$ne": None}}, _LEASE_FIELDS):
        try:
            out[doc["_id"]] = decode_lease(doc)
        except MalformedJob:  # a hand-made running document: reap() sets it aside once it expires
            continue
    return out


def reap(queue: Collection, decode: Any, host: str | None, silent: Mapping[str, Lease]) -> list[Job]:
    """Reap what :meth:`~core4nb.store.base.Store.reap` says; ``decode(doc)`` reads a document as a job."""
    now, reaped = claims.epoch(time.time()), []
    expired: dict[str, Any] = {"lease_until": {"$lt": now}, **({} if host is None else {"lease_node": host})}
    query = {"state": State.RUNNING, "$or": [expired, {"_id": {"$in": list(silent)}}]}
    for doc in queue.find(query, dict.fromkeys(("payload", "result", "output"), 0)):
        try:
            job = decode(doc)
        except MalformedJob as exc:  # e.g. written as running by hand: no node will ever finish it
            claims.set_aside(queue, doc["_id"], str(exc), {"state": State.RUNNING, "lease_until": {"$lt": now}})
            continue
        why = transitions.gone_because(job, now, host, silent)
        if why is None:
            continue
        move = transitions.reap(job, why, now)
        update = claims.transition_update(move, job.id)
        # Still under the token and heartbeat count it was judged by, and the same kill flag: a late
        # heartbeat or a kill request wins. A lease written before heartbeat counts has none (null).
        beat = {"$in": [None, 0]} if job.lease.beat == 0 else job.lease.beat
        cond = {"_id": job.id, "lease_token": job.lease.token, "lease_beat": beat, **claims.expect_filter(move)}
        if queue.update_one(cond, update).matched_count:
            reaped.append(decode_job(claims.doc_fields({**doc, **update["$set"]})))
    return reaped
