"""``progress()``: watch a job tree live, as a widget panel in a notebook or a text line elsewhere."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from core4nb.widgets.poller import MIN_INTERVAL, Poller
from core4nb.widgets.text import TextProgress

if TYPE_CHECKING:
    from core4nb.widgets.panel import TreePanel


def resolve_target(target: Any, url: str | None = None) -> tuple[str, str]:
    """The ``(job id, queue URL)`` a progress target names.

    Args:
        target: a job id; a :class:`~core4nb.Job`; a
            :class:`~core4nb.Core4Future` (``job_id``, its executor's URL); a
            :class:`~core4nb.executor.handle.JobHandle` (``id``, ``url``); or any object
            with a string ``job_id`` or ``id`` and optionally a ``url``.
        url: the queue URL; wins over what the target knows. Without either,
            ``CORE4NB_URL`` or the embedded queue.

    Raises:
        TypeError: the target names no job.
    """
    job_id = _job_id(target)
    if job_id is None:
        raise TypeError(f"progress() needs a job id, a Job or a future with a .job_id, got {type(target).__name__}; "
                        f"a future that is not submitted yet has no job to watch")
    if url is None:
        url = _url_of(target)
    if url is None:
        from core4nb.store import default_url

        url = default_url()
    return job_id, url


def _job_id(target: Any) -> str | None:
    if isinstance(target, str):
        return target
    for attr in ("job_id", "id"):
        value = getattr(target, attr, None)
        if isinstance(value, str):
            return value
    return None


def _url_of(target: Any) -> str | None:
    # Where the known targets keep their queue URL: a handle or future itself, a
    # Core4Future's runtime, an executor-held future, a handle's future.
    holders = [target]
    for attr in ("_runtime", "_executor", "future"):
        holder = getattr(target, attr, None)
        if holder is not None:
            holders += [holder, getattr(holder, "_runtime", None)]
    for holder in holders:
        value = getattr(holder, "url", None)
        if isinstance(value, str):
            return value
    return None


def widgets_available() -> bool:
    """ipywidgets can be imported and we run in a Jupyter kernel (a terminal IPython cannot draw widgets)."""
    ipython = sys.modules.get("IPython")  # never import IPython just to find out it is not running
    shell = ipython.get_ipython() if ipython is not None else None
    if shell is None or getattr(shell, "kernel", None) is None:
        return False
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return False
    return True


def progress(target: Any, *, url: str | None = None, display: bool = True, interval: float = MIN_INTERVAL,
             unit: str = "jobs", widget: bool | None = None) -> TreePanel | TextProgress:
    """Watch a job tree live until it is final.

    Polls the queue once right away (so a bad id fails here, and the first
    drawing is real), shows the view, then refreshes it on a background
    thread every ``interval`` seconds until the tree is final or the view's
    ``close()`` is called.

    Args:
        target: a job id, a :class:`~core4nb.Job`, or a future with ``.job_id``.
        url: the queue URL; by default the target's, else ``CORE4NB_URL`` or the embedded queue.
        display: show the panel (``IPython.display``) or print the text line to stdout;
            with False the caller displays it.
        interval: seconds between polls (at least 0.5).
        unit: what the jobs are called in the text (``chunks`` for a ``%%core4`` cell).
        widget: force the widget panel (True) or the text view (False); None picks the
            panel when ipywidgets is installed and a Jupyter kernel runs.

    Returns:
        A :class:`TreePanel` or a :class:`TextProgress`; both offer ``refresh()``,
        ``wait(timeout)``, ``close()``, ``snapshot`` and a text ``repr``.

    Raises:
        TypeError: the target names no job.
        JobNotFound: no job with that id is in the queue.
        ConfigError: a malformed URL or an interval below 0.5 s.
        StoreUnavailable: the queue cannot be reached.
    """
    job_id, url = resolve_target(target, url)
    use_widget = widgets_available() if widget is None else widget
    if use_widget:
        from core4nb.widgets.panel import TreePanel

        view: TreePanel | TextProgress = TreePanel(unit=unit)
    else:
        view = TextProgress(unit=unit, stream=sys.stdout if display else None)
    poller = Poller(url, job_id, view, interval=interval)
    try:
        poller.poll()
    except BaseException:
        poller.stop()
        raise
    view.poller = poller
    if use_widget and display:
        from IPython.display import display as show

        # Before the thread starts; the panel updates this display once the tree is final.
        view.display_handle = show(view, display_id=True)
    poller.start()
    return view
