"""What a job prints, in its child process: captured from both streams in the order printed, kept
as a bounded tail for the job's document, and streamed to the node in batches while the job runs."""

from __future__ import annotations

import contextlib
import io
import sys
import threading
import time
from collections.abc import Iterator
from multiprocessing.connection import Connection
from typing import TextIO

from core4nb.job import OUTPUT_LIMIT

#: What a job prints reaches its node in batches, at most this often (the node appends them to the job).
OUTPUT_BATCH_INTERVAL = 0.2


class Sender:
    """The child's end of its pipe, shared by the job's thread and the output thread."""

    def __init__(self, conn: Connection) -> None:
        self._conn, self._lock = conn, threading.Lock()

    def send(self, message: tuple) -> None:
        with self._lock:
            self._conn.send(message)


class LiveOutput:
    """What the running job printed and the node has not been sent yet.

    A thread sends it in batches, at most every :data:`OUTPUT_BATCH_INTERVAL` s while the
    job prints, and sleeps (no CPU) while it does not; started on the first print, so a
    child whose jobs never print has no such thread. Only the last ``limit`` characters
    of a batch are kept: the store keeps no more per job.
    """

    def __init__(self, sender: Sender, limit: int = OUTPUT_LIMIT) -> None:
        self._sender, self.limit = sender, limit
        self._ready = threading.Condition()
        self._parts: list[str] = []
        self._size = 0
        self._open = False
        self._thread: threading.Thread | None = None

    def open(self) -> None:
        with self._ready:
            self._open = True

    def close(self) -> None:
        """No batch of this job is sent once this returns: its outcome, sent next, carries the whole tail."""
        with self._ready:
            self._open, self._parts, self._size = False, [], 0

    def add(self, text: str) -> None:
        with self._ready:
            if not self._open:
                return
            self._parts.append(text)
            self._size += len(text)
            if self._size > 2 * self.limit:
                self._parts, self._size = ["".join(self._parts)[-self.limit:]], self.limit
            if len(self._parts) == 1:
                self._ready.notify()
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, daemon=True, name="core4nb-output")
            self._thread.start()

    def _run(self) -> None:
        while True:
            with self._ready:
                self._ready.wait_for(lambda: self._parts)
            time.sleep(OUTPUT_BATCH_INTERVAL)  # a batch, not a message per print()
            with self._ready:  # held while sending: close() waits for a batch under way
                if self._parts:
                    text, self._parts, self._size = "".join(self._parts)[-self.limit:], [], 0
                    with contextlib.suppress(OSError):  # the node is gone: this child dies with it
                        self._sender.send(("output", text))


class OutputTail:
    """What a job prints to stdout and stderr, interleaved as printed: passed on to the node's own
    streams (its log: an operator still sees it), streamed to the node while the job runs (``live``)
    and kept, the last ``limit`` characters, for the job's document."""

    def __init__(self, live: LiveOutput | None = None, limit: int = OUTPUT_LIMIT) -> None:
        self.limit = limit
        self.live = live
        self._parts: list[str] = []
        self._size = 0
        self._dropped = False

    def add(self, text: str) -> None:
        if self.live is not None:
            self.live.add(text)
        self._parts.append(text)
        self._size += len(text)
        if self._size > 2 * self.limit:  # trim now and then, not on every write
            self._parts, self._size, self._dropped = ["".join(self._parts)[-self.limit:]], self.limit, True

    def text(self) -> str:
        text = "".join(self._parts)
        if len(text) > self.limit or self._dropped:
            text = f"[… earlier output dropped: the last {self.limit // 1024} KiB are kept]\n" + text[-self.limit:]
        return text

    @contextlib.contextmanager
    def capturing(self) -> Iterator[None]:
        if self.live is not None:
            self.live.open()
        try:
            with contextlib.redirect_stdout(_Tee(sys.stdout, self)), contextlib.redirect_stderr(_Tee(sys.stderr, self)):
                yield
        finally:
            if self.live is not None:
                self.live.close()


class _Tee(io.TextIOBase):
    """sys.stdout or sys.stderr during a job. What asks for a file descriptor (``subprocess``,
    ``faulthandler``) gets the node's stream's: such output bypasses the tail, as it would any capture."""

    def __init__(self, stream: TextIO | None, tail: OutputTail) -> None:
        self._stream, self._tail = stream, tail

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        if self._stream is None:
            raise io.UnsupportedOperation("this job's output stream has no file descriptor")
        return self._stream.fileno()

    def isatty(self) -> bool:
        return False

    @property
    def encoding(self) -> str:
        return getattr(self._stream, "encoding", None) or "utf-8"

    def write(self, text: str) -> int:
        self._tail.add(text)
        if self._stream is not None:
            with contextlib.suppress(Exception):  # the node's stream closed or gone: the tail still has it
                self._stream.write(text)
        return len(text)

    def flush(self) -> None:
        if self._stream is not None:
            with contextlib.suppress(Exception):
                self._stream.flush()
