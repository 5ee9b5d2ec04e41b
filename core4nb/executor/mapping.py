"""``Core4Executor.map``: chunk the input, submit one job tree, yield results in order.

Without ``buffersize`` the whole input is read at the call (as
``ProcessPoolExecutor.map`` does) and the root and every chunk job go into the
queue in one insert. With ``buffersize`` at most that many chunks are
submitted ahead of the consumer (Python 3.14 semantics); the root, which must
know how many chunks to wait for, is inserted once the input is exhausted.
"""

from __future__ import annotations

import collections
import itertools
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from core4nb.buffers import DigestMemo
from core4nb.calls import describe, make_job, summarize_args
from core4nb.errors import PayloadError, UnpicklableError
from core4nb.executor.chunks import (
    OrderedIds,
    auto_chunksize,
    chunk_label,
    failure_note,
    first_unpicklable,
    fixed_chunks,
    growing_chunks,
)
from core4nb.job import Job, State, safe_text
from core4nb.jobs import ChunkError, run_chunk
from core4nb.keys import key_id
from core4nb.remote import raise_remote, with_remote_cause

if TYPE_CHECKING:
    from core4nb.executor.futures import Core4Future
    from core4nb.executor.runtime import Runtime


#: A map whose chunks carry large data is inserted in groups of about this many bytes of blobs.
STREAM_BYTES = 32 * 1024 * 1024


class _MapRun:
    """The state of one map: what is submitted, what is still to come."""

    def __init__(self, runtime: Runtime, fn: Callable, options: dict[str, Any], star: bool) -> None:
        self.runtime, self.fn, self.options, self.star = runtime, fn, options, star
        self.name = describe(fn)
        self.ids = OrderedIds()
        # The root's id is fixed now (children point at it); its job is built when the count is known.
        self.root_id = self.ids.next()
        self.root_stub = Job(name="map", id=self.root_id)
        self.submitted = 0  # chunks
        self.offset = 0  # items
        self.futures: collections.deque[Core4Future] = collections.deque()
        self.outputs: list[str] = []  # what each chunk job printed, in order, as its results are consumed
        self.spans: list[tuple[int, int]] = []  # the items of each chunk (for an error naming the item)
        self.chunk_names: list[str] | None = None  # what each chunk is, in its user's words (``numbers[0:8]``)

    def chunk_job(self, chunk: list, memo: DigestMemo, total: int | None) -> Job:
        self.runtime.check_open()  # before pickling, as ProcessPoolExecutor.submit does
        label = chunk_label(self.submitted + 1, total)
        try:
            job = make_job(run_chunk, (self.fn, chunk, self.star, label, self.offset), name=self.name,
                           parent=self.root_stub, key=self.runtime.key, job_id=self.ids.next(), memo=memo,
                           options=self.options)
        except PayloadError:
            raise self._diagnose(chunk) from None
        # Listings show the chunk's place and items, not run_chunk's own arguments (the function, a flag).
        last = self.offset + len(chunk) - 1
        place = f"#{self.offset}" if last == self.offset else f"#{self.offset}-{last}"
        job.args_summary = safe_text(f"{place} {summarize_args(tuple(chunk), {})}")
        self.spans.append((self.offset, self.offset + len(chunk)))
        self.offset += len(chunk)
        self.submitted += 1
        return job

    def _diagnose(self, chunk: list) -> PayloadError:
        """Name the function or the element that cannot be pickled, not "argument 1 of run_chunk"."""
        try:
            make_job(self.fn, key=b"-")
        except PayloadError as exc:
            return exc
        culprit = first_unpicklable(chunk, self.offset) or f"a chunk of {len(chunk)} items"
        return UnpicklableError(f"cannot send {culprit} to a worker: it cannot be pickled")

    def root_job(self) -> Job:
        """The map's passive root: no node runs it; the store completes it with its last chunk (or fails it
        with the first failed one). Inserted after every chunk, so "no chunk open" means "all done"."""
        return Job(name=f"map:{self.name}", id=self.root_id, state=State.GATHERING, gather=True,
                   args_summary=f"{self.submitted} chunks, {self.offset} items", key_id=key_id(self.runtime.key))

    def submit(self, chunks: list[list], *, last: bool) -> None:
        """Insert these chunk jobs (and the root after them when ``last``) and track them: in one insert,
        or, when they carry large data, in groups of about :data:`STREAM_BYTES`, so that workers start on
        the first chunks while later ones are still pickled and stored."""
        # One submission: a value in every chunk (the function's closure) is hashed once, and stored as it is hashed.
        memo = DigestMemo(self.runtime.store.blobs.put_hashing)
        total = self.submitted + len(chunks) if last else None
        group, size, inserted = [], 0, False
        try:
            for chunk in chunks:
                job = self.chunk_job(chunk, memo, total)
                group.append(job)
                size += sum(data.nbytes for data in job.blobs.values())
                if size >= STREAM_BYTES:
                    self._insert(group, total)
                    group, size, inserted = [], 0, True
        except BaseException:
            if inserted:  # all or nothing: the chunks already stored must not run without the rest
                self.runtime.insert_and_track([self.root_job()], [])
                self.runtime.store.request_kill(self.root_id)
            raise
        self._insert(group, total, root=last and bool(self.submitted))

    def _insert(self, chunks: list[Job], total: int | None, *, root: bool = False) -> None:
        if chunks or root:
            futures = self.runtime.insert_and_track(chunks + [self.root_job()] * root, chunks)
            for number, future in enumerate(futures, self.submitted - len(futures) + 1):  # how its lines are labelled
                future.label = chunk_label(number, total)
            self.futures.extend(futures)


class MapIterator:
    """The results of :meth:`Core4Executor.map`, in order.

    Attributes:
        job_id: the map's root job (None for an empty map): attach to it for
            every result, or kill the whole map with ``store.request_kill``.
        url: the queue the map runs in (``core4nb.progress(it)`` shows its tree).
        outputs: what each chunk job printed (stdout and stderr), in order, filled
            as the results are consumed.
    """

    def __init__(self, runtime: Runtime, fn: Callable, iterables: tuple[Iterable, ...], options: dict[str, Any],
                 timeout: float | None, chunksize: int | None, buffersize: int | None) -> None:
        if not callable(fn):
            raise TypeError(f"{fn!r} is not callable: map() needs a function")
        if hasattr(fn, "run_job"):
            raise TypeError(f"map() applies a function to items; {describe(fn)} is a job class: submit() it")
        end_time = None if timeout is None else time.monotonic() + timeout
        star = len(iterables) != 1
        items: Iterator = zip(*iterables, strict=False) if star else iter(iterables[0])  # TypeError now, like map()
        run = _MapRun(runtime, fn, options, star)
        if buffersize is None:
            everything = list(items)
            size = chunksize or auto_chunksize(len(everything), runtime.slots())
            run.submit(list(fixed_chunks(iter(everything), size)), last=True)
            chunks = None
        else:
            chunks = _chunks(items, iterables, chunksize, runtime)
            window = list(itertools.islice(chunks, buffersize))
            exhausted = len(window) < buffersize
            run.submit(window, last=exhausted)
            chunks = None if exhausted else chunks
        self.job_id = run.root_id if run.submitted else None
        self.url = runtime.url
        self.outputs = run.outputs
        self._run = run
        self._gen = _results(run, chunks, end_time)

    def name_chunks(self, names: list[str]) -> None:
        """What each chunk is in its user's words (``numbers[40:50]``): a chunk's error names it so."""
        self._run.chunk_names = names

    def __iter__(self) -> Iterator[Any]:
        """The results' generator itself: a ``for`` loop or ``list()`` then takes each value without a
        Python call of ours per item (a third of the client's time per item of a 100,000-item map)."""
        return self._gen

    def __next__(self) -> Any:
        __tracebackhide__ = True  # IPython shows the user's line and the remote error, not this frame
        return next(self._gen)

    def close(self) -> None:
        """Stop early: cancel the chunks not started yet."""
        self._gen.close()


def _chunks(items: Iterator, iterables: tuple, chunksize: int | None, runtime: Runtime) -> Iterator[list]:
    if chunksize:
        return fixed_chunks(items, chunksize)
    try:
        n = min((len(it) for it in iterables), default=0)  # type: ignore[arg-type]
    except TypeError:  # a generator: sizes unknown, so start small and grow
        return growing_chunks(items)
    return fixed_chunks(items, auto_chunksize(n, runtime.slots()))


def _results(run: _MapRun, chunks: Iterator[list] | None, end_time: float | None) -> Iterator[Any]:
    __tracebackhide__ = True
    futures, consumed = run.futures, 0
    try:
        while futures:
            if chunks is not None:  # one more chunk in, before one comes out (3.14 buffersize)
                chunk = next(chunks, None)
                if chunk is None:
                    chunks = None
                run.submit([chunk] if chunk is not None else [], last=chunk is None)
            future = futures.popleft()
            values, error = _chunk_result(future, end_time)
            run.outputs.append(future.output)
            label, done = future.label, len(values)
            del future  # it holds the values too
            consumed += 1
            # Popped, not iterated: a value the caller dropped must be freed now, as in ProcessPoolExecutor.
            values.reverse()
            while values:
                yield values.pop()
            if error is not None:
                names = run.chunk_names
                error.add_note(failure_note(label, run.spans[consumed - 1], done, error,
                                            names[consumed - 1] if names else None))
                raise_remote(error)
    finally:
        if futures:
            run.runtime.cancel(list(futures))


def _chunk_result(future: Core4Future, end_time: float | None) -> tuple[list, BaseException | None]:
    """A chunk's values; for a chunk that raised, the values before the error and the error."""
    try:
        try:
            return future.result(None if end_time is None else end_time - time.monotonic()), None
        finally:
            future.cancel()  # a no-op once done; after a timeout it cancels a chunk not yet started
    except ChunkError as err:
        return err.values, with_remote_cause(err.error, err.remote_traceback)
