"""The cluster queue in MongoDB: ``MongoStore("mongodb://host:27017/core4?collection_prefix=sys.")``.

Uses only what real MongoDB and the ``nx-27017`` test server both get right (the contract
suite, ``tests/test_store_contract.py``, runs on the server): plain CRUD, ``find_one_and_update``
with filter and sort, unique indexes, epoch-float times, whole-value ``$set``; no transactions,
no lock collection.

- One flat document per job in ``<prefix>queue``: ``_id`` is the time-sortable job id, the
  lease lives in top-level ``lease_*`` fields so that filters and indexes reach it.
- Every write names the state it expects, and every write that leaves ``running`` names the
  lease token (fencing), so two processes never both win a transition.
- ``max_parallel`` is a unique index, not a count: see :mod:`core4nb.store.mongo_claim`.
- Blobs (large buffers) and frames over 8 MB live in GridFS, read through a per-machine cache:
  see :mod:`core4nb.store.mongo_blobs`. ``payload_refs``/``result_refs`` list the digests a job names.
- A document that cannot be decoded is listed as a placeholder and set aside as error when a
  claim (or the reaper) meets it; a claim whose reply was lost with the connection is found
  again by its lease token at the next claim, so an outage does not strand a job.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pymongo import ASCENDING, MongoClient
from pymongo.errors import BulkWriteError, PyMongoError

from core4nb import transitions
from core4nb.errors import BlobMissing, Core4Error, JobNotFound, MalformedJob, StoreUnavailable
from core4nb.job import LARGE_FIELDS, OUTPUT_LIMIT, SCALAR_FIELDS, Job, Lease, State, descendants, new_token
from core4nb.serialize import frame_digests
from core4nb.store import base, bell, mongo_lease
from core4nb.store import mongo_claim as claims
from core4nb.store.base import DEFAULT_LEASE_SECONDS, Claimant, Store, lease_for
from core4nb.store.blobfiles import FileBlobs
from core4nb.store.decode import decode_job, placeholder_job
from core4nb.store.mongo_blobs import Bucket, FrameFiles, GridFSBlobs, cache_dir, cache_limit
from core4nb.store.mongo_connect import guarded, parse_url
from core4nb.store.mongo_keeping import MongoHousekeeping
from core4nb.store.urls import redact_url

CONNECT_TIMEOUT_MS = 5000  # server selection; a serverSelectionTimeoutMS in the URL wins
MAX_SET_ASIDE = 16  # malformed documents one claim moves to error before it answers "nothing now"

_NO_BLOBS = dict.fromkeys(LARGE_FIELDS, 0)  # listings leave the large fields out
log = logging.getLogger("core4nb.store")


class MongoStore(MongoHousekeeping, Store):
    """The queue in one MongoDB database; see the module docstring for the layout."""

    @guarded
    def __init__(self, url: str, *, read_only: bool = False) -> None:
        self.url = url
        self._driver_url, self.database, self.prefix, options = parse_url(url)
        self.collections = {kind: self.prefix + kind for kind in ("queue", "worker", "blobs", "setting", "pruned")}
        wait_given = "serverselectiontimeoutms" in {key.lower() for key in options}
        self._options = {} if wait_given else {"serverSelectionTimeoutMS": CONNECT_TIMEOUT_MS}
        self._closed = False
        self._bells = bell.bell_dir(redact_url(url))  # this machine's nodes and executors of this queue
        self._idle = False  # the last claim found nothing more: the next one looks (a read) before it writes
        # (max_parallel, parent_id) of the jobs this store claimed that have either: finish rings "work" for
        # the slot it frees and settles the gathering parent without reading the document (its update answers
        # no fields).
        self._claimed: dict[str, tuple[int | None, str | None]] = {}
        self._connect()
        bucket = Bucket(lambda: self._col("queue").database, self.collections["blobs"])
        self.frames = FrameFiles(bucket)
        self.blobs = GridFSBlobs(bucket, FileBlobs(cache_dir(redact_url(url))), cache_limit())
        try:
            self._client.admin.command("ping")  # fail here, not at the first claim
            if read_only:
                self._check_exists()
            else:
                self._col("queue").create_indexes(claims.INDEXES)  # one round trip; a no-op once they exist
        except (PyMongoError, Core4Error):
            self.close()  # stop the client's monitor threads, or they retry the server forever
            raise
        except Exception as exc:  # a server that breaks the handshake (nx answers SCRAM with garbage)
            self.close()
            raise StoreUnavailable(f"MongoDB for queue {redact_url(url)} failed the connection handshake "
                                   f"({type(exc).__name__}: {exc}); check the user and password in the URL and "
                                   "that the server speaks the MongoDB protocol") from None

    def _check_exists(self) -> None:
        """A reader creates nothing: a database without this queue's collection is an error."""
        if self.collections["queue"] not in self._col("queue").database.list_collection_names():
            raise StoreUnavailable(f"no queue at {redact_url(self.url)}: database {self.database!r} has no collection "
                                   f"{self.collections['queue']!r}; check the URL (the first Core4Executor, enqueue "
                                   "or `core4nb worker` on a URL creates its queue)")

    def _connect(self) -> None:
        self._client = MongoClient(self._driver_url, **self._options)
        self._pid = os.getpid()
        self._in_flight = threading.local()  # per thread: the token of a claim whose reply was lost, see claim()

    def _col(self, kind: str):
        if self._closed:
            raise StoreUnavailable(f"queue store {redact_url(self.url)} was closed; open a new one with open_store()")
        if os.getpid() != self._pid:
            self._connect()  # forked: the parent's client (and its sockets) must not be used, nor closed, here
        return self._client[self.database][self.collections[kind]]

    def close(self) -> None:
        if not self._closed and os.getpid() == self._pid:
            self._client.close()
        self._closed = True

    # -- documents <-> jobs ----------------------------------------------------------------------------
    def _fields(self, doc: dict[str, Any], blobs: bool) -> dict[str, Any]:
        data = claims.doc_fields(doc)
        if blobs:  # a dangling GridFS reference is as malformed as a wrong type, and so is no payload at all
            if "payload" not in doc and not doc.get("payload_ref"):
                raise MalformedJob("field 'payload' is missing")
            data.update(payload=self.frames.get(doc, "payload"), result=self.frames.get(doc, "result"))
        else:
            for large in LARGE_FIELDS:
                data.pop(large, None)
        return data

    def _job(self, doc: dict[str, Any], blobs: bool) -> Job:
        """The job in a document; raises MalformedJob naming a missing or mistyped field."""
        return decode_job(self._fields(doc, blobs))

    def _listed(self, doc: dict[str, Any], blobs: bool) -> Job:
        """The job in a document for reads (get, find): a malformed one shows as a placeholder."""
        try:
            data = self._fields(doc, blobs)
        except MalformedJob as exc:  # a dangling GridFS reference
            return placeholder_job(claims.doc_fields(doc), str(exc))
        return base.listed_job(data)

    def _not_found(self, job_id: str) -> JobNotFound:
        pruned = self._col("pruned").find_one({"_id": job_id})
        return base.not_found(job_id, self.url, pruned and (pruned.get("pruned_at"), pruned.get("finished_at")))

    # -- jobs ---------------------------------------------------------------------------------------------
    @guarded
    def insert(self, jobs: Sequence[Job]) -> None:
        docs, turns = [], Counter()
        for job in jobs:
            doc = {f: getattr(job, f) for f in SCALAR_FIELDS if f != "id"}
            doc.update(_id=job.id, seq=job.id, kill_requested=bool(job.kill_requested),
                       error=claims.error_doc(job.error), output=job.output, payload_refs=frame_digests(job.payload),
                       result_refs=frame_digests(job.result),
                       holder=claims.HELD if job.state is State.RUNNING else job.id, **claims.lease_doc(job.lease))
            # A limited job's slot is the one it tries first: spread a batch over all M slots.
            doc["slot"] = f"{job.name}#{turns[job.name] % job.max_parallel}" if job.max_parallel else job.id
            turns[job.name] += 1
            docs.append(doc)
        if not docs:
            return
        blobs = {name: data for job in jobs for name, data in job.blobs.items()}
        self.blobs.put(blobs)
        try:
            for doc, job in zip(docs, jobs, strict=True):
                doc.update(self.frames.put("payload", job.payload, job.id))
                doc.update(self.frames.put("result", job.result, job.id))
            self._col("queue").insert_many(docs, ordered=True)
        except BulkWriteError as exc:  # all or nothing: take back the documents before the failing one
            failed = exc.details["writeErrors"][0]
            self._col("queue").delete_many({"_id": {"$in": [d["_id"] for d in docs[: failed["index"]]]}})
            self.frames.delete(d[ref] for d in docs for ref in ("payload_ref", "result_ref") if d.get(ref))
            if failed["code"] != 11000:
                raise
            raise base.duplicate_job(jobs, self.url) from None
        self._recheck_blobs(jobs, blobs)
        bell.ring(self._bells, "work")
        bell.ring_after(self._bells, self._gather([job.id for job in jobs if job.state is State.GATHERING]))

    def _recheck_blobs(self, jobs: Sequence[Job], blobs: dict[str, memoryview]) -> None:
        """After the insert: a remove or sweep racing it may have deleted a blob it found stored; store it again."""
        named = {name for job in jobs for name in frame_digests(job.payload)}
        lost = self.blobs.missing(named)
        self.blobs.put({name: blobs[name] for name in lost if name in blobs})
        if lost - set(blobs):
            raise BlobMissing(f"{len(lost - set(blobs))} blob(s) the new jobs name are no longer in queue "
                              f"{redact_url(self.url)} (removed or swept; first {sorted(lost)[0]}); submit them anew")

    def listen(self, role: str) -> bell.Bell | None:
        return bell.listen(self._bells, role, hears_everyone=False)  # other machines' writes do not ring

    @guarded
    def get(self, job_id: str, *, blobs: bool = True) -> Job:
        doc = self._col("queue").find_one({"_id": job_id}, None if blobs else _NO_BLOBS)
        if doc is None:
            raise self._not_found(job_id)
        return self._listed(doc, blobs)

    @guarded
    def find(self, *, ids: Iterable[str] | None = None, states: Iterable[State] | None = None,
             root_id: str | None = None, parent_id: str | None = None, limit: int | None = None,
             blobs: bool = False) -> list[Job]:
        query: dict[str, Any] = {k: v for k, v in (("root_id", root_id), ("parent_id", parent_id)) if v is not None}
        if ids is not None:
            query["_id"] = {"$in": list(ids)}
        if states is not None:
            query["state"] = {"$in": [State(s) for s in states]}
        if limit is not None and limit <= 0:  # pymongo reads limit 0 as "no limit"
            return []
        cursor = self._col("queue").find(query, None if blobs else _NO_BLOBS).sort("_id", ASCENDING)
        return [self._listed(doc, blobs) for doc in (cursor.limit(int(limit)) if limit else cursor)]

    @guarded
    def counts(self, *, root_id: str | None = None, parent_id: str | None = None) -> dict[State, int]:
        query = {k: v for k, v in (("root_id", root_id), ("parent_id", parent_id)) if v is not None}
        rows = self._col("queue").aggregate([{"$match": query}, {"$group": {"_id": "$state", "n": {"$sum": 1}}}])
        return base.count_states((row["_id"], row["n"]) for row in rows)

    @guarded
    def has_waiting(self, *, key_id: str | None = None, exclude: Iterable[str] = ()) -> bool:
        # $gte 0 matches numbers only (type bracketing): a string or missing query_at is never claimable.
        query = {"state": {"$in": claims.CLAIMABLE}, "kill_requested": False, "query_at": {"$gte": 0},
                 "_id": {"$nin": list(exclude)}, **claims.key_filter(key_id)}
        return self._col("queue").find_one(query, {"_id": 1}) is not None

    @guarded
    def waiting_key_ids(self) -> set[str]:
        # $group, not distinct(): nx ignores distinct's filter.
        pipeline = [{"$match": {"state": {"$in": claims.CLAIMABLE}}}, {"$group": {"_id": "$key_id"}}]
        return {row["_id"] or "" for row in self._col("queue").aggregate(pipeline)}

    @guarded
    def claim(self, claimant: Claimant, *, lease_seconds: float = DEFAULT_LEASE_SECONDS,
              rung: bool = False) -> Job | None:
        """Take the best claimable job (see :meth:`Store.claim` and :mod:`~core4nb.store.mongo_claim`).

        A claim whose reply the connection lost (the server went down mid-write) may have
        taken a job under its token; the next claim looks for that token first and returns
        the job, instead of leaving it running under a lease nobody holds until it expires.
        """
        queue = self._col("queue")
        alone = False  # the look found one job ready: once it is taken, the next claim looks first again
        if self._idle and not rung:  # an idle node's poll: one read, no write (an empty claim is two round trips)
            found = list(queue.find(claims.ready_filter(claims.epoch(time.time()), claimant.key_id),
                                    {"_id": 1}, limit=2))
            if not found:
                return None
            alone = len(found) == 1
        lost = getattr(self._in_flight, "token", None)
        if lost is not None:
            doc = queue.find_one({"lease_token": lost, "state": State.RUNNING})
            if doc is not None:
                return self._decoded_claim(doc, lost)
            self._in_flight.token = None
        for _ in range(MAX_SET_ASIDE):
            now, token = claims.epoch(time.time()), new_token()
            lease = lease_for(claimant, token, lease_seconds, now)
            lease.until = claims.epoch(lease.until)
            self._in_flight.token = token  # until the job is decoded: its payload download may fail too
            ready, update = claims.ready_filter(now, claimant.key_id), claims.claim_update(lease, now)
            doc = claims.claim_document(queue, ready, update, token)
            self._idle = doc is None or alone
            if doc is None:
                self._in_flight.token = None
                return None
            job = self._decoded_claim(doc, token)
            if job is not None:
                return job
        return None

    def _decoded_claim(self, doc: dict[str, Any], token: str) -> Job | None:
        """The job a claim took, or None when the document is malformed (then it is set aside as error)."""
        try:
            job = self._job(doc, blobs=True)
        except MalformedJob as exc:
            claims.set_aside(self._col("queue"), doc["_id"], str(exc), {"lease_token": token})
            job = None
        self._in_flight.token = None
        if job is not None and (job.max_parallel is not None or job.parent_id):
            self._claimed[job.id] = (job.max_parallel, job.parent_id)
        return job

    def _finish(self, job_id: str, token: str, state: State, claimant: Claimant | None, lease_seconds: float,
                fields: dict[str, Any]) -> tuple[bool, Job | None]:
        """finish(), and with a claimant the claim of the next job, before the gathering parent is checked.

        The check is a read that scans the parent's children (on the nx test server a full scan): neither
        the free slot nor the client (it waits on the chunks, rung at the write) waits for it, and when the
        claim took a sibling of a completed chunk it is skipped, as that sibling is open under this node's
        lease: a map's parent is checked once per node that runs out of its chunks, not once per chunk."""
        written, claimed = self._write_outcome(job_id, token, state, fields), None
        try:
            if claimant:
                claimed = self.claim(claimant, lease_seconds=lease_seconds)
        except StoreUnavailable:  # the outcome is recorded; the node claims again on its next step
            pass
        finally:
            if written:
                parents, completed = written
                if completed and claimed is not None:
                    parents = [parent for parent in parents if parent != claimed.parent_id]
                bell.ring_after(self._bells, self._gather(parents, completed))
        return written is not None, claimed

    @guarded
    def _write_outcome(self, job_id: str, token: str, state: State,
                       fields: dict[str, Any]) -> tuple[list[str | None], bool] | None:
        """Record the outcome under the lease ``token`` and ring for it; None when the lease is lost. Else
        what :meth:`_gather` settles next (its gathering parent may be done now; settle_roots repairs a gap)."""
        moves = transitions.finish(state, fields, claims.epoch(time.time()))
        stored = {}
        if "result" in fields:
            stored = {**self.frames.put("result", fields["result"], job_id),
                      "result_refs": frame_digests(fields["result"])}
        queue, (limit, parent) = self._col("queue"), self._claimed.pop(job_id, (None, None))
        for move in moves:  # the first that matches: see transitions.finish
            update = claims.transition_update(move, job_id)
            update["$set"].pop("result", None)
            update["$set"].update(stored)
            query = {"_id": job_id, "lease_token": token, **claims.expect_filter(move)}
            if queue.update_one(query, update).matched_count:
                bell.ring_after(self._bells, [(move.state, limit)])
                return [parent] if move.state.is_final else [], move.state is State.COMPLETE
        # The lease is lost: this store finishes the job never.
        if stored.get("result_ref"):
            self.frames.delete([stored["result_ref"]])
        return None

    @guarded
    def heartbeat(self, leases: dict[str, str], *, lease_seconds: float = DEFAULT_LEASE_SECONDS) -> set[str]:
        return mongo_lease.heartbeat(self._col("queue"), leases, lease_seconds)

    @guarded
    def set_progress(self, job_id: str, token: str, value: float | None, message: str) -> bool:
        query = {"_id": job_id, "state": State.RUNNING, "lease_token": token}
        change = {"progress_value": value, "progress_message": message}
        return self._col("queue").update_one(query, {"$set": change}).matched_count == 1

    @guarded
    def append_output(self, job_id: str, token: str, text: str, *, first: bool = False) -> bool:
        # Read, then write under the same fence: only the lease holder writes a running job's output.
        query = {"_id": job_id, "state": State.RUNNING, "lease_token": token}
        doc = self._col("queue").find_one(query, {"output": 1})
        if doc is None:
            return False
        kept = "" if first else doc.get("output") or ""
        change = {"output": (kept + text)[-OUTPUT_LIMIT:]}
        return self._col("queue").update_one(query, {"$set": change}).matched_count == 1

    @guarded
    def outputs(self, job_ids: Iterable[str]) -> dict[str, str]:
        docs = self._col("queue").find({"_id": {"$in": list(job_ids)}}, {"output": 1})
        return {doc["_id"]: doc.get("output") or "" for doc in docs}

    @guarded
    def leases(self) -> dict[str, Lease]:
        return mongo_lease.running_leases(self._col("queue"))

    @guarded
    def reap(self, *, host: str | None = None, silent: Mapping[str, Lease] | None = None) -> list[Job]:
        reaped = mongo_lease.reap(self._col("queue"), lambda doc: self._job(doc, blobs=False), host, dict(silent or {}))
        gathered = self._gather([job.parent_id for job in reaped if job.is_final])
        bell.ring_after(self._bells, [(job.state, job.max_parallel) for job in reaped] + gathered)
        return reaped

    def _gather(self, root_ids: Iterable[str | None], completed: bool = False) -> list[tuple[State, None]]:
        """Settle gathering roots after the write that changed a child (done: a failure is left to settle_roots)."""
        try:
            return claims.gather_roots(self._col("queue"), root_ids, claims.epoch(time.time()),
                                       lambda doc: self._listed(doc, blobs=False), completed=completed)
        except PyMongoError as exc:
            log.warning("cannot settle root(s) %s now (%s: %s); housekeeping will", sorted(filter(None, root_ids)),
                        type(exc).__name__, exc)
            return []

    def _subtree(self, job_id: str, tree: bool) -> tuple[dict[str, Any], str | None]:
        """A filter selecting the job (and with ``tree`` its descendants), and the job's parent."""
        queue = self._col("queue")
        doc = queue.find_one({"_id": job_id}, {"root_id": 1, "parent_id": 1})
        if doc is None:
            raise self._not_found(job_id)
        parent = doc.get("parent_id")
        if not tree:
            return {"_id": job_id}, parent
        if doc.get("root_id", job_id) == job_id:  # a root: its tree is exactly the jobs carrying its root_id
            return {"root_id": job_id}, parent
        rows = queue.find({"root_id": doc["root_id"]}, {"parent_id": 1})  # one read of the tree's parent links
        return {"_id": {"$in": descendants(((r["_id"], r.get("parent_id")) for r in rows), job_id)}}, parent

    @guarded
    def request_kill(self, job_id: str, *, tree: bool = True) -> int:
        (query, parent), queue = self._subtree(job_id, tree), self._col("queue")
        # In this order (see transitions.kill_waiting): no job of the subtree is left waiting, without a transaction.
        flagged, killed = [queue.update_many({**query, **claims.expect_filter(move)}, claims.transition_update(move))
                           for move in (transitions.flag_kill(), transitions.kill_waiting(claims.epoch(time.time())))]
        if killed.modified_count:
            bell.ring_after(self._bells, [(State.KILLED, None), *self._gather([parent])])
        return flagged.matched_count

    @guarded
    def kill_requests(self, job_ids: Iterable[str]) -> set[str]:
        query = {"_id": {"$in": list(job_ids)}, "state": State.RUNNING, "kill_requested": True}
        return {doc["_id"] for doc in self._col("queue").find(query, {"_id": 1})}
