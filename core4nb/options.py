"""Job options: their names, defaults, types and ranges, in one place (README, "Use it": job options).

A job's options come in layers — a :class:`~core4nb.Core4Job` class's attributes, an
executor's defaults, ``ex.options(...)`` views, ``options=`` of one ``enqueue`` — and each
layer is a mapping of *changes* that :meth:`JobOptions.check` validates when it is given,
so a bad value fails at the line that wrote it, not at the first submit. Options never
travel in a call's own keyword arguments: ``fn`` may have a parameter called ``priority``.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from core4nb.errors import ConfigError

#: Default of the ``lost_retries`` job option: reruns after the job's node died.
DEFAULT_LOST_RETRIES = 3


@dataclass(frozen=True)
class JobOptions:
    """The options of one job, with core4os's meanings; invalid values raise :class:`ConfigError`.

    Attributes:
        priority: higher is claimed first.
        max_parallel: at most this many jobs of this name run at once, cluster-wide (None: no limit).
        attempts: runs allowed in total before an exception is final.
        defer_time: seconds between a ``defer`` and the next trial.
        defer_max: seconds of deferring after which the job becomes inactive (None: no limit).
        error_time: seconds between a failed attempt and the next.
        wall_time: seconds a trial may run before it is stopped, a failed attempt (None: no limit).
        lost_retries: reruns after the node running the job died (apart from ``attempts``).
        keep: pin the job's tree: retention never prunes it.
    """

    priority: int = 0
    max_parallel: int | None = None
    attempts: int = 1
    defer_time: float = 1.0
    defer_max: float | None = None
    error_time: float = 1.0
    wall_time: float | None = None
    lost_retries: int = DEFAULT_LOST_RETRIES
    keep: bool = False

    def __post_init__(self) -> None:
        for name, (kind, low, optional) in _RULES.items():
            _check_value(name, getattr(self, name), kind, low, optional)

    @classmethod
    def check(cls, changes: Mapping[str, Any]) -> dict[str, Any]:
        """``changes`` as a plain dict once every name and value in it is valid.

        Raises:
            TypeError: not a mapping, or an unknown option name (the valid ones listed).
            ConfigError: a value of the wrong type or out of range.
        """
        if not isinstance(changes, Mapping):  # a whole JobOptions would silently undo a Core4Job's attributes
            raise TypeError(f"job options are a dict of the ones to change, e.g. options={{'priority': 5}}; "
                            f"got {changes!r}")
        unknown = sorted(set(changes) - set(OPTION_NAMES))
        if unknown:
            raise TypeError(f"unknown job option(s) {', '.join(unknown)}; valid: {', '.join(OPTION_NAMES)}")
        cls(**changes)
        return dict(changes)

    def updated(self, changes: Mapping[str, Any]) -> JobOptions:
        """These options with ``changes`` on top (validated as :meth:`check` does)."""
        return dataclasses.replace(self, **self.check(changes)) if changes else self

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in OPTION_NAMES}  # flat values: asdict's deep copies cost


#: name → (type, lowest allowed value or None, whether None is allowed); bool is not an int here.
_RULES: dict[str, tuple[type, float | None, bool]] = {
    "priority": (int, None, False),
    "max_parallel": (int, 1, True),
    "attempts": (int, 1, False),
    "defer_time": (float, 0, False),
    "defer_max": (float, 0, True),
    "error_time": (float, 0, False),
    "wall_time": (float, 0, True),
    "lost_retries": (int, 0, False),
    "keep": (bool, None, False),
}

_LOWEST = tuple((name, low) for name, (_, low, _) in _RULES.items() if low is not None)  # read per decoded job

OPTION_NAMES = tuple(field.name for field in dataclasses.fields(JobOptions))


def _check_value(name: str, value: Any, kind: type, low: float | None, optional: bool) -> None:
    if value is None and optional:
        return
    numeric = (int, float) if kind is float else (int,)
    fits = isinstance(value, bool) if kind is bool else isinstance(value, numeric) and not isinstance(value, bool)
    expected = {int: "an integer", float: "a number", bool: "True or False"}[kind]
    bound = f" >= {low}" if low is not None else ""
    if not fits or (low is not None and value < low):
        none = " or None" if optional else ""
        raise ConfigError(f"bad job option {name}={value!r}: must be {expected}{bound}{none}")


DEFAULTS = JobOptions()


def below_range(values: Mapping[str, Any]) -> str | None:
    """The first option among ``values`` (of the right types already: a job read back from a store) that is
    below its lowest allowed value, as ``"attempts=0, expected >= 1"``; None when every one is in range."""
    for name, low in _LOWEST:
        value = values.get(name)
        if value is not None and value < low:
            return f"{name}={value!r}, expected >= {low}"
    return None


def reject_misplaced_options(fn: Callable, kwargs: Mapping[str, Any], call: str) -> None:
    """Raise TypeError for a keyword argument that is a job option ``fn`` does not take.

    Before 0.2, ``enqueue(fn, priority=1)`` set the job option; now every keyword goes to
    ``fn``, so a ``priority`` that ``fn`` cannot accept is almost surely that old spelling.
    """
    for name in kwargs:
        if name in OPTION_NAMES and not _accepts(fn, name):
            raise TypeError(f"{name}= is a job option, not an argument of {getattr(fn, '__name__', fn)!r}: "
                            f"give it as {call}(fn, …, options={{{name!r}: {kwargs[name]!r}}})")


def _accepts(fn: Callable, name: str) -> bool:
    target = getattr(fn, "execute", fn) if inspect.isclass(fn) else fn  # a Core4Job class takes execute's
    try:
        parameters = inspect.signature(target).parameters.values()
    except (TypeError, ValueError):  # no signature to read (some builtins): let the call decide
        return True
    return any(p.kind == p.VAR_KEYWORD or (p.name == name and p.kind != p.POSITIONAL_ONLY) for p in parameters)
