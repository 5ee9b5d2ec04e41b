"""Job options: one validated :class:`JobOptions`, given apart from the function's own keywords."""

from __future__ import annotations

import dataclasses

import pytest

from core4nb import Core4Executor, Core4Job, Queue, State, enqueue
from core4nb.errors import ConfigError
from core4nb.options import DEFAULTS, OPTION_NAMES, JobOptions
from tests import jobfuncs
from tests.nodes import PATIENCE


def test_defaults_are_core4os_and_the_job_record_shares_them():
    assert DEFAULTS.as_dict() == {"priority": 0, "max_parallel": None, "attempts": 1, "defer_time": 1.0,
                                  "defer_max": None, "error_time": 1.0, "wall_time": None, "lost_retries": 3,
                                  "keep": False}
    assert tuple(DEFAULTS.as_dict()) == OPTION_NAMES
    assert Core4Job.job_options() == DEFAULTS
    with pytest.raises(dataclasses.FrozenInstanceError):
        DEFAULTS.priority = 1  # type: ignore[misc]


@pytest.mark.parametrize(("changes", "message"), [
    ({"attempts": 0}, "bad job option attempts=0: must be an integer >= 1"),
    ({"max_parallel": 0}, "bad job option max_parallel=0: must be an integer >= 1 or None"),
    ({"lost_retries": -1}, "bad job option lost_retries=-1: must be an integer >= 0"),
    ({"priority": 1.5}, "bad job option priority=1.5: must be an integer"),
    ({"priority": None}, "bad job option priority=None: must be an integer"),
    ({"defer_time": -1}, "bad job option defer_time=-1: must be a number >= 0"),
    ({"wall_time": "10"}, "bad job option wall_time='10': must be a number >= 0 or None"),
    ({"attempts": True}, "bad job option attempts=True: must be an integer >= 1"),
    ({"keep": 1}, "bad job option keep=1: must be True or False"),
])
def test_a_bad_value_is_a_config_error_naming_the_option(changes, message):
    with pytest.raises(ConfigError) as info:
        JobOptions.check(changes)
    assert str(info.value) == message


def test_an_unknown_name_is_a_type_error_listing_the_valid_ones():
    with pytest.raises(TypeError) as info:
        JobOptions.check({"prio": 1})
    assert str(info.value) == f"unknown job option(s) prio; valid: {', '.join(OPTION_NAMES)}"


def test_options_given_whole_are_a_type_error_showing_the_dict_spelling():
    with pytest.raises(TypeError) as info:
        JobOptions.check(JobOptions(priority=1))  # type: ignore[arg-type]
    assert str(info.value).startswith("job options are a dict of the ones to change, e.g. options={'priority': 5}; "
                                      "got JobOptions(priority=1, ")


def test_updated_layers_changes_over_the_base():
    base = JobOptions(priority=3, attempts=2)
    assert base.updated({"priority": 5, "wall_time": 2}) == JobOptions(priority=5, attempts=2, wall_time=2)
    assert base.updated({}) == base


def test_a_core4job_with_a_bad_class_attribute_fails_at_enqueue(sqlite_url):
    class Hasty(Core4Job):
        attempts = 0

        def execute(self) -> int:
            return 1

    with Queue(sqlite_url) as q:
        with pytest.raises(ConfigError, match=r"^bad job option attempts=0: must be an integer >= 1$"):
            q.enqueue(Hasty)
        assert sum(q.counts().values()) == 0


@pytest.fixture
def ex(queue_url):
    executor = Core4Executor(queue_url, workers=1)
    yield executor
    executor.shutdown(cancel_futures=True)


def test_a_parameter_named_priority_reaches_the_function_on_every_path(ex):
    """``priority=`` is ``fn``'s argument on submit and both enqueues; the option goes in ``options``."""
    q = Queue(store=ex.store)
    by_queue = q.enqueue(jobfuncs.ranked, "queue", priority=7, options={"priority": 2})
    by_submit = ex.options(priority=4).submit(jobfuncs.ranked, "submit", priority=8)
    by_enqueue = enqueue(jobfuncs.ranked, "enqueue", url=ex.url, priority=9, options={"priority": 1})
    assert q.result(by_queue, timeout=PATIENCE) == ("queue", 7)
    assert by_submit.result(timeout=PATIENCE) == ("submit", 8)
    assert by_enqueue.result(timeout=PATIENCE) == ("enqueue", 9)
    assert [q.get(job_id).priority for job_id in (by_queue, by_submit.job_id, by_enqueue.id)] == [2, 4, 1]


def test_the_old_spelling_is_a_type_error_naming_the_new_one(ex):
    q = Queue(store=ex.store)
    with pytest.raises(TypeError) as info:
        q.enqueue(jobfuncs.add, 1, 2, priority=5)
    assert str(info.value) == ("priority= is a job option, not an argument of 'add': "
                               "give it as enqueue(fn, …, options={'priority': 5})")
    with pytest.raises(TypeError, match=r"^attempts= is a job option, not an argument of 'add': .*'attempts': 3"):
        enqueue(jobfuncs.add, 1, 2, url=ex.url, attempts=3)
    with pytest.raises(TypeError, match=r"^unknown job option\(s\) bogus; valid: priority, "):
        q.enqueue(jobfuncs.add, 1, 2, options={"bogus": 1})
    assert sum(q.counts().values()) == 0


def test_restart_keeps_every_option(ex):
    q = Queue(store=ex.store)
    chosen = {"priority": 3, "attempts": 2, "error_time": 0.2, "wall_time": 60.0, "lost_retries": 1, "keep": True}
    first = q.enqueue(jobfuncs.add, 1, 2, options=chosen)
    assert q.result(first, timeout=PATIENCE) == 3
    again = q.restart(first)
    assert q.result(again, timeout=PATIENCE) == 3
    restarted = q.get(again)
    assert {name: getattr(restarted, name) for name in OPTION_NAMES} == DEFAULTS.updated(chosen).as_dict()
    assert restarted.restarted_from == first and restarted.state == State.COMPLETE
