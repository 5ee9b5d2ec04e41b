"""The outcomes a worker node owes the store, written oldest first under each job's lease token.

An outcome survives a store outage: it stays owed (and its lease heartbeated) until the store
takes it. One outcome the store refuses while the rest of the store answers -- the disk is
full for its result, its data cannot be encoded -- must not stop the node's heartbeats for its
other jobs: it is retried with backoff, and after :data:`MAX_TRIES` it is recorded as an error
without its data. A refusal that is not an outage (any exception but StoreUnavailable) errs the
job at once.
"""

from __future__ import annotations

import logging
import time

from core4nb.errors import StoreUnavailable
from core4nb.job import Job
from core4nb.store import Claimant, Store
from core4nb.worker import outcomes
from core4nb.worker.outcomes import Write

log = logging.getLogger("core4nb.worker")

#: Tries of an outcome the store refuses while it answers otherwise (e.g. SQLITE_FULL), before it errs.
MAX_TRIES = 5
FIRST_RETRY = 0.5  # seconds, doubled after every refusal


class OutcomeWriter:
    """The writes one node owes, and how many jobs it finished."""

    def __init__(self, store: Store, claimant: Claimant, lease_seconds: float) -> None:
        self.store = store
        self.claimant = claimant
        self.lease_seconds = lease_seconds
        self.unsaved: list[Write] = []  # in order
        self.jobs_done = 0
        self._refused: tuple[Write, StoreUnavailable] | None = None

    def owe(self, write: Write) -> None:
        self.unsaved.append(write)

    def leases(self) -> dict[str, str]:
        """``{job_id: token}`` of the outcomes owed: their leases are kept alive until they are written."""
        return {w.job.id: w.job.lease.token for w in self.unsaved}

    def flush(self, *, claim: bool = False) -> tuple[bool, Job | None]:
        """Write the outcomes owed that are due, oldest first, until one fails with StoreUnavailable (it
        stays for the next try; :meth:`judge` decides after the node's store step whether it was an outage).
        With ``claim``, the last write also claims the next job. Returns (whether a claim was made, the
        job it claimed)."""
        tried, claimed, now, self._refused = False, None, time.monotonic(), None
        for write in list(self.unsaved):
            if write.retry_at > now:
                continue
            try:
                tried, claimed = self._finish(write, claim=claim and write is self.unsaved[-1])
            except StoreUnavailable as exc:
                self._refused = write, exc
                break
            self.unsaved.remove(write)
        return tried, claimed

    def judge(self) -> None:
        """The rest of the node's store step succeeded: an outcome refused in it was refused for itself.
        Retry it later; after MAX_TRIES, record the job as error without the data that did not fit."""
        if self._refused is None:
            return
        write, exc = self._refused
        # A small write proves the store answers (raising StoreUnavailable if not: then it was an outage).
        self.store.heartbeat(self.leases(), lease_seconds=self.lease_seconds)
        self._refused, write.tries = None, write.tries + 1
        if write.tries < MAX_TRIES:
            write.retry_at = time.monotonic() + FIRST_RETRY * 2 ** (write.tries - 1)
            log.warning("job %s: the queue refused its %s outcome (%s); retrying (%d of %d)", write.job.id,
                        write.state, exc, write.tries, MAX_TRIES)
            return
        log.error("job %s: the queue refused its %s outcome %d times (%s); recording it as error", write.job.id,
                  write.state, write.tries, exc)
        self.unsaved[self.unsaved.index(write)] = outcomes.unstorable(write, exc, tries=write.tries)

    def _finish(self, write: Write, *, claim: bool) -> tuple[bool, Job | None]:
        """Write one outcome (with ``claim``, claiming the next job with it); returns (whether the claim
        was made: not when the outcome was refused and its error written instead, the claimed job)."""
        try:
            done, claimed = self._write(write, claim)
        except StoreUnavailable:
            raise
        except Exception as exc:  # this job's data, not the store (too large, unencodable): it errs, the node lives
            log.error("job %s: the queue refused its %s outcome (%s: %s); recording it as error",
                      write.job.id, write.state, type(exc).__name__, str(exc)[:300])
            write, claim, claimed = outcomes.unstorable(write, exc), False, None
            try:
                done, _ = self._write(write, False)
            except StoreUnavailable:
                raise
            except Exception as again:
                log.error("job %s: the queue refused its error too (%s: %s); it runs again once its lease "
                          "expires", write.job.id, type(again).__name__, again)
                return False, None
        if done:
            self.jobs_done += write.state.is_final
            log.debug("job %s %s", write.job.id, write.state)
        else:
            log.warning("job %s: lease no longer held, its %s outcome is discarded (another node owns it)",
                        write.job.id, write.state)
        return claim, claimed

    def _write(self, write: Write, claim: bool) -> tuple[bool, Job | None]:
        job = write.job
        if claim:
            return self.store.finish_and_claim(job.id, job.lease.token, write.state, self.claimant,
                                               lease_seconds=self.lease_seconds, **write.fields)
        return self.store.finish(job.id, job.lease.token, write.state, **write.fields), None
