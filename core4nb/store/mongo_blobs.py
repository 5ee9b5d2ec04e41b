"""What the MongoDB store keeps in GridFS (bucket ``<prefix>blobs``): large frames and content-addressed blobs.

- **Frames** (a job's signed payload or result) stay inline in the job document up to
  :data:`FRAME_LIMIT` (a document may not exceed 16 MB); a larger one is a GridFS file named by the
  job (``payload_ref``/``result_ref``, ``metadata.job_id``). With large buffers travelling as blobs,
  that takes a pickle of many small objects.
- **Blobs** (large buffers, :mod:`core4nb.serialize`) are GridFS files whose ``filename`` is the
  digest; an upload is skipped when a file of that digest is there. Each upload has its own file id,
  so two processes uploading one digest at once never clobber each other (a duplicate is harmless and
  swept with the rest). Every process reads blobs through a local :class:`~core4nb.store.blobfiles.FileBlobs`
  cache on its own disk, one download per digest per machine (``CORE4NB_BLOB_CACHE``, bounded by
  ``CORE4NB_BLOB_CACHE_MB``, least recently used out first).

Downloads read the chunks in ranges of :data:`READ_RANGE` bytes: nx-27017 answers a cursor's getMore
with everything left, so a 200 MB file would come back as one 200 MB reply, over the wire
protocol's 48 MB message limit. Ranged reads are plain finds, the same on MongoDB.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import gridfs
from pymongo import ASCENDING
from pymongo.database import Database

from core4nb import buffers
from core4nb.errors import BlobMissing, ConfigError, MalformedJob
from core4nb.job import new_token
from core4nb.store.blobfiles import BlobFile, FileBlobs

log = logging.getLogger("core4nb.store")

FRAME_LIMIT = 8 * 1024 * 1024
READ_RANGE = 16 * 1024 * 1024
CACHE_ENV, CACHE_SIZE_ENV = "CORE4NB_BLOB_CACHE", "CORE4NB_BLOB_CACHE_MB"
DEFAULT_CACHE_MB = 4096


class _ViewReader:
    """A memoryview as the file GridFS uploads read from (one chunk-sized copy at a time)."""

    def __init__(self, view: memoryview) -> None:
        self._view, self._pos = view.cast("B"), 0

    def read(self, size: int = -1) -> bytes:
        end = self._view.nbytes if size < 0 else self._pos + size
        part, self._pos = bytes(self._view[self._pos : end]), min(end, self._view.nbytes)
        return part


class Bucket:
    """The GridFS bucket ``name`` of the database ``database()`` returns (called per use: it reconnects after fork)."""

    def __init__(self, database: Callable[[], Database], name: str) -> None:
        self._database = database
        self.name = name

    def gridfs(self) -> gridfs.GridFSBucket:
        return gridfs.GridFSBucket(self._database(), bucket_name=self.name)

    def files(self):
        return self._database()[f"{self.name}.files"]

    def upload(self, file_id: str, filename: str, data: memoryview | bytes, metadata: dict[str, Any]) -> None:
        self.gridfs().upload_from_stream_with_id(file_id, filename, _ViewReader(memoryview(data)), metadata=metadata)

    def read(self, meta: dict[str, Any], what: str) -> Iterator[bytes]:
        """The chunks of the file ``meta`` describes, in order.

        Raises:
            MalformedJob: a chunk is missing or the file's description is damaged.
        """
        file_id, chunks, size, n = meta["_id"], self._database()[f"{self.name}.chunks"], 0, 0
        chunk_size, length = meta.get("chunkSize"), meta.get("length")
        if not isinstance(chunk_size, int) or chunk_size <= 0 or not isinstance(length, int):
            raise MalformedJob(f"{what}: GridFS file {file_id!r} has a damaged description (chunkSize "
                               f"{chunk_size!r}, length {length!r}) in bucket {self.name}")
        step = max(1, READ_RANGE // chunk_size)
        while size < length:
            batch = list(chunks.find({"files_id": file_id, "n": {"$gte": n, "$lt": n + step}}).sort("n", ASCENDING))
            if not batch or [c.get("n") for c in batch] != list(range(n, n + len(batch))):
                raise MalformedJob(f"{what}: GridFS file {file_id!r} lacks chunk {n} (bucket {self.name})")
            for chunk in batch:
                data = chunk.get("data")
                if not isinstance(data, bytes):
                    raise MalformedJob(f"{what}: chunk {chunk.get('n')} of GridFS file {file_id!r} holds no bytes")
                size += len(data)
                yield data
            n += len(batch)

    def delete(self, file_ids: Iterable[Any]) -> None:
        bucket = self.gridfs()
        for file_id in list(file_ids):
            with contextlib.suppress(gridfs.errors.NoFile):  # a racing remove got there first
                bucket.delete(file_id)


class FrameFiles:
    """A job's payload and result frames: inline, or a GridFS file of the job's when over FRAME_LIMIT."""

    def __init__(self, bucket: Bucket) -> None:
        self.bucket = bucket

    def put(self, field: str, data: bytes | None, job_id: str) -> dict[str, Any]:
        """The fields that store ``data``: inline, or a reference to a GridFS file uploaded now.

        A fresh file id per upload: a duplicate job id or a fenced-off finish can never clobber
        (or, when cleaning up after itself, delete) another writer's file."""
        if data is None or len(data) <= FRAME_LIMIT:
            return {field: None if data is None else bytes(data), f"{field}_ref": None}
        file_id = f"{job_id}.{field}.{new_token()}"
        self.bucket.upload(file_id, file_id, data, {"job_id": job_id})
        return {field: None, f"{field}_ref": file_id}

    def get(self, doc: dict[str, Any], field: str) -> bytes | None:
        """The frame ``field`` of a job document, inline or from GridFS.

        Raises:
            MalformedJob: the document refers to a file that is missing or incomplete.
        """
        ref = doc.get(f"{field}_ref")
        if not ref:
            return doc.get(field)
        meta = self.bucket.files().find_one({"_id": ref})
        if meta is None:
            raise MalformedJob(f"field '{field}_ref' names GridFS file {ref!r}, which bucket {self.bucket.name} "
                               "does not have")
        return b"".join(self.bucket.read(meta, f"field '{field}_ref'"))

    def delete(self, file_ids: Iterable[str]) -> None:
        self.bucket.delete(file_ids)

    def delete_for_jobs(self, job_ids: list[str]) -> None:
        files = self.bucket.files().find({"metadata.job_id": {"$in": job_ids}}, {"_id": 1})
        self.bucket.delete(f["_id"] for f in files)


def cache_dir(url: str) -> Path:
    """This machine's blob cache for the queue at ``url`` (the redacted URL: no password in a path)."""
    base = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "core4nb" / "blobs"
    return Path(base).expanduser() / hashlib.sha256(url.encode()).hexdigest()[:16]


def cache_limit() -> int:
    value = os.environ.get(CACHE_SIZE_ENV) or str(DEFAULT_CACHE_MB)
    try:
        return int(float(value) * 2**20)
    except ValueError:
        raise ConfigError(f"{CACHE_SIZE_ENV}={value!r} is not a number of megabytes; e.g. 4096") from None


class GridFSBlobs:
    """Content-addressed blobs in GridFS, read through this machine's cache (see the module docstring)."""

    def __init__(self, bucket: Bucket, cache: FileBlobs, cache_bytes: int) -> None:
        self.bucket, self.cache, self.cache_bytes = bucket, cache, cache_bytes

    def _stored(self, digests: Iterable[str]) -> set[str]:
        # metadata.digest, not filename: nx-27017 answers a $in on a GridFS filename with nothing.
        query = {"metadata.digest": {"$in": list(digests)}}
        return {f["metadata"]["digest"] for f in self.bucket.files().find(query, {"metadata": 1})}

    def put(self, blobs: Mapping[str, memoryview]) -> int:
        """Upload every blob GridFS does not have yet; returns the bytes uploaded."""
        if not blobs:
            return 0
        missing = set(blobs) - self._stored(blobs)
        for name in missing:
            self.bucket.upload(f"{name}.{new_token()}", name, blobs[name], {"digest": name, "stored_at": time.time()})
        return sum(blobs[name].nbytes for name in missing)

    def put_hashing(self, data: memoryview) -> str:
        """Upload a blob whose digest is not known yet (unless GridFS has it); returns the digest."""
        name = buffers.digest(data)
        self.put({name: data})
        return name

    def missing(self, digests: Iterable[str]) -> set[str]:
        digests = set(digests)
        return digests - self._stored(digests) if digests else set()

    def open(self, digest: str, size: int) -> memoryview:
        """The blob from the local cache, downloaded once per machine (checked against the digest)."""
        if not self.cache.has(digest):
            self._download(digest)
        self.cache.touch(digest)
        return self.cache.open(digest, size)

    def _download(self, digest: str) -> None:
        lock_dir = self.cache.root / ".locks"
        lock_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        with open(lock_dir / digest, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # the node's other children wait for this download
            if self.cache.has(digest):
                return
            meta = self.bucket.files().find_one({"metadata.digest": digest})
            if meta is None:
                raise BlobMissing(f"blob {digest} is missing from GridFS bucket {self.bucket.name}: it was deleted "
                                  "(by hand, or by `core4nb gc` while no job referred to it); resubmit the job")
            started = time.monotonic()
            self.cache.write_stream(digest, self.bucket.read(meta, f"blob {digest[:16]}…"))
            log.info("blob %s… (%.1f MB) fetched from GridFS into %s in %.2f s", digest[:16],
                     meta.get("length", 0) / 2**20, self.cache.root, time.monotonic() - started)
        self._evict()

    def _evict(self) -> None:
        """Keep the cache under its size: least recently used out first (a mapped file stays readable)."""
        held = sorted(self.cache.listing(), key=lambda b: b.mtime)
        total = sum(b.size for b in held)
        while held and total > self.cache_bytes:
            oldest = held.pop(0)
            total -= self.cache.delete([oldest.digest])

    def listing(self) -> Iterator[BlobFile]:
        for f in self.bucket.files().find({}, {"filename": 1, "length": 1, "metadata": 1}):
            meta = f.get("metadata") or {}
            if meta.get("digest") == f.get("filename"):  # not a frame file
                stored = meta.get("stored_at")
                yield BlobFile(f["filename"], int(f.get("length") or 0), stored if isinstance(stored, float) else 0.0)

    def delete(self, digests: Iterable[str]) -> int:
        """Delete every GridFS file of these digests; returns the bytes freed."""
        query = {"metadata.digest": {"$in": list(digests)}}
        files = list(self.bucket.files().find(query, {"_id": 1, "length": 1}))
        self.bucket.delete(f["_id"] for f in files)
        return sum(int(f.get("length") or 0) for f in files)
