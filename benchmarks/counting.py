"""Count store round trips: every public Store verb, wrapped at the class level.

Wrapping the class (not an instance) counts every store this process opens —
the client's and an in-process worker node's alike. For MongoDB the wire
commands are counted too, by a pymongo command listener, since one verb may
take several commands.
"""

from __future__ import annotations

import functools
import inspect
import os
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class CallCounter:
    """Calls per verb (``claim`` that found nothing counts as ``claim:empty``)."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self._lock = threading.Lock()

    def add(self, verb: str) -> None:
        with self._lock:
            self.calls[verb] += 1

    def snapshot(self) -> Counter[str]:
        with self._lock:
            return Counter(self.calls)


def store_verbs(cls: type) -> list[str]:
    """Public methods of a store class (the base's verbs and any the backend adds)."""
    return sorted(name for name in dir(cls)
                  if not name.startswith("_") and inspect.isfunction(inspect.getattr_static(cls, name)))


@contextmanager
def counting(cls: type, counter: CallCounter, *, owner: bool = False) -> Iterator[CallCounter]:
    """Wrap every verb of ``cls`` while the block runs; restore the class afterwards.

    With ``owner`` the keys are ``"<id of the store>/<verb>"``.
    """
    originals: dict[str, Any] = {name: cls.__dict__.get(name) for name in store_verbs(cls)}
    calling = threading.local()  # the verbs called by the verb running in this thread, if one is

    def wrap(name: str, method: Any) -> Any:
        @functools.wraps(method)
        def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
            outer = getattr(calling, "verbs", None)
            if outer is not None:
                outer.append(name)
            calling.verbs = inner = []
            try:
                result = method(self, *args, **kwargs)
            finally:
                calling.verbs = outer
            if not inner:  # a verb built of other verbs (finish_and_claim on MongoDB) counts as those
                verb = f"{name}:empty" if name == "claim" and result is None else name
                counter.add(f"{id(self)}/{verb}" if owner else verb)
            return result
        return counted

    for name in originals:
        setattr(cls, name, wrap(name, getattr(cls, name)))
    try:
        yield counter
    finally:
        for name, original in originals.items():
            if original is None:
                delattr(cls, name)
            else:
                setattr(cls, name, original)


class WireCommands:
    """pymongo command listener: commands sent per name, while ``active``."""

    _installed: WireCommands | None = None

    def __init__(self) -> None:
        self.counter = CallCounter()
        self.active = False

    @classmethod
    def install(cls) -> WireCommands:
        """The process-wide listener (pymongo applies it to clients created afterwards)."""
        if cls._installed is None:
            from pymongo import monitoring

            listener = cls()

            class Listener(monitoring.CommandListener):
                def started(self, event: monitoring.CommandStartedEvent) -> None:
                    if listener.active:
                        listener.counter.add(event.command_name)

                def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
                    pass

                def failed(self, event: monitoring.CommandFailedEvent) -> None:
                    pass

            monitoring.register(Listener())
            cls._installed = listener
        return cls._installed


_KEEP: list[Any] = []


def install_subclass_hook(directory: str) -> None:
    """Wrap the verbs of every Store subclass defined from now on, and count pymongo's commands
    (as ``wire:NAME``); log each call to ``directory``."""
    from core4nb.store.base import Store

    path = os.path.join(directory, f"{os.getpid()}.calls")

    class FileCounter(CallCounter):
        def add(self, verb: str) -> None:
            nonlocal path
            if not path.endswith(f"/{os.getpid()}.calls"):  # a forked child writes its own file
                path = os.path.join(directory, f"{os.getpid()}.calls")
            with open(path, "a") as fh:
                fh.write(verb + "\n")

    counter = FileCounter()
    previous = Store.__dict__.get("__init_subclass__")

    def init_subclass(cls: type, **kwargs: Any) -> None:
        if previous is not None:
            previous.__func__(cls, **kwargs)
        else:
            super(Store, cls).__init_subclass__(**kwargs)
        wrapped = counting(cls, counter)
        wrapped.__enter__()  # for the life of the process: kept, since closing it would unwrap
        _KEEP.append(wrapped)

    Store.__init_subclass__ = classmethod(init_subclass)
    try:
        from pymongo import monitoring
    except ImportError:
        return

    class Listener(monitoring.CommandListener):
        def started(self, event: monitoring.CommandStartedEvent) -> None:
            counter.add(f"wire:{event.command_name}")

        def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
            pass

        def failed(self, event: monitoring.CommandFailedEvent) -> None:
            pass

    monitoring.register(Listener())


def read_call_files(directory: str, *, consume: bool = True) -> Counter[str]:
    """Calls logged by hooked processes (see :func:`install_subclass_hook`)."""
    total: Counter[str] = Counter()
    for name in os.listdir(directory):
        if name.endswith(".calls"):
            file = os.path.join(directory, name)
            with open(file) as fh:
                total.update(line.strip() for line in fh if line.strip())
            if consume:
                os.remove(file)
    return total
