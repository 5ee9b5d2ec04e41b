"""IPython magics: ``%%core4`` runs a cell in parallel over chunks; ``%core4 …`` manages the queue.

``%load_ext core4nb`` registers them. The cell magic turns the body into a
:class:`~core4nb.cells.CellRunner` and maps it over the chunks with the
session's :class:`~core4nb.Core4Executor`: one job tree, one progress panel.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import inspect
import shlex
import sys
import time
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring

from core4nb import report
from core4nb.cells import CellRunner, chunk_advice, chunk_names, default_chunks, split
from core4nb.errors import ConfigError, Core4Error
from core4nb.executor import Core4Executor
from core4nb.job import State
from core4nb.options import JobOptions
from core4nb.queue import Queue
from core4nb.remote import RemoteTraceback
from core4nb.store import redact_url

DEFAULT_OUT = "_core4"
LINE_USAGE = {"status": "status", "runs": "runs", "jobs": "jobs [STATE]", "attach": "attach ID", "kill": "kill ID",
              "connect": "connect URL"}
RUNS_SHOWN = 20
LINE_COMMANDS = tuple(LINE_USAGE)
#: After the values are in (or Ctrl-C), how long a cell waits for its tree's root to finish (it completes
#: within its defer time of the last chunk) and killed chunks to stop, so the counts it shows are final.
SETTLE_PATIENCE = 5.0


class Interrupted(KeyboardInterrupt):
    """Ctrl-C stopped a ``%%core4`` cell: its tree is killed. IPython shows the one line, no frames."""

    def __init__(self, done: int, killed: int, job_id: str) -> None:
        super().__init__(f"interrupted: {done} done, {killed} killed (job tree {job_id})")

    def _render_traceback_(self) -> list[str]:  # what IPython shows instead of a traceback (as ipyparallel does)
        return [str(self)]


class CellRun:
    """A ``%%core4`` cell in flight (what ``--no-wait`` stores in ``--out``).

    Attributes:
        job_id: the root of the cell's job tree (``%core4 attach`` takes it).
        panel: the live progress view.
    """

    def __init__(self, results, reduce, panel, executor: Core4Executor) -> None:
        self.job_id = results.job_id
        self.panel = panel
        self._results, self._reduce, self._executor = results, reduce, executor
        self._value: Any = None
        self._done = False

    def result(self) -> Any:
        """Wait for every chunk; the values in chunk order (reduced if ``--reduce`` was given).
        What the chunks print shows while they run, labelled per chunk, in the cell that ran them."""
        __tracebackhide__ = True  # IPython shows the user's line and the remote error, not this frame
        if not self._done:
            values = list(self._results)
            self._value, self._done = (self._reduce(values) if self._reduce else values), True
        return self._value

    def kill(self) -> int:
        """Kill the whole tree; returns how many jobs were killed or flagged."""
        return self._executor.store.request_kill(self.job_id) if self.job_id else 0

    def __repr__(self) -> str:
        return f"<core4 cell run {self.job_id}: call .result() for the values, .kill() to stop>"


def _show_remote_only(exc: BaseException) -> None:
    """A chunk's exception, raised as its own type, shows in IPython as which chunk raised and the
    worker's traceback of the cell's code: the notebook side's frames are all core4nb's."""
    cause = exc.__cause__
    if isinstance(cause, RemoteTraceback):
        lines = [*getattr(exc, "__notes__", ()), cause.tb.rstrip("\n")]
        with contextlib.suppress(AttributeError, TypeError):  # an exception type without a __dict__
            exc._render_traceback_ = lambda: lines


def _settle(panel, patience: float = SETTLE_PATIENCE):
    """Wait (briefly) for the cell's tree to be final, so the panel and its saved fallback show how it
    ended; returns the last snapshot."""
    if panel is None:
        return None
    deadline = time.monotonic() + patience
    snapshot = panel.refresh()
    while snapshot is not None and not snapshot.is_final and time.monotonic() < deadline:
        time.sleep(0.05)
        snapshot = panel.refresh()
    if hasattr(panel, "publish"):
        panel.publish()
    return snapshot


def _cell_arguments(func):
    """The ``%%core4`` options, kept apart so ``%%core4?`` shows them as argparse help."""
    decorators = [
        magic_arguments(),
        argument("--over", metavar="NAME", help="notebook iterable to split (range, list, numpy, pandas rows)"),
        argument("--chunks", type=int, metavar="N",
                 help="number of chunks (default: 4 per worker slot, more for large data)"),
        argument("--out", metavar="NAME", default=DEFAULT_OUT,
                 help=f"notebook variable for the chunk values in order (default: {DEFAULT_OUT})"),
        argument("--reduce", metavar="FUNC", help="notebook function applied to the list of values, e.g. sum"),
        argument("--url", help="queue URL (default: %%core4 connect, $CORE4NB_URL or the embedded queue)"),
        argument("--workers", type=int, metavar="N", help="local worker processes to start"),
        argument("--priority", type=int, metavar="P", help="job priority (higher first)"),
        argument("--max-parallel", type=int, metavar="M", help="at most M chunks run at once"),
        argument("--no-wait", action="store_true", help="return at once; --out holds the run (.result(), .kill())"),
    ]
    return functools.reduce(lambda f, deco: deco(f), reversed(decorators), func)


def _with_suggestion(message: str, line: str, parser) -> str:
    """The parser's message, plus the option a mistyped one was probably meant to be."""
    known = [option for action in parser._actions for option in action.option_strings]
    for token in line.split():
        flag = token.split("=", 1)[0]
        if flag.startswith("--") and flag not in known:
            close = difflib.get_close_matches(flag, known, n=1)
            if close:
                return f"{message}; did you mean {close[0]}?"
    return message


@magics_class
class Core4Magics(Magics):
    """The ``core4`` line and cell magic."""

    def __init__(self, shell) -> None:
        super().__init__(shell)
        self.url: str | None = None  # set by %core4 connect
        self._executors: dict[tuple[str | None, int | None], Core4Executor] = {}
        self._panels: list = []  # live progress views, stopped on unload
        self._advised: set[str] = set()  # cell bodies told once that their chunks are too short

    def executor(self, url: str | None = None, workers: int | None = None) -> Core4Executor:
        """The session's executor for this URL and worker count (made once, reused)."""
        url = url or self.url
        key = (url, workers)
        if key not in self._executors or self._executors[key].is_shutdown:
            self._executors[key] = Core4Executor(url, workers=workers)
        return self._executors[key]

    def close(self) -> None:
        for panel in self._panels:
            panel.close()
        self._panels.clear()
        for executor in self._executors.values():
            executor.shutdown(wait=False, cancel_futures=True)
        self._executors.clear()

    @_cell_arguments
    @line_cell_magic
    def core4(self, line: str, cell: str | None = None) -> Any:
        """Run a cell once per chunk of a notebook iterable, in parallel; or manage the queue.

        Cell: ``%%core4 --over numbers --chunks 64 [--out counts] [--reduce sum]``
        runs the body with ``numbers`` bound to each chunk; the value of its last
        expression, per chunk and in order, lands in ``--out``. Ctrl-C kills the tree.

        Line: ``%core4 status`` | ``runs`` | ``jobs [STATE]`` | ``attach ID`` | ``kill ID`` | ``connect URL``.
        """
        __tracebackhide__ = True
        if cell is None:
            return self._line(line)
        try:
            args = parse_argstring(self.core4, line)
        except UsageError as exc:
            raise UsageError(_with_suggestion(str(exc), line, self.core4.parser)) from None
        try:
            return self._cell(args, cell)
        except Core4Error as exc:
            raise UsageError(str(exc)) from None

    # -- the cell magic -------------------------------------------------------------------------
    def _cell(self, args, cell: str) -> Any:
        __tracebackhide__ = True
        ns = self.shell.user_ns
        if not args.over:
            raise UsageError("%%core4 needs --over NAME: the notebook iterable to split into chunks")
        if args.over not in ns:
            raise UsageError(f"--over {args.over}: no variable {args.over!r} in the notebook; define it first")
        for flag, name in (("--out", args.out), ("--over", args.over)):
            if not name.isidentifier():
                raise UsageError(f"{flag} {name!r} is not a valid Python name")
        reduce = self._lookup_reduce(args.reduce)
        if args.chunks is not None and args.chunks < 1:
            raise UsageError(f"--chunks must be at least 1, got {args.chunks}")
        source = self.shell.transform_cell(cell)
        try:
            runner = CellRunner(source, args.over, ns)
        except SyntaxError as exc:
            raise UsageError(f"the cell body is not valid Python: {exc}") from None
        flags = {"priority": args.priority, "max_parallel": args.max_parallel}
        options = {name: value for name, value in flags.items() if value is not None}
        try:
            JobOptions.check(options)  # before any worker starts: --max-parallel 0 is a usage error
        except ConfigError as exc:
            raise UsageError(str(exc)) from None
        executor = self.executor(args.url, args.workers)
        slots = executor._runtime.slots()
        chunks = split(ns[args.over], args.chunks or default_chunks(ns[args.over], slots))
        results = executor.options(**options).map(runner, chunks, chunksize=1)
        results.name_chunks(chunk_names(args.over, chunks))
        from core4nb.widgets import progress

        panel = progress(results, url=executor.url, unit="chunks") if results.job_id else None
        self._panels = [p for p in self._panels if p.is_polling] + ([panel] if panel else [])
        run = CellRun(results, reduce, panel, executor)
        if args.no_wait:
            ns[args.out] = run
            return None
        try:
            ns[args.out] = run.result()
        except KeyboardInterrupt:
            run.kill()
            counts = getattr(_settle(panel), "counts", {})  # once the kills landed: the table's counts
            raise Interrupted(counts.get(State.COMPLETE, 0), counts.get(State.KILLED, 0), run.job_id) from None
        except Exception as exc:
            _show_remote_only(exc)
            _settle(panel)
            raise
        _settle(panel)
        self._advise(run, cell, slots)
        return None

    def _advise(self, run: CellRun, cell: str, slots: int) -> None:
        """Say once per cell body when its chunks were mostly overhead, and which --chunks fixes it."""
        if cell in self._advised or not run.job_id:
            return
        chunks = [j for j in run._executor.store.find(root_id=run.job_id) if j.id != run.job_id]
        advice = chunk_advice(chunks, slots)
        if advice:
            self._advised.add(cell)
            print(advice, file=sys.stderr)

    def _lookup_reduce(self, name: str | None):
        if name is None:
            return None
        import builtins

        fn = self.shell.user_ns.get(name, getattr(builtins, name, None))
        if not callable(fn):
            raise UsageError(f"--reduce {name}: no function {name!r} in the notebook (e.g. --reduce sum)")
        return fn

    # -- line magics ----------------------------------------------------------------------------
    def _line(self, line: str) -> Any:
        words = shlex.split(line)
        if not words or words[0] not in LINE_COMMANDS:
            raise UsageError(f"%core4 takes one of: {', '.join(LINE_COMMANDS)} (or use %%core4 as a cell "
                             f"magic; %%core4? shows its options)")
        command, rest = words[0], words[1:]
        handler = getattr(self, f"_line_{command}")
        try:
            inspect.signature(handler).bind(*rest)
        except TypeError:
            raise UsageError(f"usage: %core4 {LINE_USAGE[command]}") from None
        try:
            return handler(*rest)
        except Core4Error as exc:
            raise UsageError(str(exc)) from None

    def _queue(self) -> Queue:
        return Queue(self.url)

    def _line_status(self) -> None:
        with report.open_existing(self.url) as queue:
            print(report.status_text(queue))

    def _line_runs(self) -> None:
        with report.open_existing(self.url) as queue:
            print(report.runs_text(report.runs(queue.store.find(), RUNS_SHOWN)))

    def _line_jobs(self, state: str | None = None) -> None:
        with report.open_existing(self.url) as queue:
            try:
                jobs = queue.jobs(state=state, limit=None)
            except ValueError:
                raise UsageError(f"unknown state {state!r}") from None
            print(report.jobs_text(jobs[-50:]))

    def _line_attach(self, job_id: str):
        from core4nb.widgets import progress

        future = self.executor(workers=0 if self.url else None).attach(job_id)
        self._panels.append(progress(future, url=self.url))
        return future

    def _line_kill(self, job_id: str) -> None:
        with self._queue() as queue:
            print(f"kill requested for {queue.kill(job_id)} job(s)")

    def _line_connect(self, url: str) -> None:
        with Queue(url) as queue:  # fails now on a bad URL, not at the next cell
            queue.counts()
        self.url = url
        print(f"%%core4 now uses {redact_url(url)}")


# ``--chunk 8`` must not pass for ``--chunks 8``: a typo is answered with "did you mean", never guessed.
Core4Magics.core4.parser.allow_abbrev = False


def load_ipython_extension(ipython) -> None:
    """``%load_ext core4nb``."""
    magics = Core4Magics(ipython)
    ipython.register_magics(magics)
    ipython._core4nb_magics = magics


def unload_ipython_extension(ipython) -> None:
    """``%unload_ext core4nb``: shut the session's executors down."""
    magics = getattr(ipython, "_core4nb_magics", None)
    if magics is not None:
        magics.close()
        del ipython._core4nb_magics

