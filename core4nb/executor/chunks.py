"""How a ``map`` is cut into chunk jobs under one root job (the chunk runner: core4nb.jobs.chunk).

A map is one job tree::

    map:<fn>  (gathering)      a passive root: no node runs it, the store completes it with the last chunk
     ├─ run_chunk(fn, items)   → [fn(x) for x in items]   (core4nb.jobs.chunk)
     ├─ run_chunk(fn, items)
     └─ …

The executor yields values straight from the chunk jobs, in order; the root
exists so that a map can be reattached from another process
(``Core4Executor(url).attach(root_id).result()`` chains the chunks' results)
and killed as one tree.
"""

from __future__ import annotations

import itertools
import math
import secrets
import time
from collections.abc import Iterable, Iterator
from typing import Any

from core4nb import serialize

#: Auto chunking aims at this many chunks per worker slot: enough to balance
#: uneven items across slots, few enough that per-job overhead stays negligible.
CHUNKS_PER_SLOT = 4
#: For iterables of unknown length (``buffersize`` maps), chunks grow 1, 2, 4, … up to this size.
MAX_GROWING_CHUNK = 1024


def chunk_label(number: int, total: int | None) -> str:
    """``chunk 5/10``; ``chunk 5`` while the map's length is not known yet."""
    return f"chunk {number}/{total}" if total else f"chunk {number}"


def failure_note(label: str, span: tuple[int, int], index: int, error: BaseException, name: str | None) -> str:
    """Which chunk and item raised: ``chunk 5/10, numbers[40:50] raised ZeroDivisionError`` for a
    ``%%core4`` cell (``name``: the slice the chunk is), ``chunk 5/10 (items 40-49), item 43 raised …``
    for a map."""
    what = f"{label}, {name}" if name else f"{label} (items {span[0]}-{span[1] - 1}), item {span[0] + index}"
    return f"{what} raised {type(error).__qualname__}"


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
