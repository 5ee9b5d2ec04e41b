"""Snapshot → HTML fragments for the panel's stock ``HTML`` widgets. Pure functions.

Every piece of job text (names, arguments, errors, tracebacks) is escaped:
it comes from user code and must not become markup in the notebook.
"""

from __future__ import annotations

import html

from core4nb.job import State
from core4nb.widgets.snapshot import Subtree, TreeSnapshot, failure_reason, job_title
from core4nb.widgets.text import format_rate, format_seconds

#: Columns of the counts table; inactive (deferred past defer_max) only appears when it happens.
TABLE_STATES = (State.PENDING, State.RUNNING, State.DEFERRED, State.FAILED, State.COMPLETE, State.ERROR,
                State.KILLED)
STATE_COLORS = {
    State.PENDING: "#6c757d", State.RUNNING: "#0d6efd", State.DEFERRED: "#6f42c1", State.FAILED: "#fd7e14",
    State.GATHERING: "#0d6efd", State.COMPLETE: "#198754", State.ERROR: "#dc3545", State.INACTIVE: "#6c757d",
    State.KILLED: "#842029",
}
#: Tracebacks longer than this keep their tail: the raising frame and the error are at the end.
MAX_TRACEBACK_CHARS = 8000

_CELL = "padding:0 0.6em;text-align:right"


def counts_table(counts: dict[State, int]) -> str:
    """A two-row table: state names, then how many jobs are in each (``data-state`` marks the cells)."""
    states = [s for s in State if s in TABLE_STATES or counts.get(s)]
    head = "".join(f'<th style="{_CELL};color:{STATE_COLORS[s]}">{s}</th>' for s in states)
    cells = "".join(f'<td data-state="{s}" style="{_CELL}">{counts.get(s, 0)}</td>' for s in states)
    return f'<table class="core4nb-counts" style="border-collapse:collapse"><tr>{head}</tr><tr>{cells}</tr></table>'


def summary_html(snapshot: TreeSnapshot, unit: str) -> str:
    """The label next to the bar: done/total, status, elapsed, throughput, ETA."""
    s = snapshot
    color = STATE_COLORS[State.ERROR] if s.status in ("broken", "killed") else "inherit"
    parts = [f"<b>{s.completed}</b>/{s.total} {html.escape(unit)}",
             f'<span style="color:{color}">{s.status}</span>',
             f"elapsed {format_seconds(s.elapsed)}"]
    if s.done:
        parts.append(format_rate(s.throughput))
    if s.eta is not None:
        parts.append(f"ETA {format_seconds(s.eta)}")
    return " · ".join(parts)


def static_html(snapshot: TreeSnapshot, unit: str) -> str:
    """The panel without widgets, for a saved notebook where they do not render (nbviewer, GitHub)."""
    color = STATE_COLORS[State.ERROR] if snapshot.status in ("broken", "killed") else STATE_COLORS[State.COMPLETE] \
        if snapshot.is_final else STATE_COLORS[State.RUNNING]
    bar = (f'<div style="display:inline-block;width:40%;height:1em;background:#e9ecef;vertical-align:middle">'
           f'<div style="width:{snapshot.fraction * 100:.1f}%;height:100%;background:{color}"></div></div>')
    return (f'<div class="core4nb-panel"><div>{bar} <b>{html.escape(snapshot.name)}</b> '
            f"{summary_html(snapshot, unit)}</div>{info_html(snapshot)}{counts_table(snapshot.counts)}"
            f"{failures_html(snapshot)}</div>")


def info_html(snapshot: TreeSnapshot) -> str:
    """The root job (state and message) and the nodes running its jobs."""
    root = snapshot.root
    # A root not claimed yet, or gathering, waits for its children: the tree's status says what is going on.
    waiting = root.state in (State.PENDING, State.GATHERING)
    line = f"<b>{html.escape(job_title(root))}</b> {snapshot.status if waiting else root.state}"
    if root.progress_message and not root.is_final:
        line += f": {html.escape(root.progress_message)}"
    if snapshot.child_count:
        line += f" · {snapshot.child_count} children"
    nodes = ", ".join(f"{html.escape(name)} ({n})" for name, n in snapshot.nodes)
    return f"<div>{line}</div><div>nodes: {nodes or '—'}</div>"


def subtree_title(subtree: Subtree) -> str:
    """An accordion title (plain text): ``name(args) state done/total``."""
    return f"{job_title(subtree.job, 40)} {subtree.job.state} {subtree.completed}/{subtree.total}"


def subtree_html(subtree: Subtree) -> str:
    """A subtree's children per state, and what its job last said."""
    message = subtree.job.progress_message
    note = f"<div>{html.escape(message)}</div>" if message else ""
    return counts_table(subtree.counts) + note


def failures_html(snapshot: TreeSnapshot) -> str:
    """The failed jobs, each with its error and its traceback behind a ``<details>``; '' when none."""
    if not snapshot.failures:
        return ""
    shown, total = len(snapshot.failures), sum(snapshot.tree_counts[s] for s in (State.FAILED, State.ERROR,
                                                                                   State.INACTIVE))
    head = f"<b>failed jobs</b> ({shown} of {total})" if total > shown else "<b>failed jobs</b>"
    items = []
    for job in snapshot.failures:
        summary = (f'<span style="color:{STATE_COLORS[job.state]}">{job.state}</span> '
                   f"{html.escape(job_title(job))}: {html.escape(failure_reason(job))}")
        tb = job.error.traceback if job.error is not None else ""
        if len(tb) > MAX_TRACEBACK_CHARS:
            tb = "…" + tb[-MAX_TRACEBACK_CHARS:]
        body = f'<pre style="font-size:smaller;white-space:pre-wrap">{html.escape(tb)}</pre>' if tb else ""
        items.append(f'<details class="core4nb-failure"><summary>{summary}</summary>{body}</details>')
    return f"<div>{head}</div>" + "".join(items)
