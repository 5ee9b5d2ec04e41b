"""The text view: one line per snapshot, for terminals, logs and ``text/plain``.

The line avoids job ids and addresses so a notebook's saved output only
varies in timings; an nbval sanitize file can mask those with
``elapsed \\d+(\\.\\d+)? (s|min|h)``, ``[\\d.]+/s`` and ``ETA [^ ]+ (s|min|h)``.
"""

from __future__ import annotations

from typing import TextIO

from core4nb.job import State
from core4nb.widgets.poller import Polled
from core4nb.widgets.snapshot import TreeSnapshot, failure_reason

BAR_WIDTH = 20


def format_seconds(seconds: float) -> str:
    """``0.4 s``, ``12 s``, ``3 min 05 s``, ``2 h 07 min``: precise while short, readable when long."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"


def format_rate(per_second: float) -> str:
    """Throughput as ``12.3/s``."""
    return f"{per_second:.1f}/s"


def text_bar(fraction: float, width: int = BAR_WIDTH) -> str:
    """``[#####---------------]`` for a fraction in [0, 1]."""
    filled = min(width, int(fraction * width))
    return "[" + "#" * filled + "-" * (width - filled) + "]"


def text_line(snapshot: TreeSnapshot | None, unit: str = "jobs", width: int = BAR_WIDTH) -> str:
    """The whole state of a tree in one line.

    Example: ``running: count_primes [######--------------] 20/64 chunks  pending 42
    running 2  complete 20  elapsed 1.6 s  12.3/s  ETA 3.6 s``.
    """
    if snapshot is None:
        return "no snapshot yet"
    s = snapshot
    parts = [f"{s.status}: {s.name} {text_bar(s.fraction, width)} {s.completed}/{s.total} {unit}"]
    parts += [f"{state} {n}" for state, n in s.counts.items() if n]
    parts.append(f"elapsed {format_seconds(s.elapsed)}")
    if s.done:
        parts.append(format_rate(s.throughput))
    if s.eta is not None:
        parts.append(f"ETA {format_seconds(s.eta)}")
    if s.failures:
        # The root cause: a final error before a retrying failure, a child's error before the
        # root's ChildFailed (which also names a job id, unstable in saved notebook output).
        cause = min(s.failures, key=lambda job: (job.state is State.FAILED, job.id == s.root_id))
        parts.append(failure_reason(cause)[:100])
    return "  ".join(parts)


class TextProgress(Polled):
    """Draws snapshots as a text line on ``stream``.

    On a terminal the line is redrawn in place (``\\r``); elsewhere (logs,
    notebooks without widgets) a line is printed only when the status or the
    completed tenth changes, and once at the end, so logs stay short.

    Args:
        snapshot: a first snapshot to draw.
        unit: what the jobs are called (``chunks`` for a ``%%core4`` cell).
        stream: where to write; None draws nothing (``repr`` still works).
    """

    def __init__(self, snapshot: TreeSnapshot | None = None, *, unit: str = "jobs",
                 stream: TextIO | None = None) -> None:
        self.unit = unit
        self.stream = stream
        self.snapshot: TreeSnapshot | None = None
        self.error: str | None = None
        self._last_key: tuple[str, int] | None = None
        self._drawn_width = 0
        self._ended = False
        if snapshot is not None:
            self.update(snapshot)

    @property
    def line(self) -> str:
        """The text line of the current snapshot (and the last polling error)."""
        line = text_line(self.snapshot, self.unit)
        return f"{line}  ({self.error})" if self.error else line

    def update(self, snapshot: TreeSnapshot) -> None:
        """Draw a new snapshot."""
        self.snapshot = snapshot
        self.error = None
        self._draw()

    def show_error(self, message: str) -> None:
        """Show that polling failed (the last snapshot stays)."""
        self.error = message
        self._draw(force=True)

    def _draw(self, force: bool = False) -> None:
        if self.stream is None or self.snapshot is None:
            return
        line, final = self.line, self.snapshot.is_final
        if _is_tty(self.stream):
            if self._ended:  # the final line is written and ended; a later refresh must not repeat it
                return
            # Pad over the previous line's tail; end the line once the tree is done.
            self.stream.write("\r" + line.ljust(self._drawn_width) + ("\n" if final else ""))
            self._drawn_width, self._ended = len(line), final
        else:
            key = (self.snapshot.status, int(self.snapshot.fraction * 10))
            if force or key != self._last_key:
                self.stream.write(line + "\n")
                self._last_key = key
        self.stream.flush()

    def __repr__(self) -> str:
        return self.line

    __str__ = __repr__


def _is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed file
        return False
