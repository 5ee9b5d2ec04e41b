"""Live progress of job trees: a data layer, a poller, and two views that draw snapshots.

::

    panel = core4nb.progress(future)      # TreePanel in a notebook, TextProgress elsewhere
    panel.wait(); panel.snapshot.status   # 'complete' | 'broken' | 'killed'

``TreePanel`` needs ipywidgets and is imported on first use, so importing this
package (or core4nb) never imports ipywidgets.
"""

from __future__ import annotations

from typing import Any

from core4nb.widgets.api import progress, resolve_target, widgets_available
from core4nb.widgets.poller import MIN_INTERVAL, Poller
from core4nb.widgets.snapshot import MAX_FAILURES, MAX_RUNNING, MAX_SUBTREES, Subtree, TreeSnapshot, take_snapshot
from core4nb.widgets.text import TextProgress, text_line

__all__ = [
    "MAX_FAILURES",
    "MAX_RUNNING",
    "MAX_SUBTREES",
    "MIN_INTERVAL",
    "Poller",
    "Subtree",
    "TextProgress",
    "TreePanel",
    "TreeSnapshot",
    "progress",
    "resolve_target",
    "take_snapshot",
    "text_line",
    "widgets_available",
]


def __getattr__(name: str) -> Any:
    if name == "TreePanel":
        from core4nb.widgets.panel import TreePanel

        return TreePanel
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
