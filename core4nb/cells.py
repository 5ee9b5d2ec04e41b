"""A notebook cell as a job: its body, the notebook globals it uses, and its data in chunks.

``%%core4 --over numbers`` turns the cell into a :class:`CellRunner` called once
per chunk of ``numbers``. The runner carries the cell's source and only the
notebook globals the body names (functions defined in the notebook travel by
value through cloudpickle; modules by reference), never the whole namespace.
"""

from __future__ import annotations

import ast
import builtins
import itertools
import linecache
import math
import statistics
import types
from collections.abc import Iterable
from typing import Any

from core4nb.executor.chunks import CHUNKS_PER_SLOT
from core4nb.job import Job

#: More chunks when the data is large: no chunk should carry more bytes than this (Dask's partitions
#: are ~100 MB for the same reason: each is pickled, stored and held in one worker at once).
CHUNK_BYTES = 64 * 2**20
#: A chunk shorter than this is mostly overhead; joblib's auto batching aims for batches at least this long.
MIN_CHUNK_SECONDS = 0.2
#: The file name of a cell's code in tracebacks (its lines are put in ``linecache`` under it).
CELL_FILE = "<core4 cell>"


class CellRunner:
    """Run a cell body with ``name`` bound to a chunk; return its last expression's value."""

    def __init__(self, source: str, name: str, user_ns: dict[str, Any]) -> None:
        tree = ast.parse(source, filename=CELL_FILE, mode="exec")
        last = tree.body[-1] if tree.body else None
        self.source = source
        self.name = name
        # The job name (and the panel's title) of every chunk: "cell_over_numbers".
        self.__qualname__ = f"cell_over_{name}"
        self.body = compile(ast.Module(tree.body[:-1] if isinstance(last, ast.Expr) else tree.body, []),
                            CELL_FILE, "exec")
        self.last = compile(ast.Expression(last.value), CELL_FILE, "eval") if isinstance(last, ast.Expr) else None
        self.globals = {n: user_ns[n] for n in _names_used(tree) if n in user_ns and n != name
                        and not n.startswith("_") and not isinstance(user_ns[n], types.ModuleType | None)}
        self.modules = {n: user_ns[n].__name__ for n in _names_used(tree)
                        if isinstance(user_ns.get(n), types.ModuleType)}

    def __call__(self, chunk: Any) -> Any:
        import importlib

        # The cell's lines for a traceback of its code (the notebook's own cache is not in this process).
        linecache.cache[CELL_FILE] = (len(self.source), None, self.source.splitlines(True), CELL_FILE)
        namespace: dict[str, Any] = {"__name__": "__main__", "__builtins__": builtins}
        namespace.update({alias: importlib.import_module(module) for alias, module in self.modules.items()})
        namespace.update(self.globals)
        namespace[self.name] = chunk
        exec(self.body, namespace)
        return eval(self.last, namespace) if self.last is not None else None

    def __repr__(self) -> str:
        first = self.source.strip().splitlines()[0] if self.source.strip() else ""
        return f"<core4 cell over {self.name}: {first[:40]}>"


def _names_used(tree: ast.AST) -> set[str]:
    return {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}


def split(data: Any, chunks: int) -> list[Any]:
    """Split ``data`` into at most ``chunks`` contiguous pieces of (nearly) equal size.

    A range gives ranges, a list/tuple slices, a numpy array, pandas DataFrame
    or Series pieces along rows (their own type), any other iterable lists.

    Raises:
        TypeError: ``data`` is not iterable (a scalar, a generator already used up is fine).
    """
    if chunks < 1:
        raise ValueError(f"--chunks must be at least 1, got {chunks}")
    if hasattr(data, "iloc"):  # pandas: positional row slices keep the index
        return [data.iloc[lo:hi] for lo, hi in _bounds(len(data), chunks)]
    if isinstance(data, range | list | tuple | str) or hasattr(data, "__array__"):
        return [data[lo:hi] for lo, hi in _bounds(len(data), chunks)]
    if isinstance(data, dict):
        items = list(data.items())
        return [dict(items[lo:hi]) for lo, hi in _bounds(len(items), chunks)]
    if not isinstance(data, Iterable):
        raise TypeError(f"cannot split a {type(data).__name__}: --over needs an iterable "
                        f"(range, list, numpy array, pandas DataFrame/Series…)")
    items = list(data)
    return [items[lo:hi] for lo, hi in _bounds(len(items), chunks)]


def chunk_names(name: str, chunks: list[Any]) -> list[str]:
    """``numbers[0:8]``, ``numbers[8:16]``, … for the pieces :func:`split` made of ``name``
    (``df.iloc[0:8]`` for pandas rows)."""
    names, lo = [], 0
    for piece in chunks:
        hi = lo + len(piece)
        names.append(f"{name}{'.iloc' if hasattr(piece, 'iloc') else ''}[{lo}:{hi}]")
        lo = hi
    return names


def _bounds(size: int, chunks: int) -> list[tuple[int, int]]:
    """Contiguous (lo, hi) pairs covering range(size); empty pieces are dropped."""
    chunks = max(1, min(chunks, size))
    step = size / chunks
    edges = [math.floor(i * step) for i in range(chunks)] + [size]
    return [(lo, hi) for lo, hi in itertools.pairwise(edges) if hi > lo] or [(0, 0)]


def default_chunks(data: Any, slots: int) -> int:
    """How many chunks ``%%core4`` makes without ``--chunks``: a few per live worker slot (one slow chunk
    is made up by the others), more when the data is large; :func:`split` never makes more than items."""
    nbytes = getattr(data, "nbytes", None)
    if nbytes is None and hasattr(data, "memory_usage"):  # pandas
        nbytes = int(data.memory_usage(index=False).sum()) if hasattr(data, "columns") else data.memory_usage()
    return max(CHUNKS_PER_SLOT * max(1, slots), math.ceil((nbytes or 0) / CHUNK_BYTES))


def chunk_advice(chunks: list[Job], slots: int) -> str | None:
    """One line when per-chunk overhead dominated a finished run, naming the ``--chunks`` that fixes it.

    Measured on the run's own jobs: each chunk held a slot for ``span × busy slots / chunks``; what of
    that its median run did not use is the overhead (claim, payload, result, bookkeeping). When the
    median chunk ran for less than that, fewer, longer chunks are faster. None when all is well.
    """
    done = [j for j in chunks if j.runtime is not None and j.started_at and j.finished_at]
    if len(done) < 2:
        return None
    span = max(j.finished_at for j in done) - min(j.started_at for j in done)
    median = statistics.median(j.runtime for j in done)
    overhead = span * min(slots, len(done)) / len(done) - median
    if median >= overhead:
        return None
    work = median * len(done)  # not the sum: a child's first chunk also pays for its imports
    better = max(1, min(len(done) - 1, int(work / max(MIN_CHUNK_SECONDS, 10 * overhead))))
    fix = f"use --chunks {better}" + (" or run the cell without %%core4" if better == 1 else "")
    return (f"core4: overhead dominated this run: the median of its {len(done)} chunks ran {_ms(median)}, and each "
            f"chunk cost {_ms(overhead)} more to schedule and collect; {fix}")


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"
