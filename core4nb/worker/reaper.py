"""Which jobs of other nodes a node may reap: judged on its own clock, never on theirs.

A lease's ``until`` is written by the holder's clock, which may be minutes off this one. So a
node reaps a job only when it has seen the same lease (token and heartbeat count) for longer
than the lease's period on its own ``time.monotonic()`` clock -- or, for holders on its own host
(one clock), when ``until`` has passed. After this node's own store outage or stall, nobody may
have been able to heartbeat: it reaps nothing until every holder had a full lease period again.
"""

from __future__ import annotations

import time
from collections.abc import Collection

from core4nb.job import Job
from core4nb.store import Store


class Reaper:
    """What one node has seen of the queue's leases, per job id."""

    def __init__(self, store: Store, host: str, lease_seconds: float) -> None:
        self.store = store
        self.host = host
        self.lease_seconds = lease_seconds
        self._seen: dict[str, tuple[str, int, float, float]] = {}  # id -> token, beat, since, period
        self._hold_until = 0.0

    def hold(self) -> None:
        """The store did not answer this node for a while (an outage, a long write lock): other nodes may
        not have been able to heartbeat either. Reap nothing until they had a full lease period again."""
        period = max([self.lease_seconds, *(seen[3] for seen in self._seen.values())])
        self._hold_until = max(self._hold_until, time.monotonic() + period)
        self._seen.clear()  # counts seen before the stall prove nothing about silence since

    @property
    def is_holding(self) -> bool:
        return time.monotonic() < self._hold_until

    def reap(self, own_tokens: Collection[str]) -> list[Job]:
        """Look at every running lease, and reap those of holders that are gone (not this node's own)."""
        now, leases = time.monotonic(), self.store.leases()
        seen, silent = {}, {}
        for job_id, lease in leases.items():
            if lease.token in own_tokens:
                continue
            token, beat, since, _ = self._seen.get(job_id, (None, None, now, 0.0))
            if (token, beat) != (lease.token, lease.beat):
                since = now
            seen[job_id] = lease.token, lease.beat, since, lease.period
            if now - since > lease.period:
                silent[job_id] = lease
        self._seen = seen
        if self.is_holding:
            return []
        return self.store.reap(host=self.host, silent=silent)
