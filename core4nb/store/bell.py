"""Doorbells: wake the processes on one machine that share a queue instead of polling it.

Worker nodes and executors on one machine each listen on a Unix datagram socket
in a directory that belongs to the queue (its file, or its database). A store
rings ``work`` bells when it inserts jobs (and, through :func:`ring_after`, when a
job is handed back or a job of a ``max_parallel`` name frees its slot) and ``done``
bells when a job finishes, so a node claims
new work and an executor completes a future within a millisecond, while an idle
process polls only rarely. A ring is a hint, never the truth: the listener
always re-reads the store, so a lost datagram costs one poll interval, nothing
more. A MongoDB queue rings the same way for the processes of one machine;
writers on other machines do not ring, so its listeners keep polling too.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import secrets
import socket
from collections.abc import Iterable
from pathlib import Path

from core4nb.job import State
from core4nb.store import paths

log = logging.getLogger("core4nb.store")

ROLES = ("work", "done")


def bell_dir(queue: Path | str) -> Path:
    """The bells of one queue (a SQLite file's path, or a database's redacted URL): short (Unix
    socket paths are limited to ~107 bytes), private to this user, the same for every process
    of this user on this machine that opens the queue: under ``$XDG_RUNTIME_DIR``, else under
    core4nb's home (``~/.core4nb``) -- never in a shared directory like /tmp, where another user
    could make the directory first."""
    identity = str(queue.resolve()) if isinstance(queue, Path) else queue
    digest = hashlib.sha256(identity.encode()).hexdigest()[:16]
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    return (Path(runtime) / "core4nb-bells" if runtime else paths.home() / "bells") / digest


def _is_trusted(directory: Path) -> bool:
    """Bells live only in a directory this user owns and no one else may enter (and so does its parent)."""
    return paths.is_private_dir(directory.parent) and paths.is_private_dir(directory)


def listen(directory: Path, role: str, *, hears_everyone: bool = True) -> Bell | None:
    """A bell in ``directory``, or None when that directory cannot be trusted or made (then listeners poll)."""
    try:
        paths.make_private_dirs(directory)
        if _is_trusted(directory):
            return Bell(directory, role, hears_everyone=hears_everyone)
        log.warning("doorbell directory %s is not private to this user (owner or mode): polling the queue "
                    "instead; remove it, or set XDG_RUNTIME_DIR to a private directory", directory)
    except OSError as exc:  # e.g. a socket path over the ~107-byte limit: polling is all that is lost
        log.debug("no doorbell in %s (%s): polling the queue instead", directory, exc)
    return None


class Bell:
    """One listening socket; ``fileno()`` turns readable when someone rings.

    ``hears_everyone``: every writer of the queue rings it (a SQLite file: all its writers are
    on this machine), so a listener need not poll for what rings. False for a database other
    machines write to: only this machine's writers ring, and listeners keep polling.
    """

    def __init__(self, directory: Path, role: str, *, hears_everyone: bool = True) -> None:
        if role not in ROLES:
            raise ValueError(f"bell role must be one of {ROLES}, got {role!r}")
        self.hears_everyone = hears_everyone
        self.path = directory / f"{role}-{os.getpid()}-{secrets.token_hex(3)}.sock"
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        for attempt in range(3):  # the last listener's close() may remove the directory in between
            paths.make_private_dirs(directory)
            try:
                self._sock.bind(str(self.path))
                break
            except FileNotFoundError:
                if attempt == 2:
                    raise
        self._sock.setblocking(False)

    def fileno(self) -> int:
        return self._sock.fileno()

    def drain(self) -> None:
        """Swallow the rings received so far (many rings, one wake-up)."""
        with contextlib.suppress(BlockingIOError, OSError):
            while self._sock.recv(64):
                pass

    def wait(self, timeout: float | None) -> bool:
        """Block until a ring or ``timeout``; True when rung."""
        import select

        ready, _, _ = select.select([self._sock], [], [], timeout)
        self.drain()
        return bool(ready)

    def close(self) -> None:
        self._sock.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        with contextlib.suppress(OSError):  # the last listener of a queue leaves no empty directory behind
            self.path.parent.rmdir()


#: Directories found private once: only this user (or root) could make them otherwise, and a directory
#: removed since fails the listing. A ring is on every insert and finish: two lstat calls less each.
_trusted: set[Path] = set()
_sender: socket.socket | None = None  # one unbound datagram socket for every ring of this process


def ring(directory: Path, role: str) -> None:
    """Wake every listener of ``role``; forget the sockets of processes that are gone. Never raises: a
    ring is a hint, and the write that rang is committed already."""
    global _sender
    try:
        if directory not in _trusted:
            if not _is_trusted(directory):
                return
            _trusted.add(directory)
        names = [n for n in os.listdir(directory) if n.startswith(role + "-")]
        if names and _sender is None:
            _sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            _sender.setblocking(False)
        for name in names:
            _send(_sender, directory / name)
    except OSError:
        return


def ring_after(directory: Path, moves: Iterable[tuple[State, int | None]]) -> None:
    """Ring for committed transitions, each a job's new state and its ``max_parallel``: ``done`` when one
    finished; ``work`` when one waits again now (handed back) or left ``running`` under a ``max_parallel``
    limit, freeing a slot that a job of its name, blocked until now, may take."""
    roles = set()
    for state, max_parallel in moves:
        if state.is_final:
            roles.add("done")
        if state is State.PENDING or (state is not State.RUNNING and max_parallel is not None):
            roles.add("work")
    for role in sorted(roles):
        ring(directory, role)


def _send(sender: socket.socket, target: Path) -> None:
    try:
        sender.sendto(b"!", str(target))
    except (ConnectionRefusedError, FileNotFoundError):  # its process died without closing it
        with contextlib.suppress(OSError):
            target.unlink()
    except OSError:  # its buffer is full of unread rings (it is awake anyway), or not a socket at all
        pass
