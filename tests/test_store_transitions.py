"""The contract of every transition (``core4nb.transitions``), on every store: each one moves a job from
the states it expects to its new state with its fields, and leaves a job in any other state alone.

Run on every backend through the ``queue_url`` fixture, like ``tests/test_store_contract.py``.
"""

from __future__ import annotations

import time

import pytest

from core4nb import transitions
from core4nb.job import CLAIMABLE_STATES, FINAL_STATES, TRANSITIONS, Job, JobError, Lease, State
from core4nb.queue import Queue
from core4nb.store import Store, open_store
from tests.test_store_contract import CLAIMANT, make, running, within

WAITING = sorted(CLAIMABLE_STATES)


@pytest.fixture
def store(queue_url: str):
    with open_store(queue_url) as s:
        yield s


def claimed(store: Store, **fields) -> Job:
    store.insert([make(**fields)])
    job = store.claim(CLAIMANT)
    assert job is not None
    return job


def finish(store: Store, job: Job, move: transitions.Transition) -> Job:
    """Apply a node-side transition (what a node hands to ``finish``) and read the job back."""
    assert move.expect == {State.RUNNING}
    assert store.finish(job.id, job.lease.token, move.state, **move.fields)
    return store.get(job.id)


def test_every_edge_of_the_table_is_taken_by_a_transition() -> None:
    """No edge that nothing takes (``deferred → inactive`` was one), and no transition off the table."""
    lease, job = Lease("w", "n", 1, "t", 0.0), running(lost_left=1)
    moves = [transitions.claim(lease, 0.0), transitions.kill_waiting(0.0),
             transitions.reap(job, "gone", 0.0), transitions.reap(running(lost_left=0), "gone", 0.0),
             transitions.reap(running(kill_requested=True), "gone", 0.0)]
    moves += [m for state in TRANSITIONS[State.RUNNING] for m in transitions.finish(state, {}, 0.0)]
    moves += [transitions.gather(None, False, 0.0)]
    moves += [transitions.gather(make(state=state), False, 0.0) for state in (State.ERROR, State.KILLED)]
    taken = {(old, move.state) for move in moves for old in move.expect}
    assert taken == {(old, new) for old, targets in TRANSITIONS.items() for new in targets}


def test_claim_takes_exactly_the_waiting_states(store: Store) -> None:
    jobs = {state: make(state=state, finished_at=time.time() if state.is_final else None)
            for state in State if state is not State.RUNNING}
    store.insert(list(jobs.values()))
    taken = set()
    while (job := store.claim(CLAIMANT)) is not None:
        taken.add(job.id)
        assert job.state is State.RUNNING and job.trial == 1 and job.lease.worker == CLAIMANT.worker
    assert taken == {jobs[state].id for state in WAITING}
    assert {state: store.get(job.id).state for state, job in jobs.items() if state.is_final} == {
        state: state for state in FINAL_STATES}


@pytest.mark.parametrize("target", sorted(TRANSITIONS[State.RUNNING]))
def test_finish_moves_a_running_job_to_each_state_it_may_take(store: Store, target: State) -> None:
    job = claimed(store)
    before = time.time()
    assert store.finish(job.id, job.lease.token, target, progress_message="done")
    got = store.get(job.id)
    assert (got.state, got.lease, got.progress_message, got.trial) == (target, None, "done", 1)
    assert (got.finished_at is not None) is target.is_final
    if target.is_final:
        assert within(got.finished_at, before, time.time())
    assert not store.finish(job.id, job.lease.token, target)  # it is no longer running: nothing matches


@pytest.mark.parametrize("target", sorted(FINAL_STATES))
def test_finish_with_a_kill_request_keeps_a_final_outcome(store: Store, target: State) -> None:
    job = claimed(store)
    assert store.request_kill(job.id) == 1
    assert store.finish(job.id, job.lease.token, target)
    assert store.get(job.id).state is target


def test_kill_request_kills_waiting_jobs_flags_running_ones_and_leaves_final_ones(store: Store) -> None:
    root = make("tree.root")
    kids = {state: make("tree.kid", parent_id=root.id, root_id=root.id, state=state) for state in WAITING}
    busy = running("tree.kid", parent_id=root.id, root_id=root.id)
    done = make("tree.kid", parent_id=root.id, root_id=root.id, state=State.COMPLETE, finished_at=time.time())
    store.insert([root, *kids.values(), busy, done])
    before = time.time()
    assert store.request_kill(root.id) == 5  # every open job: root, three waiting, one running
    for job in [root, *kids.values()]:
        got = store.get(job.id)
        assert got.state is State.KILLED and got.kill_requested and within(got.finished_at, before, time.time())
    got = store.get(busy.id)
    assert (got.state, got.kill_requested, got.lease) == (State.RUNNING, True, busy.lease)
    got = store.get(done.id)
    assert (got.state, got.kill_requested) == (State.COMPLETE, False)
    assert store.request_kill(root.id) == 1  # only the running job is still open


@pytest.mark.parametrize(("fields", "expected"), [({"lost_left": 2}, State.FAILED), ({"lost_left": 0}, State.ERROR),
                                                  ({"lost_left": 2, "kill_requested": True}, State.KILLED)])
def test_reap_moves_a_job_whose_lease_expired(store: Store, fields: dict, expected: State) -> None:
    job = running(until=time.time() - 5, error_time=30.0, **fields)
    store.insert([job])
    before = time.time()
    [reaped] = store.reap()
    got = store.get(job.id)
    assert reaped.state is got.state is expected
    assert got.lease is None and got.error.type == "WorkerLost" and got.lost_left == max(0, fields["lost_left"] - 1)
    assert got.lost_on == "worker w9 on node-z" and got.attempts_left == job.attempts_left
    if expected is State.FAILED:
        assert within(got.query_at, before + 30.0, time.time() + 30.0) and got.finished_at is None
    else:
        assert within(got.finished_at, before, time.time())
    assert store.reap() == []


def test_defer_then_past_defer_max_inactive(store: Store) -> None:
    job = claimed(store, defer_time=60.0, defer_max=3600.0)
    now = time.time()
    got = finish(store, job, transitions.defer(job, "not yet", now))
    assert (got.state, got.progress_message) == (State.DEFERRED, "not yet")
    assert within(got.query_at, now + 60.0, now + 60.0) and within(got.deferred_since, job.started_at, job.started_at)
    again = running(defer_max=3600.0, deferred_since=now - 3600.0)  # a trial after an hour of deferring
    store.insert([again])
    got = finish(store, again, transitions.defer(again, "still not", now))
    assert got.state is State.INACTIVE and got.progress_message.endswith("past defer_max=3600 s: still not")
    assert within(got.finished_at, now, time.time())


def test_retry_while_attempts_are_left_then_error(store: Store) -> None:
    job = claimed(store, attempts=2, error_time=60.0)
    error, now = JobError("ValueError", "bad"), time.time()
    got = finish(store, job, transitions.retry(job, error, b"exc", now, again=True))
    assert (got.state, got.attempts_left, got.error, got.result) == (State.FAILED, 1, error, b"exc")
    assert within(got.query_at, now + 60.0, now + 60.0)
    again = running(attempts=2, attempts_left=1)
    store.insert([again])
    got = finish(store, again, transitions.retry(again, error, None, now, again=True))
    assert (got.state, got.attempts_left) == (State.ERROR, 0)
    once = claimed(store, attempts=3)
    assert finish(store, once, transitions.retry(once, error, None, now, again=False)).state is State.ERROR


def test_release_hands_a_job_back_as_if_never_claimed(store: Store) -> None:
    job = claimed(store)
    got = finish(store, job, transitions.release(job, "handed back", 0.0))
    assert (got.state, got.trial, got.lease, got.progress_message) == (State.PENDING, 0, None, "handed back")
    assert store.claim(CLAIMANT).id == job.id


def test_restart_enqueues_a_new_pending_copy_and_moves_no_job(queue_url: str) -> None:
    with Queue(queue_url) as queue:
        job_id = queue.enqueue(len, "abc")
        assert queue.store.request_kill(job_id) == 1
        new_id = queue.restart(job_id)
        old, new = queue.store.get(job_id), queue.store.get(new_id)
    assert (old.state, new.state, new.restarted_from, new.trial) == (State.KILLED, State.PENDING, job_id, 0)


def test_a_freed_max_parallel_slot_rings_work(store: Store) -> None:
    """Finish and reap of a limited job ring "work" (a job of its name may take the slot); finishing
    an unlimited one rings "done" only."""
    work = store.listen("work")
    try:
        for leave in ("finish", "reap"):
            job = claimed(store, name="lim", max_parallel=1)
            work.drain()
            if leave == "finish":
                assert store.finish(job.id, job.lease.token, State.COMPLETE)
            else:
                assert [j.id for j in store.reap(silent={job.id: job.lease})] == [job.id]
            assert work.wait(1), leave
        plain = claimed(store)
        work.drain()
        assert store.finish(plain.id, plain.lease.token, State.COMPLETE)
        assert not work.wait(0.2)
    finally:
        work.close()


def test_a_handed_back_job_rings_work(store: Store) -> None:
    job = claimed(store)
    work = store.listen("work")
    try:
        assert store.finish(job.id, job.lease.token, State.PENDING)
        assert work.wait(1)
    finally:
        work.close()


# -- a gathering (passive) root: settled by the store in the write that changes its children --------------
def gathering_tree(store: Store, n: int, **child_fields) -> tuple[Job, list[Job]]:
    """A map's shape: ``n`` pending children, then their gathering root, in one insert."""
    root = make("map:pkg.fn", state=State.GATHERING, gather=True, payload=None)
    kids = [make("pkg.fn", parent_id=root.id, root_id=root.id, **child_fields) for _ in range(n)]
    store.insert([*kids, root])
    return root, kids


def claim_kid(store: Store, kid: Job) -> Job:
    job = store.claim(CLAIMANT)
    assert job is not None and job.id == kid.id
    return job


def test_a_gathering_root_is_never_claimed_and_completes_in_the_write_of_its_last_child(store: Store) -> None:
    root, kids = gathering_tree(store, 2)
    first, second = claim_kid(store, kids[0]), claim_kid(store, kids[1])
    assert store.claim(CLAIMANT) is None  # the root is not claimable
    assert store.finish(first.id, first.lease.token, State.COMPLETE)
    assert store.get(root.id).state is State.GATHERING  # a child is still open
    before = time.time()
    assert store.finish(second.id, second.lease.token, State.COMPLETE)
    got = store.get(root.id)
    assert (got.state, got.trial, got.gather, got.progress_value) == (State.COMPLETE, 0, True, 1.0)
    assert within(got.finished_at, before, time.time()) and got.finished_at >= store.get(second.id).finished_at


def test_a_deferred_or_retried_child_leaves_its_root_gathering(store: Store) -> None:
    root, [kid] = gathering_tree(store, 1)
    for state in (State.DEFERRED, State.FAILED):
        job = store.claim(CLAIMANT)
        assert job.id == kid.id and store.finish(job.id, job.lease.token, state, query_at=0.0)
        assert store.get(root.id).state is State.GATHERING


def test_a_failed_child_fails_its_root_and_kills_the_rest_of_the_tree(store: Store) -> None:
    root, kids = gathering_tree(store, 3)
    bad, busy = claim_kid(store, kids[0]), claim_kid(store, kids[1])
    assert store.finish(bad.id, bad.lease.token, State.ERROR, error=JobError("ValueError", "bad item"))
    got = store.get(root.id)
    assert (got.state, got.error.type) == (State.ERROR, "ChildFailed")
    assert got.error.message == f"child job {bad.id} (pkg.fn) ended error: ValueError: bad item"
    running_kid, waiting_kid = store.get(busy.id), store.get(kids[2].id)
    assert (running_kid.state, running_kid.kill_requested) == (State.RUNNING, True)  # its node kills it
    assert waiting_kid.state is State.KILLED
    assert store.finish(busy.id, busy.lease.token, State.COMPLETE)  # a late result changes the root no more
    assert store.get(root.id).state is State.ERROR


def test_killing_one_child_kills_its_root(store: Store) -> None:
    """A cancelled chunk (a map closed early, Ctrl-C in a cell) stops the whole map: the root is killed."""
    root, kids = gathering_tree(store, 2)
    assert store.request_kill(kids[0].id, tree=False) == 1
    got = store.get(root.id)
    assert (got.state, got.error.type) == (State.KILLED, "ChildFailed")
    assert got.error.message.startswith(f"child job {kids[0].id} (pkg.fn) ended killed")
    assert store.get(kids[1].id).state is State.KILLED


def test_a_child_reaped_for_good_fails_its_root(store: Store) -> None:
    root = make("map:pkg.fn", state=State.GATHERING, gather=True, payload=None)
    kid = running(parent_id=root.id, root_id=root.id, until=time.time() - 5, lost_left=0)
    store.insert([kid, root])
    [reaped] = store.reap()
    assert reaped.state is State.ERROR
    got = store.get(root.id)
    assert (got.state, got.error.type) == (State.ERROR, "ChildFailed") and "WorkerLost" in got.error.message


def test_a_root_inserted_after_its_children_finished_completes_at_its_insert(store: Store) -> None:
    root = make("map:pkg.fn", state=State.GATHERING, gather=True, payload=None)
    done = [make(parent_id=root.id, root_id=root.id, state=State.COMPLETE, finished_at=time.time()) for _ in range(2)]
    store.insert(done)
    store.insert([root])
    assert store.get(root.id).state is State.COMPLETE


def test_a_kill_request_kills_a_gathering_root_at_once(store: Store) -> None:
    root, kids = gathering_tree(store, 2)
    busy = claim_kid(store, kids[0])
    assert store.request_kill(root.id) == 3
    assert [store.get(j.id).state for j in (root, kids[1])] == [State.KILLED, State.KILLED]
    assert store.get(busy.id).kill_requested


def test_settle_roots_leaves_open_roots_alone(store: Store) -> None:
    root, _ = gathering_tree(store, 1)
    assert store.settle_roots() == 0
    assert store.get(root.id).state is State.GATHERING
