"""A node's share of the queue's housekeeping: retention of finished trees, one node at a time."""

from __future__ import annotations

import logging
import os
import time

from core4nb.errors import ConfigError, StoreUnavailable
from core4nb.store import Store, redact_url

log = logging.getLogger("core4nb.worker")

HOUSEKEEPING_ENV = "CORE4NB_HOUSEKEEPING_INTERVAL"
#: Seconds between two housekeeping runs of a queue (any node's): retention of finished trees.
HOUSEKEEPING_INTERVAL = 600.0


def housekeeping_interval() -> float:
    value = os.environ.get(HOUSEKEEPING_ENV)
    try:
        return HOUSEKEEPING_INTERVAL if not value else max(0.0, float(value))
    except ValueError:
        raise ConfigError(f"{HOUSEKEEPING_ENV}={value!r} is not a number of seconds; e.g. 600") from None


class Housekeeper:
    """Prunes finished trees past the queue's retention when it is this node's turn: at most every
    :func:`housekeeping_interval` s among all nodes of the queue."""

    def __init__(self, store: Store, node_name: str) -> None:
        self.store, self.node_name = store, node_name
        self.interval = housekeeping_interval()
        self._next = 0.0

    def turn(self) -> None:
        """Prune if it is time and this node's turn. A failure is logged; it never stops the node (a store
        outage is raised: the node rides those out)."""
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + self.interval
        try:
            if self.store.housekeeping_turn(self.node_name, self.interval):
                report = self.store.prune(self.store.retention())
                if report.roots:
                    log.info("pruned %d finished tree(s) (%d jobs, %d blobs), %.1f MB given back", len(report.roots),
                             report.jobs, report.blobs.count, report.freed / 2**20)
        except StoreUnavailable:
            raise
        except Exception as exc:  # housekeeping is a courtesy: the node's work goes on
            log.warning("housekeeping of %s failed: %s: %s", redact_url(self.store.url), type(exc).__name__, exc)
