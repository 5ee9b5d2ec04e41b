"""Content-addressed blobs in a directory: the embedded store's blobs, and each node's local cache of
a MongoDB queue's blobs.

One file per digest (``<dir>/<first two hex digits>/<digest>``), written once through a temporary
file and a rename (a reader never sees half a blob), mode 0400 in 0700 directories. Readers map
the file read-only, so a large array argument arrives as an array over the page cache: no copy, and
32 processes reading one broadcast array share its pages.

A file is checked against its digest once per process (and again whenever the file is replaced or
written to): a warm worker child pays for the hash of a broadcast value once, not once per job. Every
open maps the file anew; the mapping lives as long as the values over it.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import mmap
import os
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from core4nb import buffers
from core4nb.errors import BlobMissing, PayloadError, SignatureError

#: Blob files a process remembers as checked against their digests.
VERIFIED_KEPT = 4096
#: New blobs of a put adding up to this many bytes are written by several threads.
PARALLEL_WRITES_FROM = 16 * 1024 * 1024
_WRITE_STEP = 16 * 1024 * 1024


@dataclass(frozen=True)
class BlobFile:
    """One stored blob: its digest, size in bytes and when it was last written or used (epoch seconds)."""

    digest: str
    size: int
    mtime: float


class FileBlobs:
    """The blobs under ``root`` (created 0700 on first write)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        # digest → identity of the file whose bytes were checked (a replaced file is checked again)
        self._verified: collections.OrderedDict[str, tuple] = collections.OrderedDict()
        self._lock = threading.Lock()  # a poller thread and the caller both read results

    def path(self, digest: str) -> Path:
        if len(digest) != 64 or not all(c in "0123456789abcdef" for c in digest):
            raise SignatureError(f"{digest!r} is not a blob digest; refusing to read it")
        return self.root / digest[:2] / digest

    def has(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def put(self, blobs: Mapping[str, memoryview]) -> int:
        """Store every blob not stored yet; returns the bytes written.

        Raises:
            PayloadError: the disk is full or not writable (nothing half-written is left behind).
        """
        new = {name: data for name, data in blobs.items() if not self.has(name)}
        if len(new) > 1 and sum(d.nbytes for d in new.values()) >= PARALLEL_WRITES_FROM:
            # Copying into the page cache is CPU work and write() releases the GIL: use the cores.
            with ThreadPoolExecutor(min(4, os.cpu_count() or 1), thread_name_prefix="core4nb-blobs") as pool:
                list(pool.map(lambda item: self._write(item[0], [item[1]]), new.items()))
        else:
            for name, data in new.items():
                self._write(name, [data])
        return sum(d.nbytes for d in new.values())

    def write_stream(self, name: str, parts: Iterable[bytes]) -> None:
        """Store a blob that arrives in parts (a download), checking it against its digest."""
        self._write(name, parts, check=True)

    def _write(self, name: str, parts: Iterable[memoryview | bytes], check: bool = False) -> None:
        target = self.path(name)
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        temp = target.parent / f".{name}.{os.getpid()}.{time.monotonic_ns()}.tmp"
        hasher = buffers.hasher() if check else None
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
            with open(fd, "wb", closefd=True) as handle:
                for part in parts:
                    if hasher is not None:
                        hasher.update(part)
                    view = memoryview(part).cast("B")
                    for start in range(0, view.nbytes, _WRITE_STEP):  # no temporary copy of a large buffer
                        handle.write(view[start : start + _WRITE_STEP])
            if hasher is not None and hasher.hexdigest() != name:
                raise SignatureError(f"blob {name[:16]}… arrived with other bytes (digest {hasher.hexdigest()[:16]}…):"
                                     " it was changed in the store; refusing it")
            os.replace(temp, target)
        except OSError as exc:
            with contextlib.suppress(OSError):
                temp.unlink()
            full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
            raise PayloadError(f"cannot store blob {name[:16]}… in {self.root}: "
                               f"{'the disk is full' if full else exc.strerror}; nothing was stored: free space "
                               "or move the queue (CORE4NB_HOME / the queue URL)") from None
        except BaseException:
            with contextlib.suppress(OSError):
                temp.unlink()
            raise

    def open(self, digest: str, size: int) -> memoryview:
        """The blob's bytes, mapped read-only and checked against the digest.

        Raises:
            BlobMissing: no such blob here.
            SignatureError: its size or bytes do not match the digest.
        """
        path = self.path(digest)
        try:
            info = path.stat()
        except FileNotFoundError:
            raise BlobMissing(f"blob {digest} ({size:,} bytes) is missing from {self.root}: it was deleted "
                              "(by hand, or by `core4nb gc` while no job referred to it); resubmit the job") from None
        if info.st_size != size:
            raise SignatureError(f"blob {digest[:16]}… is {info.st_size:,} bytes, not {size:,}: it was changed; "
                                 "refusing it")
        if size == 0:
            return memoryview(b"")
        identity = (info.st_ino, info.st_dev, info.st_size, info.st_mtime_ns)
        with open(path, "rb") as handle:
            mapping = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        with self._lock:
            checked = self._verified.get(digest) == identity
        if not checked:
            if buffers.digest(mapping) != digest:
                raise SignatureError(f"blob {digest[:16]}… does not match its digest: its bytes were changed in the "
                                     "store; refusing to unpickle it")
            with self._lock:
                self._verified[digest] = identity
                while len(self._verified) > VERIFIED_KEPT:
                    self._verified.popitem(last=False)
        # No mapping is kept here: it lives as long as the values over it, and its pages stay in the page cache.
        return memoryview(mapping)

    def touch(self, digest: str) -> None:
        """Mark a blob as used now (the local cache evicts the least recently used)."""
        with contextlib.suppress(OSError):
            os.utime(self.path(digest))

    def listing(self) -> Iterator[BlobFile]:
        """Every stored blob (temporary files of writes in progress are not listed)."""
        if not self.root.is_dir():
            return
        for sub in self.root.iterdir():
            if len(sub.name) != 2 or not sub.is_dir():
                continue
            for entry in os.scandir(sub):
                if not entry.name.startswith("."):
                    with contextlib.suppress(FileNotFoundError):
                        info = entry.stat()
                        yield BlobFile(entry.name, info.st_size, info.st_mtime)

    def delete(self, digests: Iterable[str]) -> int:
        """Delete these blobs (a process that mapped one keeps its pages); returns the bytes freed."""
        freed = 0
        for name in digests:
            path = self.path(name)
            with contextlib.suppress(FileNotFoundError):
                freed += path.stat().st_size
                path.unlink()
            with self._lock:
                self._verified.pop(name, None)
        return freed

    def total_size(self) -> int:
        return sum(b.size for b in self.listing())
