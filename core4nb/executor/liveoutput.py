"""What jobs print, shown where they were submitted while they run.

The workers append what a running job prints to its ``output`` in the store
(the last 64 KiB); the executor's poller reads it for the jobs it tracks and
hands each job's stored tail to that job's :class:`JobOutput`, which shows only
what is new. Where it is shown is decided once, in the thread that submitted:

- in a Jupyter kernel, one display per cell (``display_id``), made while the
  cell runs and updated in place: the text lands in the cell that submitted the
  jobs however many cells ran since, as ipyparallel's ``%%px`` output does. It
  is a collapsible pane per chunk (ipywidgets; else HTML ``<details>``); its
  text/plain (what a saved notebook shows where HTML does not render) is
  ``[chunk 5/64]``-prefixed lines;
- elsewhere (a terminal IPython, a script), lines written to ``sys.stdout`` as
  they come, prefixed with the chunk (as Ray prefixes its workers' lines).
"""

from __future__ import annotations

import html
import sys
import threading
from typing import Any, Protocol, TextIO

from core4nb.job import OUTPUT_LIMIT

#: Where a stored tail no longer starts with what was shown (the 64 KiB limit cut its head), the
#: new part starts after the last this many characters shown.
OVERLAP = 256


def new_text(shown: str, stored: str) -> str:
    """The part of ``stored`` (a job's output tail now) that is not in ``shown`` (its tail before).
    Past the 64 KiB limit the tails are matched on the last :data:`OVERLAP` characters shown: text
    that repeats itself exactly may then show a stretch twice, never lose one."""
    if stored.startswith(shown):
        return stored[len(shown):]
    at = stored.find(shown[-OVERLAP:]) if shown else -1
    if at < 0:  # a new trial, or more than the whole tail printed since: all of it is new
        return stored
    return stored[at + len(shown[-OVERLAP:]):]


class Sink(Protocol):
    def opened(self) -> None: ...  # a job printed its first line here

    def write(self, label: str, text: str) -> None: ...

    def closed(self, label: str) -> None: ...  # one of them is done


class JobOutput:
    """One job's output as its submitter has seen it; :meth:`see` shows the new part,
    :meth:`close` says the job will print no more."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self._shown = self._label = ""
        self._printed = False

    def see(self, stored: str, label: str) -> None:
        text = new_text(self._shown, stored)
        self._shown, self._label = stored, label
        if text:
            if not self._printed:
                self._printed = True
                self.sink.opened()
            self.sink.write(label, text)

    def close(self) -> None:
        if self._printed:
            self.sink.closed(self._label)


class TerminalSink:
    """Lines on a text stream, each prefixed with its job's label."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream
        self._partial: dict[str, str] = {}  # a label's last line, until its newline comes
        self._lock = threading.Lock()

    def opened(self) -> None:
        pass

    def closed(self, label: str) -> None:
        with self._lock:
            rest = self._partial.pop(label, "")
        if rest:  # the job ended without a newline
            self.write(label, rest + "\n")

    def write(self, label: str, text: str) -> None:
        stream = self.stream or sys.stdout
        prefix = f"[{label}] " if label else ""
        with self._lock:
            *lines, rest = (self._partial.pop(label, "") + text).split("\n")
            if rest:
                self._partial[label] = rest
            if lines:
                stream.write("".join(f"{prefix}{line}\n" for line in lines))
                stream.flush()


class CellSink:
    """One display in a notebook cell with what its jobs printed.

    With ipywidgets, an accordion with a pane per chunk whose texts change in place (a pane the
    user opened stays open); else HTML with a ``<details>`` per chunk, redrawn on each batch.
    Whenever the last of its jobs that printed is done the display is updated once more, so that its
    text/plain and text/html (what a saved notebook shows where widgets do not render) hold everything
    printed.
    """

    def __init__(self, widgets: bool) -> None:
        from IPython.display import display

        self._texts: dict[str, str] = {}  # by label, in the order the labels first printed
        self._open_jobs = 0
        self._lock = threading.Lock()
        self._panes: Any = None
        if widgets:
            import ipywidgets

            self._panes = ipywidgets.Accordion(layout=ipywidgets.Layout(display="none"))
        # Shown now, in the cell that submits (a display made later lands in no cell), but empty: a cell
        # whose jobs print nothing gets no output worth saving.
        self._handle = display({}, raw=True, display_id=True)

    def opened(self) -> None:
        with self._lock:
            self._open_jobs += 1

    def closed(self, label: str) -> None:
        with self._lock:
            self._open_jobs -= 1
            last = self._open_jobs == 0 and bool(self._texts)
        if last:
            self._handle.update(self)

    def write(self, label: str, text: str) -> None:
        with self._lock:
            self._texts[label] = (self._texts.get(label, "") + text)[-OUTPUT_LIMIT:]
            texts = dict(self._texts)
        if self._panes is None:
            self._handle.update(self)
            return
        import ipywidgets

        labels = list(texts)
        panes = list(self._panes.children)
        first = not panes
        with self._panes.hold_sync():
            if len(panes) < len(labels):
                self._panes.children = panes + [ipywidgets.HTML() for _ in labels[len(panes):]]
            self._panes.children[labels.index(label)].value = pre(texts[label])
            self._panes.titles = tuple(section_title(name, texts[name]) for name in labels)
            self._panes.layout.display = ""
        if first:  # the empty display becomes the panes; from now on only their texts change
            self._handle.update(self)

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, str]:
        with self._lock:
            texts = dict(self._texts)
        bundle = dict(self._panes._repr_mimebundle_(**kwargs) or {}) if self._panes is not None else {}
        return {**bundle, "text/plain": plain_text(texts), "text/html": html_text(texts)}


def pre(text: str) -> str:
    return f'<pre style="margin:0">{html.escape(text)}</pre>'


def section_title(label: str, text: str) -> str:
    lines = len(text.splitlines())
    return f"{label or 'output'} · {lines} line{'s' if lines != 1 else ''}"


def plain_text(texts: dict[str, str]) -> str:
    return "".join("".join(f"[{label}] {line}\n" if label else f"{line}\n" for line in text.splitlines())
                   for label, text in texts.items())


def html_text(texts: dict[str, str]) -> str:
    if list(texts) == [""]:
        return pre(texts[""])
    return "".join(f"<details><summary>{html.escape(section_title(label, text))}</summary>{pre(text)}</details>"
                   for label, text in texts.items())


_cell_sinks: dict[int, CellSink] = {}
_terminal = TerminalSink()


def submitters_sink() -> Sink:
    """Where jobs submitted now show their output: this notebook cell's display, else stdout."""
    shell = _kernel_shell()
    if shell is None:
        return _terminal
    cell = shell.execution_count
    if cell not in _cell_sinks:
        from core4nb.widgets.api import widgets_available

        _cell_sinks.clear()  # an earlier cell's display lives on in the poller's JobOutputs only
        _cell_sinks[cell] = CellSink(widgets_available())
    return _cell_sinks[cell]


def _kernel_shell():
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    if shell is None or getattr(shell, "kernel", None) is None:
        return None
    if threading.current_thread() is not threading.main_thread():  # a display from here lands in no known cell
        return None
    return shell
