"""What a node's running jobs report while they run -- progress and what they print -- kept until the
node's next control tick writes it to the store, under each job's lease."""

from __future__ import annotations

import logging

from core4nb.errors import StoreUnavailable
from core4nb.store import Store

log = logging.getLogger("core4nb.worker")


class LiveReports:
    """The latest progress and the output batches of each running job that the store has not seen yet."""

    def __init__(self) -> None:
        self._progress: dict[str, tuple[float | None, str]] = {}
        self._printed: dict[str, list[str]] = {}  # output batches of running jobs, not in the store yet
        self._printing: set[str] = set()  # running jobs with output in the store from this trial

    def progress(self, job_id: str, value: float | None, message: str) -> None:
        self._progress[job_id] = value, message

    def printed(self, job_id: str, text: str) -> None:
        self._printed.setdefault(job_id, []).append(text)

    def forget(self, job_id: str) -> None:
        """The trial ended: its outcome carries its whole tail and its last state."""
        self._progress.pop(job_id, None)
        self._printed.pop(job_id, None)
        self._printing.discard(job_id)

    def flush(self, store: Store, tokens: dict[str, str]) -> None:
        """Write what the running jobs (``{job id: lease token}``) reported; a report the store refuses for
        itself is dropped and logged, never the node (StoreUnavailable, an outage, goes up)."""
        for job_id, (value, message) in self._progress.items():
            if job_id in tokens:
                try:
                    store.set_progress(job_id, tokens[job_id], value, message)
                except StoreUnavailable:
                    raise
                except Exception as exc:
                    log.error("job %s: the queue refused its progress (%s: %s)", job_id, type(exc).__name__, exc)
        self._progress.clear()
        for job_id, batches in self._printed.items():
            if job_id in tokens:
                try:
                    first = job_id not in self._printing
                    if store.append_output(job_id, tokens[job_id], "".join(batches), first=first):
                        self._printing.add(job_id)
                except StoreUnavailable:
                    raise
                except Exception as exc:  # as with progress: this job's output, never the node
                    log.error("job %s: the queue refused its output (%s: %s)", job_id, type(exc).__name__, exc)
        self._printed.clear()
