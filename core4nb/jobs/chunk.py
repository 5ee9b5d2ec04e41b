"""The map's chunk runner: what a worker runs for one chunk of ``Core4Executor.map``.

A chunk that raises at element ``i`` raises :class:`ChunkError` carrying the
``i`` values computed before it and the original exception, so the executor
can yield those values and then raise the original, as a process pool would.
"""

from __future__ import annotations

from collections.abc import Callable

from core4nb.errors import Core4Error
from core4nb.remote import transportable, user_traceback


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
        raise ChunkError(len(values), values, transportable(exc, tb), tb, where) from None
    return values
