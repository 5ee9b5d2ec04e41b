"""The store contract: what every backend of ``core4nb.store`` must do.

Written once against the documented interface (``core4nb/store/base.py``) and run
on every backend through the ``queue_url`` fixture: real stores, no mocks, no
backend internals. A new backend is done when this file passes on it.

Times are epoch seconds and compare to within a millisecond (``within``): the
wire-protocol test server keeps only 15 significant digits of a float written
by an update (~10 µs today), and sub-millisecond precision is no promise.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import threading
import time
from collections import Counter

import pytest

from core4nb.errors import ConfigError, IllegalTransition, JobNotFound, StoreUnavailable
from core4nb.job import OUTPUT_LIMIT, Job, JobError, Lease, State
from core4nb.store import Claimant, Store, WorkerInfo, open_store

CLAIMANT = Claimant(worker="w1", node="node-a", pid=4242)
_seq = iter(range(1, 10**9))


def new_id() -> str:
    """A 24-hex id strictly greater than every earlier one (new_job_id() can tie within a microsecond)."""
    return f"{time.time_ns() // 1000:014x}{next(_seq):010x}"


def make(name: str = "pkg.fn", **fields) -> Job:
    fields.setdefault("id", new_id())
    fields.setdefault("payload", b"payload-" + fields["id"].encode())
    return Job(name=name, **fields)


def running(name: str = "pkg.fn", token: str = "tok", until: float | None = None, **fields) -> Job:
    """A job stored as already running under a lease (as if claimed by another node)."""
    lease = Lease("w9", "node-z", 99, token, time.time() + 60 if until is None else until)
    return make(name, state=State.RUNNING, lease=lease, trial=1, started_at=time.time(), **fields)


TIME_SLACK = 1e-3


def within(value: float, low: float, high: float) -> bool:
    return low - TIME_SLACK <= value <= high + TIME_SLACK


def zero_counts(**nonzero: int) -> dict[State, int]:
    return {state: nonzero.get(str(state), 0) for state in State}


@pytest.fixture
def store(queue_url: str):
    with open_store(queue_url) as s:
        yield s


@pytest.fixture
def tree(store: Store) -> dict[str, Job]:
    """root → (c1 → (g1, g2), c2); c1 running, g2 complete, the rest pending; plus an unrelated root."""
    root = make("tree.root")
    c1 = running("tree.child", parent_id=root.id, root_id=root.id, token="c1-token")
    c2 = make("tree.child", parent_id=root.id, root_id=root.id)
    g1 = make("tree.grand", parent_id=c1.id, root_id=root.id)
    g2 = make("tree.grand", parent_id=c1.id, root_id=root.id, state=State.COMPLETE, finished_at=time.time())
    other = make("other.root")
    jobs = {"root": root, "c1": c1, "c2": c2, "g1": g1, "g2": g2, "other": other}
    store.insert(list(jobs.values()))
    return jobs


def states(store: Store, jobs: dict[str, Job]) -> dict[str, State]:
    return {key: store.get(job.id).state for key, job in jobs.items()}


# -- insert / get / find / counts ------------------------------------------------------------------

def test_insert_get_round_trips_every_field(store: Store) -> None:
    original = Job(
        name="pkg.mod.fn", payload=b"\x00\x01pickled\xff" * 100, args_summary="(1, 2, x=3)", id=new_id(),
        parent_id="p" * 24, root_id="r" * 24, priority=7, max_parallel=3, attempts=5, attempts_left=4, trial=2,
        defer_time=2.5, defer_max=60.0, error_time=3.5, wall_time=10.0, state=State.RUNNING, query_at=123.25,
        lease=Lease("worker-1", "node-1", 77, "token-1", 1_999_999_999.5), progress_value=0.5,
        progress_message="half way", enqueued_at=100.5, started_at=101.5, finished_at=103.5, deferred_since=102.5,
        runtime=1.25, result=b"\x80result\x00",
        error=JobError("ValueError", "bad value", "Traceback (most recent call last): ...", exit_code=3),
        kill_requested=True, restarted_from="s" * 24, output="printed\nand warned\n", lost_retries=5, lost_left=4,
        lost_on="worker w0 on node-0", key_id="0123456789abcdef", keep=True, gather=True,
    )
    default = Job(name="x")
    # Guard: every field differs from its default, so the round trip really covers every field.
    stored = [f.name for f in dataclasses.fields(Job) if f.name != "blobs"]  # blobs: what insert stores apart
    same = [name for name in stored if getattr(original, name) == getattr(default, name)]
    assert same == []

    store.insert([original])
    assert store.get(original.id) == original
    assert store.get(original.id, blobs=False) == dataclasses.replace(original, payload=None, result=None, output="")


def test_insert_get_round_trips_defaults(store: Store) -> None:
    job = Job(name="plain", id=new_id())
    store.insert([job])
    got = store.get(job.id)
    assert got == job
    assert got.state is State.PENDING and got.lease is None and got.error is None and got.payload is None
    assert got.root_id == job.id and got.kill_requested is False


def test_insert_is_all_or_nothing(store: Store) -> None:
    first = make()
    store.insert([first])
    fresh = make()
    with pytest.raises(Exception):  # noqa: B017 - the contract names no type, only that nothing is stored
        store.insert([fresh, dataclasses.replace(first, name="duplicate id")])
    with pytest.raises(JobNotFound):
        store.get(fresh.id)
    assert store.get(first.id).name == "pkg.fn"
    store.insert([])  # nothing to do, no error
    assert sum(store.counts().values()) == 1


def test_get_unknown_id_raises_job_not_found(store: Store) -> None:
    with pytest.raises(JobNotFound, match="no job with id 0123456789abcdef01234567"):
        store.get("0123456789abcdef01234567")
    with pytest.raises(KeyError):  # JobNotFound is also a KeyError, as a mapping lookup would raise
        store.get("0123456789abcdef01234567")


def test_find_filters_and_orders_oldest_first(store: Store, tree: dict[str, Job]) -> None:
    by_id = lambda jobs: [j.id for j in jobs]  # noqa: E731
    all_ids = sorted(j.id for j in tree.values())
    assert by_id(store.find()) == all_ids
    assert by_id(store.find(limit=2)) == all_ids[:2]
    assert by_id(store.find(root_id=tree["root"].id)) == sorted(tree[k].id for k in ("root", "c1", "c2", "g1", "g2"))
    assert by_id(store.find(parent_id=tree["c1"].id)) == [tree["g1"].id, tree["g2"].id]
    assert by_id(store.find(states=[State.RUNNING, State.COMPLETE])) == [tree["c1"].id, tree["g2"].id]
    assert by_id(store.find(ids=[tree["other"].id, tree["c2"].id, "ffffffffffffffffffffffff"])) == [
        tree["c2"].id, tree["other"].id]
    assert by_id(store.find(root_id=tree["root"].id, states=[State.PENDING], limit=2)) == [
        tree["root"].id, tree["c2"].id]
    assert store.find(ids=[]) == []
    assert store.find(states=[]) == []
    assert store.find(root_id="no-such-root") == []


def test_find_loads_blobs_only_when_asked(store: Store) -> None:
    job = make(result=b"r")
    store.insert([job])
    [light] = store.find(ids=[job.id])
    assert light.payload is None and light.result is None
    [full] = store.find(ids=[job.id], blobs=True)
    assert full == job


def test_counts_has_all_eight_states(store: Store, tree: dict[str, Job]) -> None:
    assert store.counts() == zero_counts(pending=4, running=1, complete=1)
    assert store.counts(root_id=tree["root"].id) == zero_counts(pending=3, running=1, complete=1)
    assert store.counts(parent_id=tree["c1"].id) == zero_counts(pending=1, complete=1)
    assert store.counts(root_id="no-such-root") == zero_counts()
    extra = [make(state=s) for s in (State.DEFERRED, State.FAILED, State.ERROR, State.INACTIVE, State.KILLED)]
    store.insert(extra)
    assert store.counts() == zero_counts(pending=4, running=1, complete=1, deferred=1, failed=1, error=1,
                                         inactive=1, killed=1)
    assert set(store.counts()) == set(State)


# -- claim -------------------------------------------------------------------------------------------

def test_claim_on_empty_queue_returns_none(store: Store) -> None:
    assert store.claim(CLAIMANT) is None


def test_claim_sets_running_lease_trial_and_returns_payload(store: Store) -> None:
    job = make(trial=0)
    store.insert([job])
    before = time.time()
    claimed = store.claim(CLAIMANT, lease_seconds=17)
    after = time.time()
    assert claimed is not None and claimed.id == job.id
    assert claimed.state is State.RUNNING
    assert claimed.payload == job.payload
    assert claimed.trial == 1
    assert within(claimed.started_at, before, after)
    lease = claimed.lease
    assert (lease.worker, lease.node, lease.pid) == ("w1", "node-a", 4242)
    assert lease.token
    assert within(lease.until, before + 17, after + 17)
    assert store.get(job.id) == claimed
    assert store.claim(CLAIMANT) is None  # a running job is not claimable


def test_a_claim_the_work_bell_woke_keeps_every_rule(store: Store) -> None:
    """``rung`` skips only a claim's first look at what is due: what it may take stays the same."""
    assert store.claim(CLAIMANT, rung=True) is None
    later, due, killed = make(query_at=time.time() + 60, priority=10), make(), make(kill_requested=True, priority=9)
    store.insert([later, due, killed])
    assert store.claim(CLAIMANT, rung=True).id == due.id
    assert store.claim(CLAIMANT, rung=True) is None
    assert store.get(later.id).state is State.PENDING and store.get(killed.id).state is State.PENDING


def test_a_sqlite_claim_reads_before_it_takes_the_write_lock_even_when_rung(tmp_path) -> None:
    """Every claim, also one the work bell woke (a ring wakes every node of the file), reads whether anything
    is due before it takes the write lock: the nodes a single job leaves with nothing take no lock at all."""
    with open_store(f"sqlite:///{tmp_path / 'q.db'}") as store:
        store.insert([make()])
        statements: list[str] = []
        store._conn().set_trace_callback(statements.append)
        assert store.claim(CLAIMANT, rung=True) is not None
        assert store.claim(CLAIMANT, rung=True) is None
        looks = [s for s in statements if s.startswith("SELECT 1 FROM queue")]
        writes = [s for s in statements if s.startswith("BEGIN")]
        assert (len(looks), len(writes)) == (2, 1), statements  # the second claim found nothing, and wrote nothing
        assert statements.index(looks[0]) < statements.index(writes[0])


def test_claim_gives_fresh_tokens(store: Store) -> None:
    store.insert([make(), make()])
    a, b = store.claim(CLAIMANT), store.claim(CLAIMANT)
    assert a.lease.token != b.lease.token


def test_claim_orders_by_priority_then_fifo(store: Store) -> None:
    jobs = [make(priority=p) for p in (0, 5, 5, 1, 0, -3)]
    store.insert(jobs)
    order = [store.claim(CLAIMANT).id for _ in jobs]
    assert order == [jobs[i].id for i in (1, 2, 3, 0, 4, 5)]
    assert store.claim(CLAIMANT) is None


def test_claim_fifo_ignores_insert_order(store: Store) -> None:
    older, newer = make(), make()
    store.insert([newer])
    store.insert([older])
    assert store.claim(CLAIMANT).id == older.id


def test_claim_respects_query_at(store: Store) -> None:
    later = make(query_at=time.time() + 60, priority=10)
    now = make(query_at=time.time() - 1)
    store.insert([later, now])
    assert store.claim(CLAIMANT).id == now.id
    assert store.claim(CLAIMANT) is None
    assert store.get(later.id).state is State.PENDING


def test_claim_takes_deferred_and_failed_jobs(store: Store) -> None:
    deferred = make(state=State.DEFERRED, trial=1)
    failed = make(state=State.FAILED, trial=2)
    store.insert([deferred, failed])
    first, second = store.claim(CLAIMANT), store.claim(CLAIMANT)
    assert (first.id, first.trial) == (deferred.id, 2)
    assert (second.id, second.trial) == (failed.id, 3)


def test_claim_skips_final_running_and_kill_requested_jobs(store: Store) -> None:
    store.insert([make(state=s) for s in (State.COMPLETE, State.ERROR, State.INACTIVE, State.KILLED)])
    store.insert([running(), make(kill_requested=True), make(state=State.FAILED, kill_requested=True)])
    assert store.claim(CLAIMANT) is None


def test_claim_takes_only_jobs_of_the_claimants_key_id(store: Store) -> None:
    """A node claims jobs signed with its key (by key id) or carrying no key id (written before key ids)."""
    ours, theirs = "a" * 16, "b" * 16
    mine, other, unknown = make(key_id=ours), make(key_id=theirs), make()
    store.insert([mine, other, unknown])
    keyed = dataclasses.replace(CLAIMANT, key_id=ours)
    assert store.waiting_key_ids() == {ours, theirs, ""}
    assert [store.claim(keyed).id, store.claim(keyed).id, store.claim(keyed)] == [mine.id, unknown.id, None]
    waiting = store.has_waiting(key_id=ours), store.has_waiting(key_id=theirs), store.has_waiting()
    assert waiting == (False, True, True)
    assert not store.has_waiting(key_id=theirs, exclude=[other.id])
    assert store.claim(CLAIMANT).id == other.id  # a claimant without a key id takes any job
    assert store.waiting_key_ids() == set()


def test_has_waiting_counts_what_a_claim_could_take_now_or_later(store: Store) -> None:
    store.insert([make(state=s) for s in (State.COMPLETE, State.ERROR, State.INACTIVE, State.KILLED)])
    store.insert([running(), make(kill_requested=True)])
    assert not store.has_waiting()
    store.insert([make(state=State.DEFERRED, query_at=time.time() + 3600)])  # not now, but later
    assert store.has_waiting()


def test_max_parallel_limits_running_jobs_per_name(store: Store) -> None:
    limited = [make("limited", max_parallel=2) for _ in range(5)]
    free = [make("free") for _ in range(2)]
    store.insert(limited + free)
    claimed = []
    while (job := store.claim(CLAIMANT)) is not None:
        claimed.append(job)
    assert Counter(j.name for j in claimed) == {"limited": 2, "free": 2}
    assert [j.id for j in claimed if j.name == "limited"] == [limited[0].id, limited[1].id]
    # A slot frees up: exactly one more of that name becomes claimable.
    assert store.finish(claimed[0].id, claimed[0].lease.token, State.COMPLETE)
    assert store.claim(CLAIMANT).id == limited[2].id
    assert store.claim(CLAIMANT) is None


def test_max_parallel_counts_jobs_running_elsewhere(store: Store) -> None:
    store.insert([running("solo", max_parallel=1), make("solo", max_parallel=1)])
    assert store.claim(CLAIMANT) is None


# -- finish ------------------------------------------------------------------------------------------

def test_finish_with_token_succeeds_once(store: Store) -> None:
    store.insert([make()])
    job = store.claim(CLAIMANT)
    error = JobError("ValueError", "boom", "Traceback ...", exit_code=None)
    before = time.time()
    assert store.finish(job.id, job.lease.token, State.COMPLETE, result=b"42", runtime=0.5, error=error,
                        progress_value=1.0, progress_message="done")
    after = time.time()
    done = store.get(job.id)
    assert done.state is State.COMPLETE
    assert done.lease is None
    assert (done.result, done.runtime, done.error) == (b"42", 0.5, error)
    assert (done.progress_value, done.progress_message) == (1.0, "done")
    assert within(done.finished_at, before, after)
    # Second time: the lease is gone, nothing changes.
    assert not store.finish(job.id, job.lease.token, State.ERROR, result=b"other")
    assert store.get(job.id) == done


def test_finish_with_wrong_token_changes_nothing(store: Store) -> None:
    store.insert([make()])
    job = store.claim(CLAIMANT)
    assert not store.finish(job.id, "not-the-token", State.COMPLETE, result=b"x")
    assert store.get(job.id) == job
    assert not store.finish("ffffffffffffffffffffffff", job.lease.token, State.COMPLETE)


def test_finish_and_claim_records_the_outcome_and_takes_the_next_job(store: Store) -> None:
    first, second = make(), make()
    store.insert([first, second])
    job = store.claim(CLAIMANT)
    done, nxt = store.finish_and_claim(job.id, job.lease.token, State.COMPLETE, CLAIMANT, result=b"42", runtime=0.5)
    assert done
    finished = store.get(first.id)
    assert (finished.state, finished.result, finished.runtime, finished.lease) == (State.COMPLETE, b"42", 0.5, None)
    assert (nxt.id, nxt.state, nxt.trial, nxt.payload) == (second.id, State.RUNNING, 1, second.payload)
    assert (nxt.lease.worker, nxt.lease.node, nxt.lease.pid) == (CLAIMANT.worker, CLAIMANT.node, CLAIMANT.pid)
    assert store.get(second.id) == nxt
    # Nothing left to claim: the outcome is still recorded.
    assert store.finish_and_claim(nxt.id, nxt.lease.token, State.ERROR, CLAIMANT) == (True, None)
    assert store.get(second.id).state is State.ERROR


def test_finish_and_claim_takes_the_max_parallel_slot_it_frees(store: Store) -> None:
    solo = [make("solo", max_parallel=1) for _ in range(2)]
    store.insert(solo)
    job = store.claim(CLAIMANT)
    assert store.claim(CLAIMANT) is None  # the name is at its limit
    done, nxt = store.finish_and_claim(job.id, job.lease.token, State.COMPLETE, CLAIMANT)
    assert done and nxt.id == solo[1].id
    assert store.counts()[State.RUNNING] == 1


def test_finish_and_claim_with_a_lost_lease_still_claims(store: Store) -> None:
    first, second = make(), make()
    store.insert([first, second])
    job = store.claim(CLAIMANT)
    done, nxt = store.finish_and_claim(job.id, "not-the-token", State.COMPLETE, CLAIMANT, result=b"x")
    assert not done and nxt.id == second.id
    assert store.get(first.id) == job


def test_finish_non_final_state_keeps_finished_at_unset(store: Store) -> None:
    store.insert([make(attempts=3)])
    job = store.claim(CLAIMANT)
    retry_at = time.time() + 60
    assert store.finish(job.id, job.lease.token, State.FAILED, query_at=retry_at, attempts_left=2,
                        error=JobError("OSError", "flaky"))
    failed = store.get(job.id)
    assert (failed.state, failed.attempts_left) == (State.FAILED, 2)
    assert within(failed.query_at, retry_at, retry_at)
    assert failed.lease is None and failed.finished_at is None
    assert failed.error == JobError("OSError", "flaky")
    assert store.claim(CLAIMANT) is None  # not before query_at


def test_finish_deferred_then_claimed_again(store: Store) -> None:
    store.insert([make()])
    job = store.claim(CLAIMANT)
    assert store.finish(job.id, job.lease.token, State.DEFERRED, query_at=time.time() - 1,
                        deferred_since=job.started_at)
    again = store.claim(CLAIMANT)
    assert (again.id, again.trial) == (job.id, 2)
    assert within(again.deferred_since, job.started_at, job.started_at)
    assert again.lease.token != job.lease.token


def test_finish_releases_to_pending(store: Store) -> None:
    store.insert([make()])
    job = store.claim(CLAIMANT)
    assert store.finish(job.id, job.lease.token, State.PENDING)
    assert store.get(job.id).state is State.PENDING
    assert store.claim(CLAIMANT).id == job.id


def test_finish_illegal_transition_raises(store: Store) -> None:
    store.insert([make()])
    job = store.claim(CLAIMANT)
    with pytest.raises(IllegalTransition):
        store.finish(job.id, job.lease.token, State.RUNNING)
    assert store.get(job.id) == job


def test_finish_unknown_field_raises_type_error(store: Store) -> None:
    store.insert([make()])
    job = store.claim(CLAIMANT)
    with pytest.raises(TypeError, match="no_such_field"):
        store.finish(job.id, job.lease.token, State.COMPLETE, no_such_field=1)
    assert store.get(job.id) == job


# -- heartbeat / progress / reap -----------------------------------------------------------------

def test_heartbeat_extends_leases_and_reports_lost_ones(store: Store) -> None:
    store.insert([make(), make(), make()])
    a, b, c = (store.claim(CLAIMANT, lease_seconds=5) for _ in range(3))
    assert store.finish(c.id, c.lease.token, State.COMPLETE)
    before = time.time()
    lost = store.heartbeat({a.id: a.lease.token, b.id: "stale-token", c.id: c.lease.token,
                            "ffffffffffffffffffffffff": "x"}, lease_seconds=100)
    after = time.time()
    assert lost == {b.id, c.id, "ffffffffffffffffffffffff"}
    assert within(store.get(a.id).lease.until, before + 100, after + 100)
    assert store.get(b.id).lease == b.lease  # untouched
    assert store.heartbeat({}) == set()


def test_set_progress_needs_the_lease(store: Store) -> None:
    store.insert([make()])
    job = store.claim(CLAIMANT)
    assert store.set_progress(job.id, job.lease.token, 0.25, "a quarter")
    got = store.get(job.id)
    assert (got.progress_value, got.progress_message, got.state) == (0.25, "a quarter", State.RUNNING)
    assert store.set_progress(job.id, job.lease.token, None, "unknown total")
    assert (store.get(job.id).progress_value, store.get(job.id).progress_message) == (None, "unknown total")
    assert not store.set_progress(job.id, "wrong", 0.9, "nope")
    assert store.get(job.id).progress_message == "unknown total"


def test_append_output_streams_a_bounded_tail_under_the_lease(store: Store) -> None:
    store.insert([make(), make()])
    job, idle = store.claim(CLAIMANT), store.get(store.find(states=[State.PENDING])[0].id)
    assert store.append_output(job.id, job.lease.token, "old trial\n")
    assert store.append_output(job.id, job.lease.token, "line 1\n", first=True)  # a new trial starts afresh
    assert store.append_output(job.id, job.lease.token, "line 2\n")
    assert store.outputs([job.id, idle.id, "ffffffffffffffffffffffff"]) == {job.id: "line 1\nline 2\n", idle.id: ""}
    assert not store.append_output(job.id, "wrong", "forged\n")
    assert not store.append_output(idle.id, "", "not running\n")
    assert store.append_output(job.id, job.lease.token, "é" * OUTPUT_LIMIT)  # the tail is kept, never more
    assert store.outputs([job.id])[job.id] == "é" * OUTPUT_LIMIT
    assert store.finish(job.id, job.lease.token, State.COMPLETE, output="final\n")
    assert not store.append_output(job.id, job.lease.token, "late\n")  # a finished job's output is final
    assert store.get(job.id).output == "final\n"


def test_reap_expired_lease_fails_job_with_worker_lost(store: Store) -> None:
    store.insert([make(attempts=3, error_time=60)])
    job = store.claim(CLAIMANT, lease_seconds=0.2)
    time.sleep(0.3)
    before = time.time()
    [reaped] = store.reap()
    after = time.time()
    got = store.get(job.id)
    assert (reaped.id, reaped.state, reaped.attempts_left, reaped.lease, reaped.error) == (
        job.id, got.state, got.attempts_left, None, got.error)
    assert got.state is State.FAILED
    assert (got.attempts_left, got.lost_left, got.lost_on) == (3, 2, "worker w1 on node-a")  # attempts untouched
    assert got.lease is None
    assert got.finished_at is None
    assert got.error.type == "WorkerLost"
    assert "w1" in got.error.message and "node-a" in got.error.message and "4242" in got.error.message
    assert within(got.query_at, before + 60, after + 60)
    assert store.claim(CLAIMANT) is None  # retried only after error_time
    # The old holder is fenced off.
    assert not store.finish(job.id, job.lease.token, State.COMPLETE, result=b"late")
    assert store.heartbeat({job.id: job.lease.token}) == {job.id}
    assert store.reap() == []


def test_reap_without_lost_retries_left_errors_job(store: Store) -> None:
    store.insert([make(attempts=1, lost_retries=0)])
    job = store.claim(CLAIMANT, lease_seconds=0.2)
    time.sleep(0.3)
    before = time.time()
    [reaped] = store.reap()
    got = store.get(job.id)
    assert reaped.id == job.id
    assert (got.state, got.attempts_left, got.lost_left, got.lease) == (State.ERROR, 1, 0, None)
    assert got.error.type == "WorkerLost" and "poison job" in got.error.message
    assert within(got.finished_at, before, time.time())


def test_reaped_job_can_be_claimed_again(store: Store) -> None:
    store.insert([make(attempts=2, error_time=0)])
    job = store.claim(CLAIMANT, lease_seconds=0.2)
    time.sleep(0.3)
    assert [j.id for j in store.reap()] == [job.id]
    again = store.claim(CLAIMANT)
    assert (again.id, again.trial, again.attempts_left, again.lost_left) == (job.id, 2, 2, 2)


def test_reap_leaves_live_leases_alone(store: Store) -> None:
    store.insert([make(), make()])
    live = store.claim(CLAIMANT, lease_seconds=30)
    short = store.claim(CLAIMANT, lease_seconds=0.2)
    time.sleep(0.3)
    assert store.heartbeat({short.id: short.lease.token}, lease_seconds=30) == set()  # rescued in time
    assert store.reap() == []
    assert store.get(live.id) == live
    assert store.get(short.id).state is State.RUNNING


def test_heartbeats_count_and_a_silent_lease_is_reaped_whatever_the_clocks_say(store: Store) -> None:
    """A reaper on another machine judges by heartbeat counts, not by ``lease_until`` (another clock)."""
    store.insert([make(attempts=2), make(), make()])
    live, silent, elsewhere = (store.claim(CLAIMANT, lease_seconds=0.2) for _ in range(3))
    assert {i: (lease.token, lease.beat, lease.period) for i, lease in store.leases().items()} == {
        job.id: (job.lease.token, 0, 0.2) for job in (live, silent, elsewhere)}
    seen = store.leases()
    assert store.heartbeat({live.id: live.lease.token}, lease_seconds=0.2) == set()
    assert store.leases()[live.id].beat == 1
    time.sleep(0.3)  # every lease expired on this clock; the reaper trusts that only for its own host
    assert store.reap(host="another-host") == []
    # The caller saw these counts unchanged for a lease period: `live` has beaten since, `silent` has not.
    [reaped] = store.reap(host="another-host", silent={live.id: seen[live.id], silent.id: seen[silent.id]})
    assert (reaped.id, reaped.state, reaped.lost_left, reaped.error.type) == (silent.id, State.FAILED, 2, "WorkerLost")
    assert "its heartbeat count stood at 0 for over 0.2 s" in reaped.error.message
    assert [j.id for j in store.reap(host=CLAIMANT.node)] == [live.id, elsewhere.id]  # its own host's clock
    assert store.leases() == {}


def test_concurrent_reapers_reap_each_job_once(store: Store, queue_url: str) -> None:
    store.insert([make(attempts=2) for _ in range(8)])
    claimed = [store.claim(CLAIMANT, lease_seconds=0.2) for _ in range(8)]
    time.sleep(0.3)
    results: list[list[str]] = []
    stores = [open_store(queue_url) for _ in range(4)]

    def reap(s: Store) -> None:
        results.append([j.id for j in s.reap()])

    threads = [threading.Thread(target=reap, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in stores:
        s.close()
    reaped = [job_id for ids in results for job_id in ids]
    assert sorted(reaped) == sorted(j.id for j in claimed)
    assert {(store.get(j.id).attempts_left, store.get(j.id).lost_left) for j in claimed} == {(2, 2)}


# -- kill / remove ---------------------------------------------------------------------------------

def test_request_kill_pending_job_kills_it(store: Store) -> None:
    job = make()
    store.insert([job])
    before = time.time()
    assert store.request_kill(job.id) == 1
    got = store.get(job.id)
    assert got.state is State.KILLED
    assert within(got.finished_at, before, time.time())
    assert store.claim(CLAIMANT) is None


def test_request_kill_running_job_flags_it(store: Store) -> None:
    store.insert([make(), make()])
    job = store.claim(CLAIMANT)
    other = store.claim(CLAIMANT)
    assert store.kill_requests([job.id, other.id]) == set()
    assert store.request_kill(job.id) == 1
    got = store.get(job.id)
    assert got.state is State.RUNNING and got.kill_requested and got.lease == job.lease
    assert store.kill_requests([job.id, other.id, "ffffffffffffffffffffffff"]) == {job.id}
    assert store.kill_requests([]) == set()
    # The node acts on it and ends the job killed.
    assert store.finish(job.id, job.lease.token, State.KILLED)
    assert store.get(job.id).state is State.KILLED


def test_kill_requested_job_never_returns_to_waiting(store: Store) -> None:
    """A flagged job would never be claimed again, so leaving running for pending/deferred/failed kills it."""
    store.insert([make(attempts=3) for _ in range(4)])
    jobs = [store.claim(CLAIMANT, lease_seconds=0.2) for _ in range(4)]
    for job in jobs:
        assert store.request_kill(job.id) == 1
    assert store.finish(jobs[0].id, jobs[0].lease.token, State.DEFERRED, query_at=0.0)
    assert store.finish(jobs[1].id, jobs[1].lease.token, State.FAILED, attempts_left=2)
    assert store.finish(jobs[2].id, jobs[2].lease.token, State.PENDING)
    time.sleep(0.3)
    assert [j.id for j in store.reap()] == [jobs[3].id]
    for job in jobs:
        got = store.get(job.id)
        assert got.state is State.KILLED and got.finished_at is not None and got.lease is None


def test_request_kill_subtree(store: Store, tree: dict[str, Job]) -> None:
    assert store.request_kill(tree["c1"].id) == 2  # c1 flagged, g1 killed; g2 is already final
    assert states(store, tree) == {"root": State.PENDING, "c1": State.RUNNING, "c2": State.PENDING,
                                   "g1": State.KILLED, "g2": State.COMPLETE, "other": State.PENDING}
    assert store.kill_requests([tree["c1"].id]) == {tree["c1"].id}


def test_request_kill_root_kills_whole_tree(store: Store, tree: dict[str, Job]) -> None:
    assert store.request_kill(tree["root"].id) == 4  # root, c2, g1 killed; c1 flagged
    assert states(store, tree) == {"root": State.KILLED, "c1": State.RUNNING, "c2": State.KILLED,
                                   "g1": State.KILLED, "g2": State.COMPLETE, "other": State.PENDING}
    assert store.get(tree["c1"].id).kill_requested
    assert store.counts(root_id=tree["root"].id) == zero_counts(killed=3, running=1, complete=1)


def test_request_kill_without_tree(store: Store, tree: dict[str, Job]) -> None:
    assert store.request_kill(tree["root"].id, tree=False) == 1
    assert states(store, tree) == {"root": State.KILLED, "c1": State.RUNNING, "c2": State.PENDING,
                                   "g1": State.PENDING, "g2": State.COMPLETE, "other": State.PENDING}
    assert store.kill_requests([tree["c1"].id]) == set()


def test_request_kill_final_job_counts_nothing(store: Store, tree: dict[str, Job]) -> None:
    assert store.request_kill(tree["g2"].id) == 0
    assert store.get(tree["g2"].id).state is State.COMPLETE


def test_request_kill_unknown_id_raises(store: Store) -> None:
    with pytest.raises(JobNotFound):
        store.request_kill("ffffffffffffffffffffffff")


def test_remove_job_and_subtree(store: Store, tree: dict[str, Job]) -> None:
    assert store.remove(tree["c1"].id) == 3
    for key in ("c1", "g1", "g2"):
        with pytest.raises(JobNotFound):
            store.get(tree[key].id)
    assert {j.id for j in store.find()} == {tree[k].id for k in ("root", "c2", "other")}
    assert store.remove(tree["root"].id) == 2
    assert [j.id for j in store.find()] == [tree["other"].id]
    with pytest.raises(JobNotFound):
        store.remove(tree["root"].id)


# -- worker nodes ----------------------------------------------------------------------------------

def test_workers_save_list_remove(store: Store) -> None:
    assert store.workers() == []
    b = WorkerInfo(name="node-b", host="hb", pid=2, slots=8, heartbeat=100.5, started_at=90.25,
                   running=["j1", "j2"], state="running")
    a = WorkerInfo(name="node-a", host="ha", pid=1, slots=4, heartbeat=101.5, started_at=91.25)
    store.save_worker(b)
    store.save_worker(a)
    assert store.workers() == [a, b]
    b2 = dataclasses.replace(b, heartbeat=200.0, running=[], state="draining")
    store.save_worker(b2)
    assert store.workers() == [a, b2]
    store.remove_worker("node-a")
    assert store.workers() == [b2]
    store.remove_worker("node-a")  # forgetting twice is harmless
    assert store.workers() == [b2]


# -- stores share one queue ------------------------------------------------------------------------

def test_two_stores_on_one_url_see_each_other(store: Store, queue_url: str) -> None:
    with open_store(queue_url) as other:
        job = make()
        store.insert([job])
        claimed = other.claim(CLAIMANT)
        assert claimed.id == job.id
        assert store.get(job.id).state is State.RUNNING
        assert store.finish(job.id, claimed.lease.token, State.COMPLETE)
        assert other.get(job.id).state is State.COMPLETE


def test_threads_share_one_store(store: Store) -> None:
    store.insert([make() for _ in range(40)])
    claimed: list[str] = []

    def work() -> None:
        while (job := store.claim(CLAIMANT)) is not None:
            claimed.append(job.id)
            assert store.finish(job.id, job.lease.token, State.COMPLETE)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(claimed) == len(set(claimed)) == 40
    assert store.counts()[State.COMPLETE] == 40


# -- racing processes --------------------------------------------------------------------------------

def _reap_children(procs: list) -> None:
    """No child process outlives its test."""
    for p in procs:
        p.join(timeout=60)
        if p.is_alive():
            p.kill()
            p.join()


def _claim_until_empty(url: str, worker: str, barrier, out) -> None:
    """Child process: claim (and complete) until the queue is empty; report the ids."""
    try:
        with open_store(url) as store:
            barrier.wait(timeout=120)
            ids = []
            while (job := store.claim(Claimant(worker, "race-node", os.getpid()))) is not None:
                if not store.finish(job.id, job.lease.token, State.COMPLETE, result=worker.encode()):
                    raise AssertionError(f"{worker} lost the lease of {job.id} it had just claimed")
                ids.append(job.id)
            out.put((worker, ids, None))
    except BaseException as exc:  # report, or the parent waits forever
        out.put((worker, [], repr(exc)))


def test_racing_processes_claim_every_job_exactly_once(queue_url: str) -> None:
    n_jobs = 200 if queue_url.startswith("sqlite") else 60
    ctx = multiprocessing.get_context("spawn")
    with open_store(queue_url) as store:
        jobs = [make("race") for _ in range(n_jobs)]
        store.insert(jobs)
        barrier, out = ctx.Barrier(5), ctx.Queue()
        procs = [ctx.Process(target=_claim_until_empty, args=(queue_url, f"racer-{i}", barrier, out))
                 for i in range(4)]
        for p in procs:
            p.start()
        try:
            barrier.wait(timeout=120)
            start = time.perf_counter()
            results = [out.get(timeout=240) for _ in procs]
            elapsed = time.perf_counter() - start
        except BaseException:
            barrier.abort()  # release children still waiting for a parent that failed
            raise
        finally:
            _reap_children(procs)
        assert [err for _, _, err in results if err] == []
        claimed = [job_id for _, ids, _ in results for job_id in ids]
        assert len(claimed) == len(set(claimed)) == n_jobs
        assert set(claimed) == {j.id for j in jobs}
        assert store.counts() == zero_counts(complete=n_jobs)
        done = {j.id: j.result.decode() for j in store.find(blobs=True)}
        assert all(done[job_id] == worker for worker, ids, _ in results for job_id in ids)
        print(f"\n{queue_url.split(':')[0]}: {n_jobs / elapsed:.0f} claim+finish/s with 4 processes")


def _claim_rounds(url: str, worker: str, rounds: int, start, done, out) -> None:
    """Child process: each round, claim once at the same moment as the others and hold the job."""
    try:
        with open_store(url) as store:
            for _ in range(rounds):
                start.wait(timeout=120)
                job = store.claim(Claimant(worker, "race-node", os.getpid()))
                out.put((worker, job.id if job else None, None))
                done.wait(timeout=120)
    except BaseException as exc:
        out.put((worker, None, repr(exc)))


def test_max_parallel_holds_under_racing_processes(queue_url: str) -> None:
    rounds = 5
    ctx = multiprocessing.get_context("spawn")
    with open_store(queue_url) as store:
        jobs = [make("solo", max_parallel=1) for _ in range(rounds + 1)]
        store.insert(jobs)
        start, done, out = ctx.Barrier(5), ctx.Barrier(5), ctx.Queue()
        procs = [ctx.Process(target=_claim_rounds, args=(queue_url, f"racer-{i}", rounds, start, done, out))
                 for i in range(4)]
        for p in procs:
            p.start()
        try:
            for r in range(rounds):
                start.wait(timeout=120)
                results = [out.get(timeout=120) for _ in procs]
                assert [err for _, _, err in results if err] == []
                winners = [job_id for _, job_id, _ in results if job_id]
                assert len(winners) == 1, f"round {r}: {len(winners)} solo jobs claimed at once"
                assert store.counts()[State.RUNNING] == 1
                [held] = store.find(states=[State.RUNNING])
                assert held.id == winners[0] == jobs[r].id
                assert store.finish(held.id, held.lease.token, State.COMPLETE)
                done.wait(timeout=120)
        except BaseException:
            start.abort()  # a failed round releases the children instead of leaving them at a barrier
            done.abort()
            raise
        finally:
            _reap_children(procs)
        assert store.counts() == zero_counts(complete=rounds, pending=1)


# -- opening stores --------------------------------------------------------------------------------

def test_open_store_rejects_bad_urls() -> None:
    with pytest.raises(ConfigError, match="not a URL"):
        open_store("/just/a/path.db")
    with pytest.raises(ConfigError, match="unknown scheme 'redis'"):
        open_store("redis://localhost/0")


def test_sqlite_queue_file_of_an_earlier_version_gains_the_new_columns(tmp_path) -> None:
    """A queue file written by 0.1 (no ``output`` column): opening it adds the column, its jobs still read
    and run, and an outcome's output is stored."""
    import sqlite3

    from core4nb.store import sqlite_sql

    path = tmp_path / "old.db"
    old_columns = {c: t for c, t in sqlite_sql.COLUMNS.items() if c != "output"}
    with sqlite3.connect(path) as conn:
        conn.execute(f"CREATE TABLE queue ({', '.join(f'{c} {t}' for c, t in old_columns.items())})")
    job = make()
    with sqlite3.connect(path) as conn:  # the row as 0.1 wrote it
        row = {**{c: getattr(job, c) for c in old_columns if hasattr(job, c)}, "state": "pending",
               "kill_requested": 0, "error": None}
        conn.execute(f"INSERT INTO queue ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})", list(row.values()))
    with open_store(f"sqlite://{path}") as store:
        assert store.get(job.id).output == ""
        claimed = store.claim(CLAIMANT)
        assert claimed.id == job.id
        assert store.finish(claimed.id, claimed.lease.token, State.COMPLETE, output="done\n")
        assert store.get(job.id).output == "done\n"


def test_sqlite_store_creates_missing_directories(tmp_path) -> None:
    path = tmp_path / "a" / "b" / "queue.db"
    with open_store(f"sqlite://{path}") as store:
        store.insert([make()])
    assert path.exists()


def test_sqlite_store_unusable_path_names_it(tmp_path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StoreUnavailable, match=str(blocker)):
        open_store(f"sqlite://{blocker}/queue.db")
    with pytest.raises(ConfigError, match=str(tmp_path)):
        open_store(f"sqlite://{tmp_path}")
    with pytest.raises(ConfigError):
        open_store("sqlite://")


def test_claim_many_takes_the_best_jobs_until_none_is_due(store: Store) -> None:
    jobs = [make(priority=p) for p in (0, 5, 1)] + [make(query_at=time.time() + 60, priority=9)]
    store.insert(jobs)
    first = store.claim_many(CLAIMANT, 2, lease_seconds=30)
    assert [j.id for j in first] == [jobs[1].id, jobs[2].id]
    assert all(j.state is State.RUNNING and j.trial == 1 for j in first)
    assert first[0].lease.token != first[1].lease.token
    assert [j.id for j in store.claim_many(CLAIMANT, 5)] == [jobs[0].id]  # the one left due; the later one waits
    assert store.claim_many(CLAIMANT, 3) == [] and store.get(jobs[3].id).state is State.PENDING


def test_claim_many_keeps_max_parallel(store: Store) -> None:
    limited = [make("limited", max_parallel=1) for _ in range(3)]
    store.insert(limited)
    assert [j.id for j in store.claim_many(CLAIMANT, 3)] == [limited[0].id]
