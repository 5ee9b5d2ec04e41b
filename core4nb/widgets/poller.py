"""The data loop: one background thread per view, one snapshot per tick.

The thread only reads the queue (through its own store, never the executor's)
and hands each snapshot to its view; it stops by itself once the tree is
final, or when the view is closed. Views draw, they never poll.
"""

from __future__ import annotations

import threading
from typing import Protocol

from core4nb.errors import ConfigError, StoreUnavailable
from core4nb.store import Store, open_store
from core4nb.widgets.snapshot import TreeSnapshot, take_snapshot

#: Seconds between polls: the default, and the floor (each poll is a few store queries;
#: many notebooks watching one cluster must not hammer its database).
MIN_INTERVAL = 0.5


class View(Protocol):
    """What a poller draws on."""

    def update(self, snapshot: TreeSnapshot) -> None: ...

    def show_error(self, message: str) -> None: ...


class Poller:
    """Polls one tree every ``interval`` seconds on a daemon thread and draws on ``view``.

    Args:
        url: the queue URL; the poller opens (and closes) its own store.
        root_id: the job whose tree is watched.
        view: receives every snapshot (and polling errors).
        interval: seconds between polls, at least :data:`MIN_INTERVAL`.

    Raises:
        ConfigError: ``interval`` is below the floor, or the URL is malformed.
    """

    def __init__(self, url: str, root_id: str, view: View, *, interval: float = MIN_INTERVAL) -> None:
        if not interval >= MIN_INTERVAL:
            raise ConfigError(f"progress interval must be at least {MIN_INTERVAL} s, got {interval!r}: "
                              f"each refresh queries the queue")
        self.url = url
        self.root_id = root_id
        self.view = view
        self.interval = float(interval)
        self.snapshot: TreeSnapshot | None = None
        self._store: Store | None = open_store(url)
        # One lock orders polls from the thread and from refresh(), so a view never
        # draws an older snapshot after a newer one, and the store is not closed mid-poll.
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"core4nb-progress-{root_id}", daemon=True)

    @property
    def is_alive(self) -> bool:
        """The polling thread is running."""
        return self._thread.is_alive()

    def poll(self) -> TreeSnapshot | None:
        """Take one snapshot now and draw it; after :meth:`stop`, the last snapshot.

        Raises:
            JobNotFound: the job does not exist (or was removed).
            StoreUnavailable: the queue cannot be reached.
        """
        with self._lock:
            if self._store is None:
                return self.snapshot
            self.snapshot = take_snapshot(self._store, self.root_id)
            self.view.update(self.snapshot)
            return self.snapshot

    def start(self) -> None:
        """Start polling in the background (not at all if the tree is already final)."""
        if self.snapshot is not None and self.snapshot.is_final:
            self._close_store()
            return
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop polling and wait (up to ``timeout`` s) for the thread; the view keeps its last snapshot."""
        self._stop.set()
        # Waiting makes close() final: no thread or store outlives it. The thread itself
        # (a view calling close() from update()) must not wait for itself.
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)
        if not self._thread.is_alive():
            self._close_store()

    def join(self, timeout: float | None = None) -> bool:
        """Wait until polling ended; True when it has."""
        if self._thread.ident is not None:
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        try:
            while not self._stop.wait(self.interval):
                try:
                    snapshot = self.poll()
                except StoreUnavailable as exc:
                    self._show_error(str(exc))  # the queue may come back: keep polling, keep the last snapshot
                    continue
                except Exception as exc:
                    # A dying daemon thread would print its traceback into whichever cell
                    # runs next; the view shows why it stopped instead.
                    self._show_error(f"progress stopped: {type(exc).__name__}: {exc}")
                    break
                if snapshot is None or snapshot.is_final:
                    break
        finally:
            self._close_store()

    def _show_error(self, message: str) -> None:
        with self._lock:
            self.view.show_error(message)

    def _close_store(self) -> None:
        with self._lock:
            if self._store is not None:
                self._store.close()
                self._store = None


class Polled:
    """What a view offers once a :class:`Poller` feeds it: refresh, wait, close."""

    poller: Poller | None = None
    snapshot: TreeSnapshot | None = None

    def refresh(self) -> TreeSnapshot | None:
        """Poll once now, outside the tick, and draw the result."""
        return self.poller.poll() if self.poller is not None else self.snapshot

    def wait(self, timeout: float | None = None) -> TreeSnapshot | None:
        """Block until polling ended (the tree is final, or the view was closed).

        Raises:
            TimeoutError: still polling after ``timeout`` seconds.
        """
        if self.poller is not None and not self.poller.join(timeout):
            raise TimeoutError(f"job tree {self.poller.root_id} still running after {timeout} s")
        return self.snapshot

    def close(self) -> None:
        """Stop polling; the view stays on screen with its last snapshot."""
        if self.poller is not None:
            self.poller.stop()

    @property
    def is_polling(self) -> bool:
        """A poller thread is still refreshing this view."""
        return self.poller is not None and self.poller.is_alive
