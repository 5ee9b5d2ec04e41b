"""The MongoDB store's housekeeping: removing trees and sweeping the blobs they leave, left-behind roots,
retention of finished trees, settings, the registry of worker nodes.

A mixin of :class:`~core4nb.store.mongo.MongoStore`. Without transactions, a tree is pruned only when
every job in it is final and none is pinned, found by separate reads; a job that reopens in between
(``restart`` of a finished child) would be removed with its tree -- restarts make a *new* job in the
tree, and that new job is open, so the tree is no longer a candidate once it is inserted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from typing import Any

from pymongo import ASCENDING
from pymongo.errors import BulkWriteError, DuplicateKeyError

from core4nb.job import FINAL_STATES, OPEN_STATES, State
from core4nb.store import base, bell
from core4nb.store.mongo_claim import epoch
from core4nb.store.mongo_connect import guarded

_FINAL = sorted(FINAL_STATES)
_OPEN = sorted(OPEN_STATES)
_PINNED = {"keep": {"$in": [True, 1]}}  # nx stores a set True as 1


class MongoHousekeeping:
    """Remove and blob sweeps, settling left-behind roots, prune, usage, settings, the housekeeping turn and the worker
    registry of the MongoDB store."""

    @guarded
    def settle_roots(self) -> int:
        roots = [doc["_id"] for doc in self._col("queue").find({"state": State.GATHERING}, {"_id": 1})]
        gathered = self._gather(roots)
        bell.ring_after(self._bells, gathered)
        return len(gathered)

    def _referenced(self, query: dict[str, Any]) -> set[str]:
        docs = self._col("queue").find(query, {"payload_refs": 1, "result_refs": 1})
        return {name for doc in docs for refs in (doc.get("payload_refs"), doc.get("result_refs"))
                if isinstance(refs, list) for name in refs if isinstance(name, str)}

    @guarded
    def remove(self, job_id: str) -> int:
        queue = self._col("queue")
        ids = [doc["_id"] for doc in queue.find(self._subtree(job_id, tree=True)[0], {"_id": 1})]
        named = self._referenced({"_id": {"$in": ids}})
        removed = queue.delete_many({"_id": {"$in": ids}}).deleted_count
        # After the documents: a crash leaves orphan files, never dangling references.
        self.frames.delete_for_jobs(ids)
        if named:
            self.blobs.delete(named - self._referenced({"$or": [{"payload_refs": {"$in": list(named)}},
                                                                 {"result_refs": {"$in": list(named)}}]}))
        return removed

    @guarded
    def sweep_blobs(self, older_than: float = base.DEFAULT_SWEEP_AGE, *, dry_run: bool = False) -> base.BlobSweep:
        cutoff = time.time() - older_than
        old = [b for b in self.blobs.listing() if b.mtime <= cutoff]
        names = list({b.digest for b in old})
        kept = self._referenced({"$or": [{"payload_refs": {"$in": names}}, {"result_refs": {"$in": names}}]})
        orphans = [b for b in old if b.digest not in kept]
        if orphans and not dry_run:
            self.blobs.delete({b.digest for b in orphans})
        return base.BlobSweep(len(orphans), sum(b.size for b in orphans))

    def _roots(self, query: dict[str, Any]) -> set[str]:
        # find, not distinct: nx-27017 ignores a $in filter of distinct
        return {d.get("root_id") for d in self._col("queue").find(query, {"root_id": 1})}

    def _finished_roots(self, cutoff: float, *, old: bool) -> set[str]:
        """Roots of unpinned trees whose every job is final, finished before (``old``) or since ``cutoff``."""
        ends = self._roots({"state": {"$in": _FINAL}, "finished_at": {"$lt": cutoff}})
        recent = self._roots({"finished_at": {"$gte": cutoff}})
        candidates = ends - recent if old else recent
        if not candidates:
            return set()
        within = {"root_id": {"$in": sorted(candidates)}}
        busy = self._roots({**within, "state": {"$in": _OPEN}})
        return candidates - busy - self._roots({**within, **_PINNED})

    @guarded
    def prune(self, older_than: float, *, dry_run: bool = False) -> base.PruneReport:
        now = time.time()
        roots = sorted(self._finished_roots(epoch(now - older_than), old=True))
        report = base.PruneReport(roots=roots)
        if not roots:
            return report
        queue, tree = self._col("queue"), {"root_id": {"$in": roots}}
        named = self._referenced(tree)
        orphans = named - self._referenced({"root_id": {"$nin": roots}, "$or": [
            {"payload_refs": {"$in": sorted(named)}}, {"result_refs": {"$in": sorted(named)}}]}) if named else set()
        sizes = {b.digest: b.size for b in self.blobs.listing() if b.digest in orphans}
        report.blobs = base.BlobSweep(len(sizes), sum(sizes.values()))
        if dry_run:
            report.jobs = queue.count_documents(tree)
            return report
        done = {d["root_id"]: d.get("finished_at") for d in queue.find(tree, {"root_id": 1, "finished_at": 1})
                if isinstance(d.get("finished_at"), float)}
        ids = [d["_id"] for d in queue.find(tree, {"_id": 1})]
        report.jobs = queue.delete_many({"_id": {"$in": ids}}).deleted_count
        self.frames.delete_for_jobs(ids)
        report.freed = self.blobs.delete(orphans)
        with contextlib.suppress(BulkWriteError):  # another node pruned (and recorded) some at the same moment
            self._col("pruned").insert_many([{"_id": r, "pruned_at": now, "finished_at": done.get(r)} for r in roots],
                                            ordered=False)
        return report

    @guarded
    def usage(self, older_than: float) -> base.StoreUsage:
        size = sum(b.size for b in self.blobs.listing())
        with contextlib.suppress(Exception):  # a server without dbStats (nx): the blobs are most of it
            size += int(self._col("queue").database.command("dbStats").get("dataSize") or 0)
        return base.StoreUsage(size, len(self._finished_roots(epoch(time.time() - older_than), old=False)))

    @guarded
    def get_setting(self, name: str) -> str | None:
        doc = self._col("setting").find_one({"_id": name})
        return None if doc is None else str(doc.get("value"))

    @guarded
    def set_setting(self, name: str, value: str) -> None:
        self._col("setting").replace_one({"_id": name}, {"_id": name, "value": value}, upsert=True)

    @guarded
    def housekeeping_turn(self, worker: str, interval: float) -> bool:
        settings, now = self._col("setting"), time.time()
        try:
            settings.insert_one({"_id": "housekeeping_at", "value": now, "by": worker})
            return True
        except DuplicateKeyError:
            pass
        turn = settings.update_one({"_id": "housekeeping_at", "value": {"$lt": now - interval}},
                                   {"$set": {"value": now, "by": worker}})
        return turn.modified_count == 1

    # -- the registry of worker nodes ------------------------------------------------------------------
    @guarded
    def save_worker(self, info: base.WorkerInfo) -> None:
        # _id in the document too: on upsert nx ignores the filter's _id and would mint an ObjectId.
        self._col("worker").replace_one({"_id": info.name}, {"_id": info.name, **dataclasses.asdict(info)},
                                        upsert=True)

    @guarded
    def workers(self) -> list[base.WorkerInfo]:
        return [base.decode_worker(doc, doc.get("_id")) for doc in self._col("worker").find().sort("_id", ASCENDING)]

    @guarded
    def remove_worker(self, name: str) -> None:
        self._col("worker").delete_one({"_id": name})
