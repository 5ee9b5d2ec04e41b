"""Content-addressed blobs in a directory: the embedded store's blobs, and each node's local cache of
a MongoDB queue's blobs.

One file per digest (``<dir>/<first two hex digits>/<digest>``), written once through a temporary
file and a rename (a reader never sees half a blob), mode 0400 in 0700 directories. Readers map
the file read-only, so a large array argument arrives as an array over the page cache: no copy, and
32 processes reading one broadcast array share its pages.

A file is checked against its digest once per machine: whoever wrote or checked it leaves a seal
beside it (``.<digest>.seal``: the file's inode, size and change time), and a reader whose file still
matches its seal skips the hash. Writing to or replacing the file changes its change time (``ctime``,
which no user can set back), so a changed blob is hashed again and refused. A broadcast value read by
every worker child is hashed by none of them: the client hashed it to name it. Every open maps the
file anew; the mapping lives as long as the values over it.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from core4nb import buffers
from core4nb.errors import BlobMissing, PayloadError, SignatureError

#: New blobs of a put adding up to this many bytes are written by several threads.
PARALLEL_WRITES_FROM = 16 * 1024 * 1024
_WRITE_STEP = 16 * 1024 * 1024
#: Hashing and copying overlap in pieces this large (small enough to stay in the CPU's cache between them).
_OVERLAP_STEP = 4 * 1024 * 1024


def _write_all(handle: BinaryIO, data: memoryview) -> None:
    view = data.cast("B")
    for start in range(0, view.nbytes, _WRITE_STEP):  # no temporary copy of a large buffer
        handle.write(view[start : start + _WRITE_STEP])


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

    def path(self, digest: str) -> Path:
        if len(digest) != 64 or not all(c in "0123456789abcdef" for c in digest):
            raise SignatureError(f"{digest!r} is not a blob digest; refusing to read it")
        return self.root / digest[:2] / digest

    def _seal_path(self, digest: str) -> Path:
        return self.root / digest[:2] / f".{digest}.seal"

    @staticmethod
    def _identity(info: os.stat_result) -> str:
        # Not the mtime: the cache's LRU sets it. Any write or replacement moves the ctime or the inode.
        return f"{info.st_dev} {info.st_ino} {info.st_size} {info.st_ctime_ns}"

    def _sealed(self, digest: str, info: os.stat_result) -> bool:
        try:
            return self._seal_path(digest).read_text() == self._identity(info)
        except (OSError, UnicodeDecodeError):
            return False

    def _seal(self, digest: str, info: os.stat_result | None = None) -> None:
        """Record that the file's bytes (as ``info`` describes it) match its digest (best effort: without
        a seal, readers hash)."""
        seal = self._seal_path(digest)
        temp = seal.with_name(f"{seal.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        with contextlib.suppress(OSError):
            temp.write_text(self._identity(info or self.path(digest).stat()))
            os.replace(temp, seal)

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
                list(pool.map(lambda item: self._write(*item), new.items()))
        else:
            for name, data in new.items():
                self._write(name, data)
        return sum(d.nbytes for d in new.values())

    def write_stream(self, name: str, parts: Iterable[bytes]) -> None:
        """Store a blob that arrives in parts (a download), checking it against its digest."""
        hasher = buffers.hasher()
        with self._new_file(name) as (handle, commit):
            for part in parts:
                hasher.update(part)
                _write_all(handle, memoryview(part))
            if hasher.hexdigest() != name:
                raise SignatureError(f"blob {name[:16]}… arrived with other bytes (digest {hasher.hexdigest()[:16]}…):"
                                     " it was changed in the store; refusing it")
            commit(name)

    def put_hashing(self, data: memoryview) -> str:
        """Store a blob whose digest is not known yet and return it: the bytes are hashed in this thread
        while another thread copies them into the file, one pass over memory instead of a hash and then
        a copy (0.030 s instead of 0.039 s for a 100 MB array here). A blob stored already is written in vain."""
        data = data.cast("B")
        hasher = buffers.hasher(threads=1)
        with self._new_file(None) as (handle, commit):
            pieces = [data[start : start + _OVERLAP_STEP] for start in range(0, data.nbytes, _OVERLAP_STEP)]
            if len(pieces) == 1:
                hasher.update(data)
                _write_all(handle, data)
            else:
                with ThreadPoolExecutor(1, thread_name_prefix="core4nb-blob-copy") as copier:
                    for piece in pieces:
                        copied = copier.submit(_write_all, handle, piece)  # write() releases the GIL
                        hasher.update(piece)
                        copied.result()
            name = hasher.hexdigest()
            commit(name)
        return name

    def _write(self, name: str, data: memoryview) -> None:
        with self._new_file(name) as (handle, commit):
            _write_all(handle, data)
            commit(name)  # the bytes just written are the ones the pickler hashed

    @contextlib.contextmanager
    def _new_file(self, name: str | None) -> Iterator[tuple[BinaryIO, Callable[[str], None]]]:
        """A temporary file for a new blob, and ``commit(digest)`` that moves it into place and seals it.
        On any error the temporary file goes and the error names the blob; nothing half-written stays."""
        folder = self.root / name[:2] if name else self.root
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        temp = folder / f".{name or 'new'}.{os.getpid()}.{threading.get_ident()}.{time.monotonic_ns()}.tmp"

        def commit(digest: str) -> None:
            target = self.path(digest)
            target.parent.mkdir(mode=0o700, exist_ok=True)
            os.replace(temp, target)
            self._seal(digest)

        try:
            with open(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400), "wb") as handle:
                yield handle, commit
        except OSError as exc:
            full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
            raise PayloadError(f"cannot store blob {(name or 'data')[:16]}… in {self.root}: "
                               f"{'the disk is full' if full else exc.strerror}; nothing was stored: free space "
                               "or move the queue (CORE4NB_HOME / the queue URL)") from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()

    def open(self, digest: str, size: int) -> memoryview:
        """The blob's bytes, mapped read-only and checked against the digest.

        Raises:
            BlobMissing: no such blob here.
            SignatureError: its size or bytes do not match the digest.
        """
        try:
            handle = open(self.path(digest), "rb")  # noqa: SIM115 (closed below; the mapping outlives it)
        except FileNotFoundError:
            raise BlobMissing(f"blob {digest} ({size:,} bytes) is missing from {self.root}: it was deleted "
                              "(by hand, or by `core4nb gc` while no job referred to it); resubmit the job") from None
        with handle:
            info = os.fstat(handle.fileno())  # of the file mapped, not of one that replaced it since
            if info.st_size != size:
                raise SignatureError(f"blob {digest[:16]}… is {info.st_size:,} bytes, not {size:,}: it was changed; "
                                     "refusing it")
            if size == 0:
                return memoryview(b"")
            mapping = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        if not self._sealed(digest, info):
            if buffers.digest(mapping) != digest:
                raise SignatureError(f"blob {digest[:16]}… does not match its digest: its bytes were changed in the "
                                     "store; refusing to unpickle it")
            self._seal(digest, info)
        # No mapping is kept here: it lives as long as the values over it, and its pages stay in the page cache.
        return memoryview(mapping)

    def touch(self, digest: str) -> None:
        """Mark a blob as used now (the local cache evicts the least recently used)."""
        path = self.path(digest)
        with contextlib.suppress(OSError):
            sealed = self._sealed(digest, path.stat())
            os.utime(path)  # moves the ctime too: a sealed file is sealed anew
            if sealed:
                self._seal(digest)

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
            with contextlib.suppress(FileNotFoundError):
                self._seal_path(name).unlink()
        return freed

    def total_size(self) -> int:
        return sum(b.size for b in self.listing())
