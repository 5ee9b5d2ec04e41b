"""Doorbells: inserts wake nodes, finishes wake executors, across the processes of one machine (both stores)."""

from __future__ import annotations

import os
import subprocess
import sys

from core4nb.job import Job, State
from core4nb.store import Claimant, open_store
from tests.nodes import PATIENCE, ROOT


def test_insert_rings_work_and_finish_rings_done(queue_url):
    with open_store(queue_url) as store:
        work, done = store.listen("work"), store.listen("done")
        try:
            assert not work.wait(0) and not done.wait(0)
            store.insert([Job(name="a", payload=b"x")])
            assert work.wait(PATIENCE) and not done.wait(0)
            job = store.claim(Claimant("w", "n", 1))
            assert store.finish(job.id, job.lease.token, State.COMPLETE)
            assert done.wait(PATIENCE)
            assert not work.wait(0)  # a finished job without max_parallel frees nothing to claim
        finally:
            work.close()
            done.close()
        assert not work.path.exists()


def test_another_process_rings_this_one(queue_url):
    with open_store(queue_url) as store:
        work = store.listen("work")
        try:
            code = ("from core4nb.store import open_store; from core4nb.job import Job; "
                    f"open_store({queue_url!r}).insert([Job(name='b', payload=b'y')])")
            subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=60)
            assert work.wait(PATIENCE)
        finally:
            work.close()


def test_a_dead_listener_is_forgotten(queue_url):
    with open_store(queue_url) as store:
        code = ("import os; from core4nb.store import open_store; "
                f"b = open_store({queue_url!r}).listen('work'); print(b.path); os._exit(0)")
        path = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True,
                              cwd=ROOT, timeout=60).stdout.strip()
        assert os.path.exists(path)
        store.insert([Job(name="c", payload=b"z")])  # the ring finds nobody there and removes the socket
        assert not os.path.exists(path)


def test_only_the_embedded_bell_hears_every_writer(queue_url):
    """A SQLite file's writers are all on this machine: its bell hears them all and listeners need
    not poll. A MongoDB queue's bell hears this machine's writers only: its listeners keep polling."""
    with open_store(queue_url) as store:
        work = store.listen("work")
        try:
            assert work.hears_everyone is queue_url.startswith("sqlite")
        finally:
            work.close()


def test_a_killed_pending_job_rings_done(queue_url):
    with open_store(queue_url) as store:
        done = store.listen("done")
        try:
            job = Job(name="d", payload=b"k")
            store.insert([job])
            assert not done.wait(0)
            assert store.request_kill(job.id) == 1
            assert done.wait(PATIENCE)
        finally:
            done.close()
