"""``Queue``: the low-level Python API over a store — enqueue, inspect, kill, restart.

The executor, the magics and the CLI are built on this; user code that wants
fine control (priorities, trees by hand) can use it directly::

    q = Queue("sqlite://~/work/q.db")
    job_id = q.enqueue(count_primes, 1, 100_000, options={"priority": 5})
    q.result(job_id, timeout=60)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from core4nb import serialize
from core4nb.calls import make_job
from core4nb.errors import JobNotFinal, StoreUnavailable
from core4nb.job import FINAL_STATES, Job, State, new_job_id
from core4nb.options import OPTION_NAMES, JobOptions, reject_misplaced_options
from core4nb.remote import outcome
from core4nb.store import Store, default_url, open_store, redact_url
from core4nb.store.outage import STORE_PATIENCE, Outage

log = logging.getLogger("core4nb.queue")


class Queue:
    """The job queue at ``url`` (default: ``CORE4NB_URL`` or the embedded file)."""

    def __init__(self, url: str | None = None, *, store: Store | None = None) -> None:
        self.url = url or (store.url if store else default_url())
        self.store = store or open_store(self.url)

    def enqueue(self, fn: Callable, /, *args: Any, options: Mapping[str, Any] | None = None,
                parent: str | Job | None = None, name: str | None = None, **kwargs: Any) -> str:
        """Store a job for ``fn(*args, **kwargs)`` and return its id.

        ``options`` sets job options (:class:`~core4nb.options.JobOptions` names:
        ``options={"priority": 5}``); every other keyword goes to ``fn``.

        Raises:
            TypeError: an unknown option, or an option's name given as a keyword ``fn`` does not take
                (the spelling before 0.2).
        """
        reject_misplaced_options(fn, kwargs, "enqueue")
        parent_job = self.store.get(parent, blobs=False) if isinstance(parent, str) else parent
        job = make_job(fn, args, kwargs, name=name, parent=parent_job, options=options)
        self.store.insert([job])
        return job.id

    def get(self, job_id: str) -> Job:
        """The job (without its blobs and output); raises JobNotFound."""
        return self.store.get(job_id, blobs=False)

    def output(self, job_id: str) -> str:
        """What the job printed to stdout and stderr in its last trial (the last 64 KiB); raises JobNotFound."""
        return self.store.get(job_id, blobs=True).output

    def wait(self, job_id: str, timeout: float | None = None, poll: float = 0.05) -> Job:
        """Block until the job is final.

        Rides out a store outage (a database restart) of up to :data:`STORE_PATIENCE`
        seconds, retrying with backoff.

        Raises:
            TimeoutError: the job is not final after ``timeout`` seconds.
            StoreUnavailable: the store stayed unreachable for longer than STORE_PATIENCE.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        outage, state = Outage(f"queue {redact_url(self.url)}", log), "unknown (queue unreachable)"
        while True:
            try:
                job = self.store.get(job_id, blobs=False)
                if job.state in FINAL_STATES:
                    return self.store.get(job_id)
                state = job.state
                outage.ended()
            except StoreUnavailable as exc:
                outage.failed(exc)
                if outage.duration() > STORE_PATIENCE:
                    raise
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"job {job_id} is still {state} after {timeout} s")
            time.sleep(max(poll, outage.wait_time()))
            poll = min(poll * 1.5, 0.5)

    def result(self, job_id: str, timeout: float | None = None) -> Any:
        """Wait for the job and return its value (or raise its exception)."""
        return outcome(self.wait(job_id, timeout), self.store)

    def kill(self, job_id: str) -> int:
        """Kill the job and its subtree; returns how many jobs were killed or flagged."""
        return self.store.request_kill(job_id, tree=True)

    def restart(self, job_id: str) -> str:
        """Enqueue a fresh copy of a final job (linked by ``restarted_from``); returns its id."""
        old = self.store.get(job_id)
        if old.state not in FINAL_STATES:
            raise JobNotFinal(f"job {job_id} is {old.state}; only a finished job can be restarted (kill it first)")
        if old.gather:
            raise ValueError(f"job {job_id} is a map's root, which runs nothing: run the map again, or restart "
                             "its chunks (`core4nb jobs --tree` lists them)")
        same_options = JobOptions(**{name: getattr(old, name) for name in OPTION_NAMES})
        tree = {"parent_id": old.parent_id, "root_id": old.root_id} if old.parent_id else {}
        new_id = new_job_id()  # the payload is signed for its job: sign the same call for the new one
        payload = serialize.rebind(old.payload, job_id=new_id, what=f"payload of job {old.id}")
        new = Job(name=old.name, args_summary=old.args_summary, key_id=old.key_id, **same_options.as_dict(), **tree,
                  id=new_id, payload=payload, restarted_from=old.id)  # a child stays in its tree
        self.store.insert([new])
        return new.id

    def remove(self, job_id: str) -> int:
        """Delete the job and its subtree; returns how many were deleted."""
        return self.store.remove(job_id)

    def counts(self, root_id: str | None = None) -> dict[State, int]:
        """Jobs per state in a tree (or the whole queue)."""
        return self.store.counts(root_id=root_id)

    def jobs(self, state: State | str | None = None, limit: int | None = None) -> list[Job]:
        states = [State(state)] if state else None
        return self.store.find(states=states, limit=limit)

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> Queue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
