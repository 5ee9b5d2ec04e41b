"""The cluster queue in MongoDB: ``MongoStore("mongodb://host:27017/core4?collection_prefix=sys.")``.

Uses only what real MongoDB and the ``nx-27017`` test server both get right
(notes/mongo-test-server.md): plain CRUD, ``find_one_and_update`` with filter and sort,
unique indexes, epoch-float times, whole-value ``$set``; no transactions, no lock collection.

- One flat document per job in ``<prefix>queue``: ``_id`` is the time-sortable job id, the
  lease lives in top-level ``lease_*`` fields so that filters and indexes reach it.
- Every write names the state it expects, and every write that leaves ``running`` names the
  lease token (fencing), so two processes never both win a transition.
- ``max_parallel`` is a unique index, not a count: see :meth:`MongoStore.claim`.
- Payloads and results over 8 MB live in the GridFS bucket ``<prefix>blobs``; the job keeps a
  ``payload_ref``/``result_ref``, the files carry ``metadata.job_id`` so that removal finds them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import re
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import unquote_plus

import gridfs
from pymongo import ASCENDING, DESCENDING, IndexModel, MongoClient, ReturnDocument, UpdateOne, uri_parser
from pymongo.errors import BulkWriteError, ConnectionFailure, DuplicateKeyError, OperationFailure, PyMongoError

from core4nb.errors import ConfigError, JobNotFound, PayloadError, StoreUnavailable
from core4nb.job import CLAIMABLE_STATES, SCALAR_FIELDS, Job, JobError, Lease, State, check_transition, new_token
from core4nb.store.base import DEFAULT_LEASE_SECONDS, Claimant, Store, WorkerInfo, lease_for, redact_url

BLOB_LIMIT = 8 * 1024 * 1024  # larger payloads/results go to GridFS (a document may not exceed 16 MB)
CONNECT_TIMEOUT_MS = 5000  # server selection; a serverSelectionTimeoutMS in the URL wins
HELD = "held"  # the `holder` of a running job; (slot, holder) is unique, see claim()
_PEEK = 8  # candidates read per round when the one-shot claim did not succeed
_MAX_ROUNDS = 32  # then answer "nothing claimable now"; the worker polls again

_CLAIMABLE = sorted(CLAIMABLE_STATES)  # State is a StrEnum: BSON stores the plain string
_OPEN = [*_CLAIMABLE, State.RUNNING]
# `seq` copies _id because nx breaks on compound indexes containing _id; it lets real MongoDB
# serve the claim from the (state, priority, seq) index instead of sorting in memory.
_ORDER = [("priority", DESCENDING), ("seq", ASCENDING)]
_NO_BLOBS = {"payload": 0, "result": 0}
_NO_LEASE = dict.fromkeys(("lease_worker", "lease_node", "lease_pid", "lease_token", "lease_until"))
_FINISH_FIELDS = (set(SCALAR_FIELDS) - {"id", "state"}) | {"result", "error"}
_FLOATS = {f.name for f in dataclasses.fields(Job) if "float" in str(f.type)}  # nx returns 2.0 as 2
_WORKER_FIELDS = {f.name for f in dataclasses.fields(WorkerInfo)}
_GONE, _SLOT_HELD = object(), object()
_INDEXES = [IndexModel([("slot", ASCENDING), ("holder", ASCENDING)], unique=True, name="slot_holder"),
            IndexModel([("state", ASCENDING), ("priority", DESCENDING), ("seq", ASCENDING)], name="claim"),
            IndexModel([("state", ASCENDING), ("lease_until", ASCENDING)], name="lease"),
            IndexModel([("name", ASCENDING), ("state", ASCENDING)], name="name_state"),
            IndexModel("root_id", name="root_id"), IndexModel("parent_id", name="parent_id")]


def _parse_url(url: str) -> tuple[str, str, str, dict[str, Any]]:
    """(driver URL without collection_prefix, database, collection prefix, driver options)."""
    base, _, query = url.partition("?")
    prefix, kept = "sys.", []
    for item in filter(None, re.split("[&;]", query)):  # the other options pass on verbatim
        key, _, value = item.partition("=")
        if key.lower() == "collection_prefix":
            prefix = unquote_plus(value)
        else:
            kept.append(item)
    driver_url = base + ("?" + "&".join(kept) if kept else "")
    try:
        parsed = uri_parser.parse_uri(driver_url)
    except (PyMongoError, ValueError) as exc:
        password = (re.search(r"//[^/@:]*:([^@/]+)@", url) or re.match("()", "")).group(1)
        reason = str(exc).replace(password, "***") if password else str(exc)
        raise ConfigError(f"queue URL {redact_url(url)!r} is not a valid MongoDB URL ({reason}); "
                          "use mongodb://[user:pass@]host[:port]/DATABASE") from None
    if not parsed["database"]:
        raise ConfigError(f"queue URL {redact_url(url)!r} names no database: add one, e.g. mongodb://host:27017/core4")
    return driver_url, parsed["database"], prefix, parsed["options"]


def _guarded(method):
    """Report an unreachable or refusing server as StoreUnavailable, naming the redacted URL."""

    @functools.wraps(method)
    def wrapper(self: MongoStore, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except ConnectionFailure as exc:  # server selection timeouts, AutoReconnect, network timeouts
            reason = str(exc).split(", Timeout:")[0].splitlines()[0][:200]
            raise StoreUnavailable(f"cannot reach MongoDB for queue {redact_url(self.url)} ({reason}); start the "
                                   "server or fix host/port in the URL (or wait longer: ?serverSelectionTimeoutMS="
                                   "30000)") from None
        except OperationFailure as exc:
            if exc.code not in (13, 18):  # Unauthorized, AuthenticationFailed
                raise
            raise StoreUnavailable(f"MongoDB refused queue {redact_url(self.url)} ({exc.details.get('errmsg')}); "
                                   "check user, password and authSource in the URL") from None

    return wrapper


def _epoch(seconds: float) -> float:
    """A time as nx keeps it: it stores ``$set`` doubles with 15 significant digits (10 µs for
    epoch seconds). Rounding the times we make ourselves keeps what we return equal to what is stored."""
    return float(f"{seconds:.15g}")


def _lease_doc(lease: Lease | None) -> dict[str, Any]:
    return dict(_NO_LEASE) if lease is None else {f"lease_{k}": v for k, v in dataclasses.asdict(lease).items()}


def _error_doc(error: JobError | None) -> dict[str, Any] | None:
    return None if error is None else dataclasses.asdict(error)  # a whole subdocument: nx stores it intact


class MongoStore(Store):
    """The queue in one MongoDB database; see the module docstring for the layout."""

    @_guarded
    def __init__(self, url: str) -> None:
        self.url = url
        self._driver_url, self.database, self.prefix, options = _parse_url(url)
        self.collections = {kind: self.prefix + kind for kind in ("queue", "worker", "journal", "blobs")}
        wait_given = "serverselectiontimeoutms" in {key.lower() for key in options}
        self._options = {} if wait_given else {"serverSelectionTimeoutMS": CONNECT_TIMEOUT_MS}
        self._closed = False
        self._connect()
        try:
            self._client.admin.command("ping")  # fail here, not at the first claim
            self._col("queue").create_indexes(_INDEXES)  # one round trip; a no-op once they exist
        except BaseException:
            self.close()  # stop the client's monitor threads, or they retry the server forever
            raise

    def _connect(self) -> None:
        self._client = MongoClient(self._driver_url, **self._options)
        self._pid = os.getpid()

    def _col(self, kind: str):
        if self._closed:
            raise StoreUnavailable(f"queue store {redact_url(self.url)} was closed; open a new one with open_store()")
        if os.getpid() != self._pid:
            self._connect()  # forked: the parent's client (and its sockets) must not be used, nor closed, here
        return self._client[self.database][self.collections[kind]]

    def _bucket(self) -> gridfs.GridFSBucket:
        return gridfs.GridFSBucket(self._col("queue").database, bucket_name=self.collections["blobs"])

    def close(self) -> None:
        if not self._closed and os.getpid() == self._pid:
            self._client.close()
        self._closed = True

    # -- documents <-> jobs ----------------------------------------------------------------------------
    def _put_blob(self, field: str, data: bytes | None, job_id: str) -> dict[str, Any]:
        """The fields that store ``data``: inline, or a reference to a GridFS file uploaded now.

        A fresh file id per upload: a duplicate job id or a fenced-off finish can never clobber
        (or, when cleaning up after itself, delete) another writer's file."""
        if data is None or len(data) <= BLOB_LIMIT:
            return {field: None if data is None else bytes(data), f"{field}_ref": None}
        file_id = f"{job_id}.{field}.{new_token()}"
        self._bucket().upload_from_stream_with_id(file_id, file_id, bytes(data), metadata={"job_id": job_id})
        return {field: None, f"{field}_ref": file_id}

    def _get_blob(self, doc: dict[str, Any], field: str) -> bytes | None:
        if not doc.get(f"{field}_ref"):
            return doc.get(field)
        try:
            return self._bucket().open_download_stream(doc[f"{field}_ref"]).read()
        except gridfs.errors.NoFile:
            raise PayloadError(f"the {field} of job {doc['_id']} is missing from GridFS bucket "
                               f"{self.collections['blobs']}; restart the job to run it again") from None

    def _job(self, doc: dict[str, Any], blobs: bool) -> Job:
        data = {f: doc.get(f) for f in SCALAR_FIELDS if f != "id"}
        data.update({f: float(data[f]) for f in _FLOATS if data.get(f) is not None})
        data.update(id=doc["_id"], kill_requested=bool(data["kill_requested"]))  # nx returns booleans as 0/1
        if doc.get("lease_token"):
            data["lease"] = Lease(doc["lease_worker"], doc["lease_node"], doc["lease_pid"], doc["lease_token"],
                                  float(doc["lease_until"]))
        if doc.get("error"):
            data["error"] = JobError(**doc["error"])
        if blobs:
            data.update(payload=self._get_blob(doc, "payload"), result=self._get_blob(doc, "result"))
        return Job(**data)

    def _not_found(self, job_id: str) -> JobNotFound:
        return JobNotFound(f"no job with id {job_id} in queue {redact_url(self.url)}; list jobs with `core4nb jobs`")

    # -- jobs ---------------------------------------------------------------------------------------------
    @_guarded
    def insert(self, jobs: Sequence[Job]) -> None:
        docs, turns = [], Counter()
        for job in jobs:
            doc = {f: getattr(job, f) for f in SCALAR_FIELDS if f != "id"}
            doc.update(_id=job.id, seq=job.id, kill_requested=bool(job.kill_requested), error=_error_doc(job.error),
                       holder=HELD if job.state is State.RUNNING else job.id, **_lease_doc(job.lease))
            # A limited job's slot is the one it tries first: spread a batch over all M slots.
            doc["slot"] = f"{job.name}#{turns[job.name] % job.max_parallel}" if job.max_parallel else job.id
            turns[job.name] += 1
            docs.append(doc)
        if not docs:
            return
        try:
            for doc, job in zip(docs, jobs, strict=True):
                doc.update(self._put_blob("payload", job.payload, job.id))
                doc.update(self._put_blob("result", job.result, job.id))
            self._col("queue").insert_many(docs, ordered=True)
        except BulkWriteError as exc:  # all or nothing: take back the documents before the failing one
            failed = exc.details["writeErrors"][0]
            self._col("queue").delete_many({"_id": {"$in": [d["_id"] for d in docs[: failed["index"]]]}})
            self._delete_files(d[ref] for d in docs for ref in ("payload_ref", "result_ref") if d.get(ref))
            if failed["code"] != 11000:
                raise
            ids = [j.id for j in jobs]
            raise ValueError(f"a job id among {ids[:5]}{'…' if len(ids) > 5 else ''} is already in queue "
                             f"{redact_url(self.url)} (or repeated); nothing was inserted") from None

    @_guarded
    def get(self, job_id: str, *, blobs: bool = True) -> Job:
        doc = self._col("queue").find_one({"_id": job_id}, None if blobs else _NO_BLOBS)
        if doc is None:
            raise self._not_found(job_id)
        return self._job(doc, blobs)

    @_guarded
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
        return [self._job(doc, blobs) for doc in (cursor.limit(int(limit)) if limit else cursor)]

    @_guarded
    def counts(self, *, root_id: str | None = None, parent_id: str | None = None) -> dict[State, int]:
        query = {k: v for k, v in (("root_id", root_id), ("parent_id", parent_id)) if v is not None}
        out = dict.fromkeys(State, 0)
        for row in self._col("queue").aggregate([{"$match": query}, {"$group": {"_id": "$state", "n": {"$sum": 1}}}]):
            out[State(row["_id"])] = int(row["n"])
        return out

    @_guarded
    def claim(self, claimant: Claimant, *, lease_seconds: float = DEFAULT_LEASE_SECONDS) -> Job | None:
        """Take the best claimable job (see :meth:`Store.claim`).

        ``max_parallel`` is the unique index on (slot, holder). A waiting job's holder is its own
        id, a running job's is "held". An unlimited job's slot is its id; a limited job's slot is
        ``<name>#k`` with k < max_parallel. So no more than M jobs of a name can be running, however
        claims race. Mostly a claim is one ``find_one_and_update`` over the claimable filter and
        order; when the best job's slot is held (DuplicateKeyError, or None on nx, which swallows
        errors) :meth:`_claim_contended` walks the candidates in order.
        """
        now, token = _epoch(time.time()), new_token()
        lease = lease_for(claimant, token, lease_seconds, now)
        lease.until = _epoch(lease.until)
        ready = {"state": {"$in": _CLAIMABLE}, "query_at": {"$lte": now}, "kill_requested": False}
        update = {"$set": {"state": State.RUNNING, "holder": HELD, "started_at": now, **_lease_doc(lease)},
                  "$inc": {"trial": 1}}
        try:
            doc = self._col("queue").find_one_and_update(ready, update, sort=_ORDER,
                                                         return_document=ReturnDocument.AFTER)
        except DuplicateKeyError:
            doc = None
        doc = doc or self._claim_contended(ready, update, token)
        return None if doc is None else self._job(doc, blobs=True)

    def _claim_contended(self, ready: dict, update: dict, token: str) -> dict | None:
        queue = self._col("queue")
        tried: list[str] = []
        full: list[str] = []  # names whose every slot is held: skip all their jobs
        held: dict[str, set[str]] = {}  # slots known to be held, per name
        for _ in range(_MAX_ROUNDS):
            query = {**ready, "_id": {"$nin": tried}, "name": {"$nin": full}}
            peek = list(queue.find(query, {"name": 1, "state": 1, "max_parallel": 1, "slot": 1})
                        .sort(_ORDER).limit(_PEEK))
            if not peek:
                return None
            for cand in peek:
                tried.append(cand["_id"])
                name, limit = cand["name"], cand.get("max_parallel")
                if name in full:
                    continue
                slots = [cand["slot"]]
                if limit:  # its own slot first (the likeliest free one), then every other one
                    if name not in held:
                        held[name] = set(queue.distinct("slot", {"name": name, "state": State.RUNNING}))
                    slots = sorted((f"{name}#{k}" for k in range(limit)), key=lambda s: s != cand["slot"])
                for slot in slots:
                    taken = slot in held.get(name, ())
                    outcome = _SLOT_HELD if taken else self._take(cand, slot, ready, update, token)
                    if outcome is _GONE:
                        break
                    if outcome is not _SLOT_HELD:
                        return outcome
                    held.setdefault(name, set()).add(slot)
                else:
                    if limit:
                        full.append(name)
        return None

    def _take(self, cand: dict, slot: str, ready: dict, update: dict, token: str) -> Any:
        """Claim one candidate under ``slot``: its document, _SLOT_HELD, or _GONE (someone else's now)."""
        queue = self._col("queue")
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
        return _GONE

    @_guarded
    def finish(self, job_id: str, token: str, state: State, **fields: Any) -> bool:
        state = State(state)
        check_transition(State.RUNNING, state)
        unknown = set(fields) - _FINISH_FIELDS
        if unknown:
            raise TypeError(f"finish() got unknown job field(s) {sorted(unknown)}; allowed: {sorted(_FINISH_FIELDS)}")
        values = {k: v for k, v in fields.items() if k not in ("result", "error")}
        if "error" in fields:
            values["error"] = _error_doc(fields["error"])
        if "kill_requested" in values:
            values["kill_requested"] = bool(values["kill_requested"])
        if "result" in fields:
            values.update(self._put_blob("result", fields["result"], job_id))
        now, queue = _epoch(time.time()), self._col("queue")

        def leave(target: State, **expect: Any) -> bool:
            change = {**({"finished_at": now} if target.is_final else {}), **values, "state": target,
                      "holder": job_id, **_NO_LEASE}  # holder = own id: the slot is free again
            query = {"_id": job_id, "state": State.RUNNING, "lease_token": token, **expect}
            return queue.update_one(query, {"$set": change}).matched_count == 1

        if state.is_claimable:  # a job with a kill request is never claimed again: it must not wait
            done = leave(state, kill_requested=False) or leave(State.KILLED, kill_requested=True)
        else:
            done = leave(state)
        if not done and values.get("result_ref"):
            self._delete_files([values["result_ref"]])
        return done

    @_guarded
    def heartbeat(self, leases: dict[str, str], *, lease_seconds: float = DEFAULT_LEASE_SECONDS) -> set[str]:
        if not leases:
            return set()
        queue, until = self._col("queue"), _epoch(time.time() + lease_seconds)
        ops = [UpdateOne({"_id": job_id, "state": State.RUNNING, "lease_token": token},
                         {"$set": {"lease_until": until}}) for job_id, token in leases.items()]
        if queue.bulk_write(ops, ordered=False).matched_count == len(ops):
            return set()  # the common case: one round trip for all of a node's jobs
        query = {"_id": {"$in": list(leases)}, "state": State.RUNNING}
        alive = {d["_id"] for d in queue.find(query, {"lease_token": 1}) if d.get("lease_token") == leases[d["_id"]]}
        return set(leases) - alive

    @_guarded
    def set_progress(self, job_id: str, token: str, value: float | None, message: str) -> bool:
        query = {"_id": job_id, "state": State.RUNNING, "lease_token": token}
        change = {"progress_value": value, "progress_message": message}
        return self._col("queue").update_one(query, {"$set": change}).matched_count == 1

    @_guarded
    def reap(self) -> list[Job]:
        queue, now, reaped = self._col("queue"), _epoch(time.time()), []
        for doc in queue.find({"state": State.RUNNING, "lease_until": {"$lt": now}}, _NO_BLOBS):
            job = self._job(doc, blobs=False)
            lease, left = job.lease, max(0, job.attempts_left - 1)
            if job.kill_requested:
                state, outcome = State.KILLED, "it had a kill request, so it is killed"
            elif left > 0:
                state, outcome = State.FAILED, f"retrying in {job.error_time:g} s ({left} attempt(s) left)"
            else:
                state, outcome = State.ERROR, f"no attempts left of {job.attempts}"
            check_transition(State.RUNNING, state)
            error = JobError("WorkerLost", f"worker {lease.worker} on {lease.node} (pid {lease.pid}) stopped "
                             f"heartbeating; lease expired {now - lease.until:.1f} s ago; {outcome}")
            change = {"state": state, "attempts_left": left, "error": _error_doc(error), "holder": job.id,
                      "query_at": _epoch(now + job.error_time) if state is State.FAILED else job.query_at,
                      "finished_at": now if state.is_final else job.finished_at, **_NO_LEASE}
            # Still expired under the same token and kill flag: a late heartbeat or a kill request wins.
            query = {"_id": job.id, "state": State.RUNNING, "lease_token": lease.token,
                     "lease_until": {"$lt": now}, "kill_requested": job.kill_requested}
            if queue.update_one(query, {"$set": change}).matched_count:
                reaped.append(self._job({**doc, **change}, blobs=False))
        return reaped

    def _subtree(self, job_id: str, tree: bool) -> dict[str, Any]:
        """A filter selecting the job (and with ``tree`` its descendants)."""
        queue = self._col("queue")
        doc = queue.find_one({"_id": job_id}, {"root_id": 1})
        if doc is None:
            raise self._not_found(job_id)
        if not tree:
            return {"_id": job_id}
        if doc["root_id"] == job_id:  # a root: its tree is exactly the jobs carrying its root_id
            return {"root_id": job_id}
        children = defaultdict(list)  # one read of the tree's parent links, walked here
        for row in queue.find({"root_id": doc["root_id"]}, {"parent_id": 1}):
            children[row.get("parent_id")].append(row["_id"])
        ids, stack = [], [job_id]
        while stack:
            ids.append(stack.pop())
            stack.extend(children[ids[-1]])
        return {"_id": {"$in": ids}}

    @_guarded
    def request_kill(self, job_id: str, *, tree: bool = True) -> int:
        query, queue = self._subtree(job_id, tree), self._col("queue")
        # Flag every open job first: a flagged job is never claimed, and a flagged running job that
        # leaves running becomes killed (finish, reap). So once the second write is done, no job of
        # the subtree can still be waiting -- without a transaction.
        flagged = queue.update_many({**query, "state": {"$in": _OPEN}}, {"$set": {"kill_requested": True}})
        queue.update_many({**query, "state": {"$in": _CLAIMABLE}, "kill_requested": True},
                          {"$set": {"state": State.KILLED, "finished_at": _epoch(time.time())}})
        return flagged.matched_count

    @_guarded
    def kill_requests(self, job_ids: Iterable[str]) -> set[str]:
        query = {"_id": {"$in": list(job_ids)}, "state": State.RUNNING, "kill_requested": True}
        return {doc["_id"] for doc in self._col("queue").find(query, {"_id": 1})}

    @_guarded
    def remove(self, job_id: str) -> int:
        queue = self._col("queue")
        ids = [doc["_id"] for doc in queue.find(self._subtree(job_id, tree=True), {"_id": 1})]
        removed = queue.delete_many({"_id": {"$in": ids}}).deleted_count
        # After the documents: a crash leaves orphan files, never dangling references.
        self._delete_files(f._id for f in self._bucket().find({"metadata.job_id": {"$in": ids}}))
        return removed

    def _delete_files(self, file_ids: Iterable[str]) -> None:
        bucket = self._bucket()
        for file_id in list(file_ids):
            with contextlib.suppress(gridfs.errors.NoFile):  # a racing remove got there first
                bucket.delete(file_id)

    # -- worker nodes ---------------------------------------------------------------------------------
    @_guarded
    def save_worker(self, info: WorkerInfo) -> None:
        # _id in the document too: on upsert nx ignores the filter's _id and would mint an ObjectId.
        self._col("worker").replace_one({"_id": info.name}, {"_id": info.name, **dataclasses.asdict(info)},
                                        upsert=True)

    @_guarded
    def workers(self) -> list[WorkerInfo]:
        return [WorkerInfo(**{k: v for k, v in doc.items() if k in _WORKER_FIELDS})
                for doc in self._col("worker").find().sort("_id", ASCENDING)]

    @_guarded
    def remove_worker(self, name: str) -> None:
        self._col("worker").delete_one({"_id": name})
