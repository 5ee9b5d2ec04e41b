"""One execution slot of a worker node: a warm child process and the job it runs.

Children come from a ``forkserver`` that preloads core4nb, so a crashed or
killed child is replaced in milliseconds without forking the node itself
(which holds database connections and threads).
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import select
import signal
import time

from core4nb.job import Job
from core4nb.worker import forkserver
from core4nb.worker.child import child_main


class StopReason(enum.StrEnum):
    """Why a node stops a job's child: a kill request, past ``wall_time``, the node stopping, or the lease lost."""

    KILL = "kill"
    WALL_TIME = "wall_time"
    DRAIN = "drain"
    LEASE_LOST = "lease lost"


#: After SIGTERM, a child that is still alive this many seconds later gets SIGKILL.
KILL_GRACE = 3.0


class Slot:
    """A child process that runs one job at a time."""

    def __init__(self, url: str, key: bytes, memory_limit_mb: int | None = None) -> None:
        self.url = url
        self.key = key
        self.memory_limit_mb = memory_limit_mb
        self.job: Job | None = None
        self.started = 0.0  # monotonic time the current job started
        self.stop_reason: StopReason | None = None  # why the node is stopping this job's child
        self.term_sent_at: float | None = None
        self._spawn()

    def _spawn(self) -> None:
        self.conn, child_end = forkserver.CONTEXT.Pipe()
        self.process = forkserver.CONTEXT.Process(
            target=child_main, args=(child_end, self.url, self.key, os.getpid(), self.memory_limit_mb,
                                     logging.getLogger("core4nb").getEffectiveLevel()),
            daemon=True, name="core4nb-child",
        )
        self.process.start()
        child_end.close()

    @property
    def is_busy(self) -> bool:
        return self.job is not None

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def start(self, job: Job) -> None:
        self.job, self.started = job, time.monotonic()
        self.stop_reason, self.term_sent_at = None, None
        self.conn.send(job)

    def release(self) -> Job:
        """Forget the current job (it finished or was handed back)."""
        job, self.job = self.job, None
        return job

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def next_deadline(self) -> float | None:
        """When the node must look at this slot unprompted: its job's wall time, or the SIGKILL after a SIGTERM."""
        if self.term_sent_at is not None:
            return self.term_sent_at + KILL_GRACE
        if self.job is not None and self.job.wall_time is not None:
            return self.started + self.job.wall_time
        return None

    def waitables(self) -> list:
        return [self.conn, self.process.sentinel]

    def receive(self) -> list[tuple]:
        """Every message the child has sent so far (without blocking)."""
        messages = []
        try:
            # select() rather than conn.poll(), which builds a selector per call: this runs for every message
            while select.select([self.conn], [], [], 0)[0]:
                messages.append(self.conn.recv())
        except (EOFError, OSError):
            pass  # the child died; is_dead tells
        return messages

    @property
    def is_dead(self) -> bool:
        return not self.process.is_alive()

    @property
    def exitcode(self) -> int | None:
        return self.process.exitcode

    def stop_job(self, reason: StopReason) -> None:
        """SIGTERM the child now; :meth:`enforce_kill` escalates to SIGKILL."""
        if self.term_sent_at is None:
            self.stop_reason, self.term_sent_at = reason, time.monotonic()
            self._signal(signal.SIGTERM)

    def enforce_kill(self) -> None:
        if self.term_sent_at is not None and time.monotonic() - self.term_sent_at > KILL_GRACE:
            self._signal(signal.SIGKILL)

    def _signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.process.pid, sig)

    def respawn(self) -> None:
        """Replace a dead child with a fresh one."""
        self.process.join(1)
        self.conn.close()
        self._spawn()

    def hang_up(self) -> None:
        """Close the child's pipe: an idle child exits (a node stopping hangs up on all before it waits for one)."""
        self.conn.close()

    def close(self, timeout: float = 2.0) -> None:
        """Stop the child: close its pipe (it exits), then terminate/kill if needed."""
        self.hang_up()
        self.process.join(timeout)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(KILL_GRACE)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
