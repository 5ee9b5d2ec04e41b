"""The worker node: claims jobs, runs each in a warm child process, records outcomes.

One loop, one thread::

    ┌─► collect  child messages and deaths → finish(job, state) in the store
    │   claim    while a slot is free (atomic, max_parallel-safe, in the store)
    │   control  every 0.5 s: progress, kill requests, wall time, SIGKILL escalation
    │   lease    every lease/6 s: heartbeat leases (lost → stop that child),
    │            sys.worker heartbeat, reap expired leases of dead nodes
    └── wait     on child pipes and sentinels, with an adaptive poll timeout

The node never runs user code and never imports a database driver. Every state
write carries the lease token, so a node that was paused past its lease cannot
overwrite the work of the node that took the job over.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from multiprocessing.connection import wait

from core4nb.errors import ConfigError
from core4nb.job import CLAIMABLE_STATES, Job, JobError, State
from core4nb.store import DEFAULT_LEASE_SECONDS, Claimant, WorkerInfo, open_store, redact_url
from core4nb.worker.child import Outcome, exit_description, process_is_gone
from core4nb.worker.slot import Slot

log = logging.getLogger("core4nb.worker")

CONTROL_INTERVAL = 0.5
MIN_POLL, MAX_POLL = 0.002, 0.1


class WorkerNode:
    """A worker node serving the queue at ``url``.

    Args:
        url: the queue URL.
        processes: child processes (parallel jobs); default: CPU cores.
        name: node name in ``sys.worker``; default ``host-pid``.
        burst: exit once idle and nothing is left that could become claimable.
        lease_seconds: how long a claim holds without heartbeat.
        grace: on SIGTERM, how long running jobs may take to finish before they
            are stopped and handed back to the queue.
        memory_limit_mb: address-space limit of each child (a runaway job fails
            with MemoryError instead of taking the machine down).
        watch_pid: stop (handing running jobs back) when this process is gone;
            the executor's local workers die with the notebook that started them.
    """

    def __init__(self, url: str, *, processes: int | None = None, name: str | None = None, burst: bool = False,
                 lease_seconds: float = DEFAULT_LEASE_SECONDS, grace: float = 30.0,
                 memory_limit_mb: int | None = None, watch_pid: int | None = None) -> None:
        if processes is not None and processes < 1:
            raise ConfigError(f"--processes must be at least 1, got {processes}")
        if lease_seconds <= 0:
            raise ConfigError(f"lease must be positive, got {lease_seconds}")
        self.url = url
        self.store = open_store(url)
        self.processes = processes or os.cpu_count() or 1
        host = socket.gethostname()
        self.name = name or f"{host}-{os.getpid()}"
        self.claimant = Claimant(worker=self.name, node=host, pid=os.getpid())
        self.burst = burst
        self.lease_seconds = lease_seconds
        self.heartbeat_interval = max(lease_seconds / 6, 0.05)
        self.grace = grace
        self.memory_limit_mb = memory_limit_mb
        self.watch_pid = watch_pid
        self.slots: list[Slot] = []
        self.jobs_done = 0
        self._drain_deadline: float | None = None
        self._stop_now = threading.Event()
        self._progress: dict[str, tuple[float | None, str]] = {}

    # -- lifecycle ---------------------------------------------------------------
    def run(self) -> int:
        """Serve until SIGTERM/SIGINT (or, in burst mode, until idle). Returns jobs finished."""
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._on_signal)
            signal.signal(signal.SIGINT, self._on_signal)
        self.slots = [Slot(self.url, self.memory_limit_mb) for _ in range(self.processes)]
        log.info("node %s serving %s with %d processes", self.name, redact_url(self.store.url), self.processes)
        next_control = next_lease = 0.0
        poll = MIN_POLL
        try:
            self._save_info()
            while not self._stop_now.is_set():
                busy_before = self._busy()
                self._collect()
                claimed = self._claim()
                now = time.monotonic()
                if now >= next_control:
                    self._control()
                    next_control = now + CONTROL_INTERVAL
                if now >= next_lease:
                    self._lease_tick()
                    next_lease = now + self.heartbeat_interval
                if self._should_exit():
                    break
                poll = MIN_POLL if claimed or len(busy_before) != len(self._busy()) else min(poll * 2, MAX_POLL)
                wait([w for s in self._busy() for w in s.waitables()], timeout=poll)
        finally:
            self._shutdown()
        return self.jobs_done

    def stop(self, *, drain: bool = True) -> None:
        """Ask the loop to stop (thread-safe); with ``drain`` running jobs may finish first."""
        if drain and self._drain_deadline is None:
            self._drain_deadline = time.monotonic() + self.grace
        else:
            self._stop_now.set()

    def _on_signal(self, signum: int, _frame: object) -> None:
        first = self._drain_deadline is None
        log.warning("node %s got %s: %s", self.name, signal.Signals(signum).name,
                    f"draining (up to {self.grace:g} s)" if first else "stopping now")
        self.stop(drain=first)

    def _should_exit(self) -> bool:
        if self._busy():
            return False
        if self._drain_deadline is not None:
            return True
        if self.burst:
            counts = self.store.counts()
            return not any(counts[s] for s in CLAIMABLE_STATES)
        return False

    def _shutdown(self) -> None:
        for slot in self._busy():  # hard stop with jobs running: hand them back
            slot.stop_job("drain")
        for slot in self.slots:
            if slot.is_busy:
                slot.process.join(5)
                self._collect_slot(slot)
            slot.close()
        try:
            self.store.remove_worker(self.name)
        finally:
            self.store.close()
        log.info("node %s stopped after %d jobs", self.name, self.jobs_done)

    # -- the loop's steps ----------------------------------------------------------
    def _busy(self) -> list[Slot]:
        return [s for s in self.slots if s.is_busy]

    def _claim(self) -> bool:
        if self._drain_deadline is not None:
            return False
        claimed = False
        for slot in self.slots:
            if slot.is_busy:
                continue
            job = self.store.claim(self.claimant, lease_seconds=self.lease_seconds)
            if job is None:
                break
            log.debug("claimed %s %s (trial %d)", job.id, job.name, job.trial)
            slot.start(job)
            claimed = True
        return claimed

    def _collect(self) -> None:
        for slot in self.slots:
            self._collect_slot(slot)

    def _collect_slot(self, slot: Slot) -> None:
        for message in slot.receive():
            if message[0] == "progress" and slot.job is not None:
                self._progress[slot.job.id] = message[1], message[2]
            elif message[0] == "done" and slot.job is not None:
                self._record(slot.release(), message[1])
        if slot.is_dead:
            if slot.job is not None:
                self._record_death(slot)
            slot.respawn()

    def _control(self) -> None:
        busy = self._busy()
        self._flush_progress(busy)
        killed = self.store.kill_requests([s.job.id for s in busy]) if busy else set()
        for slot in busy:
            job = slot.job
            if job.id in killed:
                slot.stop_job("kill")
            elif job.wall_time is not None and slot.elapsed() > job.wall_time:
                slot.stop_job("wall_time")
            elif self._drain_deadline is not None and time.monotonic() > self._drain_deadline:
                slot.stop_job("drain")
            slot.enforce_kill()

    def _lease_tick(self) -> None:
        if self.watch_pid is not None and process_is_gone(self.watch_pid):
            log.warning("process %d that this node serves is gone; stopping", self.watch_pid)
            self.stop(drain=False)
        busy = self._busy()
        lost = self.store.heartbeat({s.job.id: s.job.lease.token for s in busy}, lease_seconds=self.lease_seconds)
        for slot in busy:
            if slot.job.id in lost:
                log.warning("lease of job %s lost (this node was paused or cut off); stopping it", slot.job.id)
                slot.stop_job("lease lost")
        self._save_info()
        for job in self.store.reap():
            log.warning("reaped job %s of lost worker: now %s", job.id, job.state)

    def _save_info(self) -> None:
        self.store.save_worker(WorkerInfo(
            name=self.name, host=self.claimant.node, pid=self.claimant.pid, slots=self.processes,
            heartbeat=time.time(), running=[s.job.id for s in self._busy()],
            state="draining" if self._drain_deadline is not None else "running"))

    def _flush_progress(self, busy: list[Slot]) -> None:
        tokens = {s.job.id: s.job.lease.token for s in busy}
        for job_id, (value, message) in self._progress.items():
            if job_id in tokens:
                self.store.set_progress(job_id, tokens[job_id], value, message)
        self._progress.clear()

    # -- outcomes --------------------------------------------------------------------
    def _finish(self, job: Job, state: State, **fields: object) -> None:
        if self.store.finish(job.id, job.lease.token, state, **fields):
            self.jobs_done += state.is_final
            log.debug("job %s %s", job.id, state)
        else:
            log.warning("job %s: lease no longer held, its %s outcome is discarded (another node owns it)",
                        job.id, state)

    def _record(self, job: Job, outcome: Outcome) -> None:
        self._progress.pop(job.id, None)
        now = time.time()
        if outcome.kind == "complete":
            self._finish(job, State.COMPLETE, result=outcome.result, runtime=outcome.runtime, progress_value=1.0)
        elif outcome.kind == "deferred":
            since = job.deferred_since or job.started_at or now
            if job.defer_max is not None and now - since >= job.defer_max:
                self._finish(job, State.INACTIVE, runtime=outcome.runtime, progress_message=(
                    f"deferred for {now - since:.0f} s, past defer_max={job.defer_max:g} s: {outcome.message}"))
            else:
                self._finish(job, State.DEFERRED, runtime=outcome.runtime, query_at=now + job.defer_time,
                             deferred_since=since, progress_message=outcome.message)
        else:
            self._fail(job, outcome.error, outcome.result, retry=outcome.kind == "failed", runtime=outcome.runtime)

    def _fail(self, job: Job, error: JobError, result: bytes | None, *, retry: bool, runtime: float) -> None:
        left = job.attempts_left - 1
        state = State.FAILED if retry and left > 0 else State.ERROR
        self._finish(job, state, error=error, result=result, attempts_left=left, runtime=runtime,
                     query_at=time.time() + job.error_time)

    def _record_death(self, slot: Slot) -> None:
        """The child died while running a job: why decides the job's next state."""
        reason, runtime, job = slot.stop_reason, slot.elapsed(), slot.release()
        self._progress.pop(job.id, None)
        if reason == "kill":
            self._finish(job, State.KILLED, runtime=runtime,
                         error=JobError("Killed", f"killed on request on node {self.name}"))
        elif reason == "wall_time":
            self._fail(job, JobError("WallTimeExceeded", f"ran longer than wall_time={job.wall_time:g} s on node "
                                     f"{self.name}; raise wall_time or split the work"),
                       None, retry=True, runtime=runtime)
        elif reason == "drain":
            self._finish(job, State.PENDING, trial=job.trial - 1, query_at=time.time(),
                         progress_message=f"handed back by stopping node {self.name}")
        elif reason is None:
            description = exit_description(slot.exitcode)
            log.error("child running job %s %s", job.id, description)
            self._fail(job, JobError("ChildCrashed", f"the process running this job on node {self.name} "
                                     f"{description}; the node carries on", exit_code=slot.exitcode),
                       None, retry=True, runtime=runtime)
        # "lease lost": another node owns the job now; write nothing.

