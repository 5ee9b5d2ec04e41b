"""Riding out a store outage: exponential backoff, logged once per outage.

A worker node, or a notebook waiting for a result, must not die because the
database restarted, nor write a warning for every retry while it is down::

    outage = Outage("queue mongodb://db/core4", log)
    while True:
        if outage.wait_time() == 0:
            try:
                work_with_the_store()
                outage.ended()          # logs "reachable again after 4.2 s" once
            except StoreUnavailable as exc:
                outage.failed(exc)      # logs the first failure only; backs off
        ...
"""

from __future__ import annotations

import logging
import time

#: First retry this soon after a failure, then twice as late each time, up to MAX_DELAY.
FIRST_DELAY = 0.05
MAX_DELAY = 2.0
#: Seconds of continuous outage a waiter (``Queue.wait``, an executor's futures) rides out before it gives up.
STORE_PATIENCE = 60.0


class Outage:
    """Backoff state over one store outage (none while the store answers).

    Args:
        what: how log lines name the store (a redacted URL).
        log: where the start and the end of an outage are logged.
    """

    def __init__(self, what: str, log: logging.Logger) -> None:
        self.what = what
        self.log = log
        self.since: float | None = None  # monotonic start of the current outage
        self._delay = 0.0
        self._retry_at = 0.0

    @property
    def is_ongoing(self) -> bool:
        return self.since is not None

    def duration(self) -> float:
        """Seconds the current outage has lasted (0 when there is none)."""
        return 0.0 if self.since is None else time.monotonic() - self.since

    def failed(self, exc: BaseException) -> None:
        """Record a failed attempt: log it if it starts an outage, and back off."""
        now = time.monotonic()
        if self.since is None:
            self.since, self._delay = now, FIRST_DELAY
            self.log.warning("%s is unavailable (%s); retrying with backoff up to %g s", self.what, exc, MAX_DELAY)
        else:
            self._delay = min(self._delay * 2, MAX_DELAY)
        self._retry_at = now + self._delay

    def ended(self) -> None:
        """Record a successful attempt: log the end of an outage, if one was on."""
        if self.since is not None:
            self.log.warning("%s is reachable again after %.1f s", self.what, time.monotonic() - self.since)
            self.since = None

    def wait_time(self) -> float:
        """Seconds until the next attempt is due (0: try now)."""
        return 0.0 if self.since is None else max(0.0, self._retry_at - time.monotonic())
