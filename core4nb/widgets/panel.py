"""The notebook view: stock ipywidgets (no custom JavaScript) drawing tree snapshots.

Layout::

    VBox ─ HBox ─ FloatProgress (done of total)   HTML (done/total · status · elapsed · rate · ETA)
         ├ HTML   root job, its state and message; nodes working on the tree
         ├ HTML   table of jobs per state
         ├ Accordion  one pane per child of the root that has children (nested subtrees)
         ├ HTML   failed jobs: error summary, traceback behind <details>
         └ HTML   polling errors (queue unreachable…)

Widgets are created once and updated in place: a redraw only sends the traits
that changed, and an opened accordion pane stays open across refreshes.
"""

from __future__ import annotations

import html
from typing import Any

import ipywidgets as w

from core4nb.widgets.poller import Polled
from core4nb.widgets.render import (
    counts_table,
    failures_html,
    info_html,
    static_html,
    subtree_html,
    subtree_title,
    summary_html,
)
from core4nb.widgets.snapshot import TreeSnapshot
from core4nb.widgets.text import text_line

_HIDDEN, _SHOWN = "none", ""


class TreePanel(Polled):
    """A live progress panel for one job tree.

    ``bar_style`` is ``info`` while running, ``success`` once the whole tree
    completed, and ``danger`` as soon as any job failed for good or was killed
    — and then it stays ``danger`` (sticky, as in tqdm), even if a later
    snapshot looks healthy again (a failed job restarted or removed).

    Args:
        snapshot: a first snapshot to draw.
        unit: what the jobs are called (``chunks`` for a ``%%core4`` cell).

    Attributes:
        box: the top-level widget, for embedding the panel in other layouts.
    """

    def __init__(self, snapshot: TreeSnapshot | None = None, *, unit: str = "jobs") -> None:
        self.unit = unit
        self.snapshot: TreeSnapshot | None = None
        self.has_broken = False
        # description_width 'initial': the tree's name in full (up to 24 characters); the default
        # (JupyterLab's 80 px label column) cut it to "cell_over_..." in the browser.
        self.bar = w.FloatProgress(value=0.0, min=0.0, max=1.0, bar_style="info", layout=w.Layout(width="45%"),
                                   style={"description_width": "initial"})
        self.label = w.HTML()
        self.info = w.HTML()
        self.counts = w.HTML()
        self.subtrees = w.Accordion(layout=w.Layout(display=_HIDDEN))
        self.failures = w.HTML(layout=w.Layout(display=_HIDDEN))
        self.alert = w.HTML(layout=w.Layout(display=_HIDDEN))
        self.box = w.VBox([w.HBox([self.bar, self.label]), self.info, self.counts, self.subtrees, self.failures,
                           self.alert])
        self._subtree_ids: tuple[str, ...] = ()
        self._panes: dict[str, w.HTML] = {}
        #: The notebook display showing the panel (``display(panel, display_id=True)``): once the tree is
        #: final it is updated, so its text/plain and text/html (what a saved notebook shows where widgets
        #: do not render) tell how the run ended, not how it began.
        self.display_handle: Any = None
        self._published_final = False
        if snapshot is not None:
            self.update(snapshot)

    def update(self, snapshot: TreeSnapshot) -> None:
        """Draw a new snapshot."""
        self.snapshot = snapshot
        self.has_broken = self.has_broken or snapshot.is_broken
        style = "danger" if self.has_broken else "success" if snapshot.is_final else "info"
        with self.bar.hold_sync():
            self.bar.description = snapshot.name[:24]
            self.bar.max = float(max(snapshot.total, 1))  # max before value: value is clamped to max
            self.bar.value = float(snapshot.completed)
            self.bar.bar_style = style
        self.label.value = summary_html(snapshot, self.unit)
        self.info.value = info_html(snapshot)
        self.counts.value = counts_table(snapshot.counts)
        self._draw_subtrees(snapshot)
        self.failures.value = failures_html(snapshot)
        self.failures.layout.display = _SHOWN if snapshot.failures else _HIDDEN
        self.alert.layout.display = _HIDDEN
        if snapshot.is_final and not self._published_final:
            self.publish()

    def publish(self) -> None:
        """Update the panel's notebook display with the current snapshot (its text fallbacks included)."""
        if self.display_handle is not None:
            self._published_final = self.snapshot is not None and self.snapshot.is_final
            self.display_handle.update(self)

    def show_error(self, message: str) -> None:
        """Show that polling failed; the last snapshot stays drawn."""
        self.alert.value = f'<span style="color:#dc3545">{html.escape(message)}</span>'
        self.alert.layout.display = _SHOWN

    def _draw_subtrees(self, snapshot: TreeSnapshot) -> None:
        ids = tuple(sub.job.id for sub in snapshot.subtrees)
        if ids != self._subtree_ids:
            # Panes belong to subtrees, not positions: the pane the user opened stays open
            # (and keeps its widget) when subtrees come or go around it.
            index, old_ids = self.subtrees.selected_index, self._subtree_ids
            open_id = old_ids[index] if index is not None and index < len(old_ids) else None
            self._panes = {job_id: self._panes.get(job_id) or w.HTML() for job_id in ids}
            self.subtrees.children = [self._panes[job_id] for job_id in ids]
            self.subtrees.selected_index = ids.index(open_id) if open_id in ids else None
            self._subtree_ids = ids
        for pane, sub in zip(self.subtrees.children, snapshot.subtrees, strict=True):
            pane.value = subtree_html(sub)
        self.subtrees.titles = tuple(subtree_title(sub) for sub in snapshot.subtrees)
        self.subtrees.layout.display = _SHOWN if ids else _HIDDEN

    @property
    def line(self) -> str:
        """The text line of the current snapshot."""
        return text_line(self.snapshot, self.unit)

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        # The widget view for the notebook, the text line as text/plain (what nbval compares
        # and what a terminal or a notebook without the widget manager shows).
        bundle = dict(self.box._repr_mimebundle_(**kwargs) or {})
        bundle["text/plain"] = self.line
        if self.snapshot is not None:
            bundle["text/html"] = static_html(self.snapshot, self.unit)
        return bundle

    def __repr__(self) -> str:
        return self.line
