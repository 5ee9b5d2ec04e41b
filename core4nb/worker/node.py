"""The worker node: claims jobs, runs each in a warm child process, records outcomes.

One loop, one thread::

    ┌─► collect  child messages and deaths → outcomes to write (no store I/O)
    │   police   wall time, drain deadline, SIGKILL escalation (no store I/O)
    │   store    unless backing off from an outage:
    │              flush   outcomes → finish(job, state) under the job's lease token; the last
    │                      one with a slot free also claims the next job (finish_and_claim)
    │              claim   while a slot is free (atomic, max_parallel-safe, in the store; on the
    │                      embedded file every free slot's job at once, then started: _claim)
    │              control every 0.5 s: progress, what running jobs printed, kill requests
    │              lease   every lease/6 s: heartbeat leases (lost → stop that child),
    │                      sys.worker heartbeat, reap the jobs of dead nodes (judged by
    │                      heartbeat counts on this node's own clock: worker/reaper.py)
    └── wait     on child pipes and sentinels, the doorbell while a slot is free,
                 stop(); until the next poll (a free slot) or tick (all busy)

The node never runs user code and never imports a database driver. Every state
write carries the lease token, so a node that was paused past its lease cannot
overwrite the work of the node that took the job over.

When the store is unavailable (server restarting, file locked past the busy
timeout) the loop keeps collecting outcomes from its children, keeps them until
the store answers again, and retries with exponential backoff, logging the
outage once when it starts and once when it ends. Heartbeats resume with the
store; a job whose lease expired during a long outage and was reaped by another
node is fenced off, and this node logs that its outcome was discarded. After its
own outage (or a store call stalled past half a lease) a node reaps nothing until
the other nodes had a lease period to heartbeat. An outcome the store refuses
while it answers otherwise (a full disk) is retried, then errs its job alone
(worker/writer.py): the node's other jobs keep their heartbeats.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import platform
import select
import signal
import socket
import threading
import time

from core4nb import keys
from core4nb.errors import ConfigError, StoreUnavailable
from core4nb.job import Job, State
from core4nb.store import DEFAULT_LEASE_SECONDS, Claimant, WorkerInfo, check_on_this_machine, open_store, redact_url
from core4nb.store.outage import Outage
from core4nb.worker import outcomes
from core4nb.worker.child import exit_description, process_is_gone
from core4nb.worker.housekeeping import Housekeeper
from core4nb.worker.outcomes import Write
from core4nb.worker.reaper import Reaper
from core4nb.worker.reports import LiveReports
from core4nb.worker.slot import Slot, StopReason
from core4nb.worker.writer import OutcomeWriter

log = logging.getLogger("core4nb.worker")

CONTROL_INTERVAL = 0.5
MIN_POLL, MAX_POLL = 0.002, 0.1
#: With a doorbell new work wakes the node at once; polling only catches deferred/failed jobs coming due.
MAX_POLL_WITH_BELL = 0.25


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
        # Before anything is claimed: a node that cannot verify payloads (no key, or a key file
        # others can read) must refuse to start, not claim jobs its children would fail.
        # A worker of a shared (MongoDB) queue never makes up a key of its own: it could verify no job.
        self.key = keys.load_key(create=url.partition("://")[0].lower() == "sqlite")
        self.key_id = keys.key_id(self.key)
        check_on_this_machine(url)
        self.store = open_store(url)
        self.processes = processes or os.cpu_count() or 1
        host = socket.gethostname()
        self.name = name or f"{host}-{os.getpid()}"
        self.claimant = Claimant(worker=self.name, node=host, pid=os.getpid(), key_id=self.key_id)
        self.burst = burst
        self.lease_seconds = lease_seconds
        self.heartbeat_interval = max(lease_seconds / 6, 0.05)
        self.grace = grace
        self.memory_limit_mb = memory_limit_mb
        self.watch_pid = watch_pid
        self.slots: list[Slot] = []
        self._drain_deadline: float | None = None
        self._stop_now = threading.Event()
        self._reports = LiveReports()  # progress and output of running jobs, until the next control tick
        self._writer = OutcomeWriter(self.store, self.claimant, lease_seconds)  # outcomes owed, in order
        self._outage = Outage(f"queue {redact_url(url)}", log)
        self._reaper = Reaper(self.store, host, lease_seconds)
        self._unverifiable: set[str] = set()  # jobs handed back: signed with a key this node does not have
        self._next_control = self._next_lease = self._step_started = 0.0
        self._housekeeper = Housekeeper(self.store, self.name)
        self._is_done = False
        self._bell = None  # the store's doorbell, while run() listens on it
        self._wakeup: tuple[socket.socket, socket.socket] | None = None  # stop() ends the loop's wait through it

    @property
    def jobs_done(self) -> int:
        """Jobs this node brought to a final state."""
        return self._writer.jobs_done

    # -- lifecycle ---------------------------------------------------------------
    def run(self) -> int:
        """Serve until SIGTERM/SIGINT (or, in burst mode, until idle). Returns jobs finished."""
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._on_signal)
            signal.signal(signal.SIGINT, self._on_signal)
        self.slots = [Slot(self.url, self.key, self.memory_limit_mb) for _ in range(self.processes)]
        log.info("node %s serving %s with %d processes", self.name, redact_url(self.store.url), self.processes)
        poll = MIN_POLL
        ready = None  # what woke the loop; None: look at every slot
        self._bell = bell = self.store.listen("work")
        self._wakeup = socket.socketpair()
        try:
            while not self._stop_now.is_set() and not self._is_done:
                busy_before = len(self._busy())
                self._collect(ready)
                self._police()
                claimed = False
                if self._outage.wait_time() == 0:
                    self._step_started = time.monotonic()
                    try:
                        claimed = self._store_step(rung=bell is not None and ready is not None and bell in ready)
                        self._outage.ended()
                    except StoreUnavailable as exc:
                        self._outage.failed(exc)
                        self._reaper.hold()  # every failed try pushes reaping a lease period past the recovery
                if self._outage.is_ongoing and self._drain_expired() and not self._busy():
                    break  # draining with the store down: stop at the deadline; _shutdown reports what is unsaved
                if bell is None or not bell.hears_everyone:  # polling finds work: soon after activity, then less often
                    poll = MIN_POLL if claimed or busy_before != len(self._busy()) else min(poll * 2, MAX_POLL)
                else:  # new work rings; polling only catches deferred and failed jobs coming due
                    poll = MAX_POLL_WITH_BELL
                ready = self._wait(poll)
        finally:
            if bell:
                bell.close()
            for end in self._wakeup:
                end.close()
            self._shutdown()
        return self.jobs_done

    def _store_step(self, *, rung: bool = False) -> bool:
        """Everything the loop does with the store; raises StoreUnavailable when it is down. True: claimed.
        ``rung``: the work bell woke the loop."""
        # Outcomes first: they free the jobs' max_parallel slots in the store. With a slot free, the last
        # outcome's write also claims the next job (on SQLite in one transaction: one write lock per job, not two).
        # A finish that claimed and found nothing due answers for the other free slots too: one look per step.
        tried, first = self._writer.flush(claim=self._drain_deadline is None and len(self._busy()) < self.processes)
        claimed = self._claim(first, more=first is not None or not tried, rung=rung and not tried)
        now = time.monotonic()
        if now >= self._next_control:
            self._control()
            self._next_control = now + CONTROL_INTERVAL
        if now >= self._next_lease:
            self._lease_tick()
            self._next_lease = now + self.heartbeat_interval
        self._is_done = self._should_exit()
        self._writer.judge()  # the store answers: an outcome it refused in this step was refused for itself
        return claimed

    def _wait(self, poll: float) -> set:
        """Sleep until a child speaks or dies, new work rings (while a slot is free), :meth:`stop`
        is called, or something is due; return what woke the loop."""
        busy = self._busy()
        # Idle children's sentinels too: a child that dies between jobs is replaced at once.
        waitables = [self._wakeup[0], *(w for s in self.slots for w in s.waitables())]
        if len(busy) < self.processes:
            timeout = poll
            if self._bell is not None:
                waitables.append(self._bell)
        else:  # no slot could take work: children wake the loop, else its next control or lease tick
            timeout = min(self._next_control, self._next_lease) - time.monotonic()
        ready = set(select.select(waitables, [], [], self._wait_time(timeout, busy))[0])
        if self._bell is not None:
            self._bell.drain()
        if self._wakeup[0] in ready:
            with contextlib.suppress(BlockingIOError):
                self._wakeup[0].recv(4096, socket.MSG_DONTWAIT)
        return ready

    def _wait_time(self, timeout: float, busy: list[Slot]) -> float:
        """``timeout``, or less when a job's wall time, a kill escalation or the drain deadline is
        due sooner, or more while the store is down."""
        if self._outage.is_ongoing:
            return max(timeout, self._outage.wait_time())
        now = time.monotonic()
        due = min((d for s in busy if (d := s.next_deadline()) is not None), default=math.inf)
        if self._drain_deadline is not None and self._drain_deadline > now:  # once past, police has acted on it
            due = min(due, self._drain_deadline)
        return max(MIN_POLL, min(timeout, due - now))

    def stop(self, *, drain: bool = True) -> None:
        """Ask the loop to stop (thread-safe); with ``drain`` running jobs may finish first."""
        if drain and self._drain_deadline is None:
            self._drain_deadline = time.monotonic() + self.grace
        else:
            self._stop_now.set()
        if self._wakeup is not None:  # end the loop's wait now rather than at its next deadline
            with contextlib.suppress(OSError):
                self._wakeup[1].send(b"!", socket.MSG_DONTWAIT)

    def _on_signal(self, signum: int, _frame: object) -> None:
        first = self._drain_deadline is None
        log.warning("node %s got %s: %s", self.name, signal.Signals(signum).name,
                    f"draining (up to {self.grace:g} s)" if first else "stopping now")
        self.stop(drain=first)

    def _drain_expired(self) -> bool:
        return self._drain_deadline is not None and time.monotonic() > self._drain_deadline

    def _should_exit(self) -> bool:
        if self._busy() or self._writer.unsaved:
            return False
        if self._drain_deadline is not None:
            return True
        # Jobs this node handed back because it cannot verify them are not its to wait for.
        return self.burst and not self.store.has_waiting(key_id=self.key_id, exclude=self._unverifiable)

    def _shutdown(self) -> None:
        for slot in self._busy():  # hard stop with jobs running: hand them back
            slot.stop_job(StopReason.DRAIN)
        for slot in self.slots:
            if slot.is_busy:
                slot.process.join(5)
                self._collect_slot(slot)
            else:  # its child exits now, while the others are hung up on: they exit side by side
                slot.hang_up()
        for slot in self.slots:
            slot.close()
        try:
            self._writer.flush()
            if self._writer.unsaved:
                log.error("node %s stops with the queue unavailable: %d outcome(s) not recorded; those jobs run "
                          "again once their leases expire", self.name, len(self._writer.unsaved))
            self.store.remove_worker(self.name)
        except StoreUnavailable as exc:
            log.error("node %s stops with the queue unavailable (%s)", self.name, exc)
        finally:
            self.store.close()
        log.info("node %s stopped after %d jobs", self.name, self.jobs_done)

    # -- the loop's steps ----------------------------------------------------------
    def _busy(self) -> list[Slot]:
        return [s for s in self.slots if s.is_busy]

    def _claim(self, first: Job | None = None, *, more: bool = True, rung: bool = False) -> bool:
        """Start ``first`` (claimed along with an outcome), then, with ``more``, claim a job for every other
        free slot; the first of those claims skips the look at what is due when the work bell ``rung``.

        On the embedded file a claim is this process's own work: the jobs are claimed at once and started
        after, since a child woken by its job often runs on the node's core, where a claim made after
        waking it would hold it up. On a server the next claim is a wait on the network, which the child
        spends running: each job starts as soon as it is claimed."""
        free = [slot for slot in self.slots if not slot.is_busy]
        jobs = [first] if first is not None else []
        wanted = len(free) - len(jobs) if more and self._drain_deadline is None else 0
        if self.store.claims_locally and wanted > 0:
            try:
                jobs += self.store.claim_many(self.claimant, wanted, lease_seconds=self.lease_seconds, rung=rung)
            finally:  # a claim that fails (the store went down) must not strand the job claimed before it
                self._start(free, jobs)
            return bool(jobs)
        self._start(free, jobs)
        for slot in free[len(jobs):] if wanted > 0 else ():
            job, rung = self.store.claim(self.claimant, lease_seconds=self.lease_seconds, rung=rung), False
            if job is None:
                break
            self._start([slot], [job])
            jobs.append(job)
        return bool(jobs)

    @staticmethod
    def _start(slots: list[Slot], jobs: list[Job]) -> None:
        for slot, job in zip(slots, jobs, strict=False):
            log.debug("claimed %s %s (trial %d)", job.id, job.name, job.trial)
            slot.start(job)

    def _collect(self, ready: set | None) -> None:
        """Messages and deaths of the children whose pipe or sentinel woke the loop (all when ``ready`` is None)."""
        for slot in self.slots:
            if ready is None or not ready.isdisjoint(slot.waitables()):
                self._collect_slot(slot)

    def _collect_slot(self, slot: Slot) -> None:
        for message in slot.receive():
            if message[0] == "progress" and slot.job is not None:
                self._reports.progress(slot.job.id, message[1], message[2])
            elif message[0] == "output" and slot.job is not None:
                self._reports.printed(slot.job.id, message[1])
            elif message[0] == "done" and slot.job is not None:
                job = slot.release()
                write = outcomes.for_outcome(job, message[1], self.key_id, self.name)
                if write.state is State.PENDING:  # handed back: this node cannot verify or load it
                    self._unverifiable.add(job.id)
                self._owe(write)
        if slot.is_dead:
            if slot.job is not None:
                reason, exitcode, runtime, job = slot.stop_reason, slot.exitcode, slot.elapsed(), slot.release()
                if reason is None:
                    log.error("child running job %s %s", job.id, exit_description(exitcode))
                self._owe(outcomes.for_death(job, reason, exitcode, runtime, self.name))
            slot.respawn()

    def _owe(self, write: Write | None) -> None:
        if write is not None:
            self._reports.forget(write.job.id)
            self._writer.owe(write)

    def _police(self) -> None:
        """Stop children past their wall time or the drain deadline; SIGKILL those that ignored SIGTERM."""
        for slot in self._busy():
            job = slot.job
            if job.wall_time is not None and slot.elapsed() > job.wall_time:
                slot.stop_job(StopReason.WALL_TIME)
            elif self._drain_expired():
                slot.stop_job(StopReason.DRAIN)
            slot.enforce_kill()

    def _control(self) -> None:
        busy = self._busy()
        self._reports.flush(self.store, {s.job.id: s.job.lease.token for s in busy})
        killed = self.store.kill_requests([s.job.id for s in busy]) if busy else set()
        for slot in busy:
            if slot.job.id in killed:
                slot.stop_job(StopReason.KILL)

    def _lease_tick(self) -> None:
        if self.watch_pid is not None and process_is_gone(self.watch_pid):
            log.warning("process %d that this node serves is gone; stopping", self.watch_pid)
            self.stop(drain=False)
        busy = self._busy()
        # Outcomes not written yet keep their leases too: after a short outage they are still ours to write.
        leases = self._writer.leases() | {s.job.id: s.job.lease.token for s in busy}
        lost = self.store.heartbeat(leases, lease_seconds=self.lease_seconds)
        for slot in busy:
            if slot.job.id in lost:
                log.warning("lease of job %s lost (this node was paused or cut off); stopping it", slot.job.id)
                slot.stop_job(StopReason.LEASE_LOST)
        self._save_info()
        # Stalled this long in this step (a write lock held elsewhere; others heartbeat every lease/6), other
        # nodes' leases may have run out for want of the store, not of life: a lease period before reaping.
        if time.monotonic() - self._step_started > self.lease_seconds / 2:
            self._reaper.hold()
        own = {*self._writer.leases().values()} | {s.job.lease.token for s in busy}
        for job in self._reaper.reap(own):
            log.warning("reaped job %s of lost worker: now %s", job.id, job.state)
        self._housekeeper.turn()

    def _save_info(self) -> None:
        self.store.save_worker(WorkerInfo(
            name=self.name, host=self.claimant.node, pid=self.claimant.pid, slots=self.processes,
            heartbeat=time.time(), running=[s.job.id for s in self._busy()],
            state="draining" if self._drain_deadline is not None else "running", key_id=self.key_id,
            python=platform.python_version()))
