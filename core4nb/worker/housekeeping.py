"""A node's share of the queue's housekeeping: retention of finished trees, one node at a time, and
settling the gathering roots a writer left behind."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

from core4nb.errors import ConfigError, StoreUnavailable
from core4nb.store import Store, redact_url

log = logging.getLogger("core4nb.worker")

HOUSEKEEPING_ENV = "CORE4NB_HOUSEKEEPING_INTERVAL"
#: Seconds between two housekeeping runs of a queue (any node's): retention of finished trees.
HOUSEKEEPING_INTERVAL = 600.0
#: Seconds between two sweeps of this node for gathering roots whose last child's writer died (or lost the
#: store) between the child's write and the root's (MongoDB: no transaction); cheap, and harmless when repeated.
SETTLE_INTERVAL = 10.0


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
        self._next = self._next_settle = 0.0

    def turn(self) -> None:
        """Settle left-behind roots, and prune if it is time and this node's turn. A failure is logged; it never
        stops the node (a store outage is raised: the node rides those out)."""
        now = time.monotonic()
        if now >= self._next_settle:
            self._next_settle = now + SETTLE_INTERVAL
            self._courtesy(self._settle)
        if now < self._next:
            return
        self._next = now + self.interval
        self._courtesy(self._prune)

    def _settle(self) -> None:
        if moved := self.store.settle_roots():
            log.info("settled %d gathering root(s) whose last child's writer had stopped short", moved)

    def _prune(self) -> None:
        if self.store.housekeeping_turn(self.node_name, self.interval):
            report = self.store.prune(self.store.retention())
            if report.roots:
                log.info("pruned %d finished tree(s) (%d jobs, %d blobs), %.1f MB given back", len(report.roots),
                         report.jobs, report.blobs.count, report.freed / 2**20)

    def _courtesy(self, work: Callable[[], None]) -> None:
        try:
            work()
        except StoreUnavailable:
            raise
        except Exception as exc:  # housekeeping is a courtesy: the node's work goes on
            log.warning("housekeeping of %s failed: %s: %s", redact_url(self.store.url), type(exc).__name__, exc)
