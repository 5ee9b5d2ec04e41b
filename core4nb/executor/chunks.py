"""What a ``map`` sends to the workers: chunk jobs under one root job.

A map is one job tree::

    map:<fn>  (gathering)      a passive root: no node runs it, the store completes it with the last chunk
     ├─ run_chunk(fn, items)   → [fn(x) for x in items]
     ├─ run_chunk(fn, items)
     └─ …

The executor yields values straight from the chunk jobs, in order; the root
exists so that a map can be reattached from another process
(``Core4Executor(url).attach(root_id).result()`` chains the chunks' results)
and killed as one tree.

A chunk that raises at element ``i`` raises :class:`ChunkError` carrying the
``i`` values computed before it and the original exception, so the executor
can yield those values and then raise the original, as a process pool would.
"""

from __future__ import annotations

import itertools
import math
import os
import secrets
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NoReturn

from core4nb import serialize
from core4nb.errors import Core4Error, RemoteError

_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep

#: Auto chunking aims at this many chunks per worker slot: enough to balance
#: uneven items across slots, few enough that per-job overhead stays negligible.
CHUNKS_PER_SLOT = 4
#: For iterables of unknown length (``buffersize`` maps), chunks grow 1, 2, 4, … up to this size.
MAX_GROWING_CHUNK = 1024


class ChunkError(Core4Error):
    """Element ``index`` of a map chunk raised; carries the values computed before it.

    Attributes:
        values: results of the elements before ``index``.
        error: the original exception (a RemoteError when it could not be pickled).
        remote_traceback: the original exception's formatted traceback.
    """

    def __init__(self, index: int, values: list, error: BaseException, remote_traceback: str,
                 where: str = "") -> None:
        super().__init__(f"{where or 'the chunk'} raised {type(error).__qualname__}: {error}")
        self.index = index
        self.values = values
        self.error = error
        self.remote_traceback = remote_traceback
        self.where = where

    def __reduce__(self) -> tuple:  # Exception pickles only args; the parts matter here
        return ChunkError, (self.index, self.values, self.error, self.remote_traceback, self.where)


def run_chunk(fn: Callable, items: list, star: bool, label: str = "", first: int = 0) -> list:
    """Apply ``fn`` to each item (``fn(*item)`` when ``star``); runs in a worker child.
    ``label`` (``chunk 5/10``) and ``first`` (the map's index of ``items[0]``) name the item that raised."""
    values: list = []
    append = values.append
    try:
        if star:
            for args in items:
                append(fn(*args))
        else:
            for item in items:
                append(fn(item))
    except Exception as exc:
        tb = user_traceback(exc)
        where = label if len(items) == 1 else f"{label or 'the chunk'}, item {first + len(values)}"
        raise ChunkError(len(values), values, _transportable(exc, tb), tb, where) from None
    return values


def user_traceback(exc: BaseException) -> str:
    """The traceback from the first frame of user code on: core4nb's own frames (this module's
    loop, a cell's runner) tell the user nothing."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename.startswith(_PACKAGE):
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb or exc.__traceback__))


def raise_remote(error: BaseException) -> NoReturn:
    """Raise a chunk's exception where the user waits: IPython always shows the raising frame, so it is this one."""
    __tracebackhide__ = True
    raise error  # the job's own exception, raised in the worker (its traceback is the cause above)


def chunk_label(number: int, total: int | None) -> str:
    """``chunk 5/10``; ``chunk 5`` while the map's length is not known yet."""
    return f"chunk {number}/{total}" if total else f"chunk {number}"


def failure_note(label: str, span: tuple[int, int], index: int, error: BaseException, name: str | None) -> str:
    """Which chunk and item raised: ``chunk 5/10, numbers[40:50] raised ZeroDivisionError`` for a
    ``%%core4`` cell (``name``: the slice the chunk is), ``chunk 5/10 (items 40-49), item 43 raised …``
    for a map."""
    what = f"{label}, {name}" if name else f"{label} (items {span[0]}-{span[1] - 1}), item {span[0] + index}"
    return f"{what} raised {type(error).__qualname__}"


def _transportable(exc: Exception, tb: str) -> BaseException:
    """The exception if it survives a pickle round trip, else a RemoteError with its text."""
    if serialize.round_trips(exc):
        return exc
    return RemoteError(f"{type(exc).__module__}.{type(exc).__qualname__}", str(exc), tb)


def auto_chunksize(n: int, slots: int) -> int:
    return max(1, math.ceil(n / (CHUNKS_PER_SLOT * max(1, slots))))


def growing_chunks(items: Iterator, limit: int = MAX_GROWING_CHUNK) -> Iterator[list]:
    """Chunks of 1, 2, 4, … up to ``limit`` items: early results come quickly, later ones cheaply."""
    size = 1
    while chunk := list(itertools.islice(items, size)):
        yield chunk
        size = min(size * 2, limit)


def fixed_chunks(items: Iterator, size: int) -> Iterator[list]:
    while chunk := list(itertools.islice(items, size)):
        yield chunk


class OrderedIds:
    """Job ids that sort in submission order even when made within one microsecond.

    Ids sort by their microsecond prefix (core4nb.job.new_job_id); the root's
    ``child_results`` and the store's listings rely on that order.
    """

    def __init__(self) -> None:
        self._last = 0

    def next(self) -> str:
        self._last = max(time.time_ns() // 1000, self._last + 1)
        return f"{self._last:014x}{secrets.token_hex(5)}"


def describe_item(item: Any) -> str:
    return f"a {type(item).__qualname__}"


def first_unpicklable(items: Iterable, offset: int) -> str | None:
    """Name the first element of a chunk that cannot be pickled (for the error message)."""
    for i, item in enumerate(items):
        if not serialize.is_picklable(item):
            return f"element {offset + i} of the map ({describe_item(item)})"
    return None
