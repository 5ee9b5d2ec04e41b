"""Large payloads and results of the MongoDB store, kept in a GridFS bucket.

A job document holds a blob inline up to :data:`BLOB_LIMIT` (a document may not
exceed 16 MB); a larger one lives in the bucket ``<prefix>blobs`` and the job keeps
``payload_ref``/``result_ref``. Files carry ``metadata.job_id`` so removal finds them.

Uploads go through GridFS. Downloads read the chunks in ranges of
:data:`READ_RANGE` bytes: nx-27017 answers a cursor's getMore with everything
left, so a 200 MB file would come back as one 200 MB reply, over the wire
protocol's 48 MB message limit. Ranged reads are plain finds, the same on MongoDB.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from typing import Any

import gridfs
from pymongo import ASCENDING
from pymongo.database import Database

from core4nb.errors import MalformedJob
from core4nb.job import new_token

BLOB_LIMIT = 8 * 1024 * 1024
READ_RANGE = 16 * 1024 * 1024


class Blobs:
    """The GridFS bucket ``name`` of the database ``database()`` returns (called per use: it reconnects after fork)."""

    def __init__(self, database: Callable[[], Database], name: str) -> None:
        self._database = database
        self.name = name

    def _bucket(self) -> gridfs.GridFSBucket:
        return gridfs.GridFSBucket(self._database(), bucket_name=self.name)

    def put(self, field: str, data: bytes | None, job_id: str) -> dict[str, Any]:
        """The fields that store ``data``: inline, or a reference to a GridFS file uploaded now.

        A fresh file id per upload: a duplicate job id or a fenced-off finish can never clobber
        (or, when cleaning up after itself, delete) another writer's file."""
        if data is None or len(data) <= BLOB_LIMIT:
            return {field: None if data is None else bytes(data), f"{field}_ref": None}
        file_id = f"{job_id}.{field}.{new_token()}"
        self._bucket().upload_from_stream_with_id(file_id, file_id, bytes(data), metadata={"job_id": job_id})
        return {field: None, f"{field}_ref": file_id}

    def get(self, doc: dict[str, Any], field: str) -> bytes | None:
        """The blob ``field`` of a job document, inline or from GridFS.

        Raises:
            MalformedJob: the document refers to a file that is missing or incomplete.
        """
        ref = doc.get(f"{field}_ref")
        if not ref:
            return doc.get(field)
        database = self._database()
        meta = database[f"{self.name}.files"].find_one({"_id": ref})
        if meta is None:
            raise MalformedJob(f"field '{field}_ref' names GridFS file {ref!r}, which bucket {self.name} does not have")
        chunks, parts, size, n = database[f"{self.name}.chunks"], [], 0, 0
        step = max(1, READ_RANGE // int(meta["chunkSize"]))
        while size < meta["length"]:
            batch = list(chunks.find({"files_id": ref, "n": {"$gte": n, "$lt": n + step}}).sort("n", ASCENDING))
            if [c["n"] for c in batch] != list(range(n, n + len(batch))) or not batch:
                raise MalformedJob(f"field '{field}_ref': GridFS file {ref!r} lacks chunk {n} (bucket {self.name})")
            parts.extend(bytes(c["data"]) for c in batch)
            size, n = size + sum(len(c["data"]) for c in batch), n + len(batch)
        return b"".join(parts)

    def delete(self, file_ids: Iterable[str]) -> None:
        bucket = self._bucket()
        for file_id in list(file_ids):
            with contextlib.suppress(gridfs.errors.NoFile):  # a racing remove got there first
                bucket.delete(file_id)

    def delete_for_jobs(self, job_ids: list[str]) -> None:
        self.delete(f._id for f in self._bucket().find({"metadata.job_id": {"$in": job_ids}}))
