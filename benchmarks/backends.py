"""The tools compared, behind one small session interface.

A :class:`Session` is one started executor: ``map`` (the tool's own map, its
default settings unless told), ``submit`` (one call, blocking for its result)
and ``close``. Every tool gets the same worker count; a tool that cannot be
imported or started is reported as skipped with the reason, never dropped.
"""

from __future__ import annotations

import importlib
import logging
import os
import secrets
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from benchmarks.env import Context


def missing(needs: Iterable[str]) -> str | None:
    """Why one of ``needs`` ("module" or "module:attribute") cannot be imported, or None."""
    for need in needs:
        module, _, attr = need.partition(":")
        try:
            found = importlib.import_module(module)
            if attr:
                getattr(found, attr)
        except Exception as exc:  # ImportError, AttributeError, or a broken install
            hint = "" if module.startswith(("core4nb", "tests")) else " (pip install -e '.[bench]')"
            return f"cannot import {need.replace(':', '.')}: {type(exc).__name__}: {exc}{hint}"
    return None


class Session:
    """One started executor of one tool."""

    def __init__(self, executor: Any, close: Callable[[], None] | None = None) -> None:
        self.executor = executor
        self._close = close or (lambda: executor.shutdown(wait=True))

    def map(self, fn: Callable, items: Iterable, **options: Any) -> list:
        return list(self.executor.map(fn, items, **options))

    def submit(self, fn: Callable, *args: Any) -> Future:
        return self.executor.submit(fn, *args)

    def close(self) -> None:
        self._close()


class SerialExecutor:
    """Plain Python in this process: the baseline every speed-up is relative to."""

    def map(self, fn: Callable, items: Iterable, **_options: Any) -> Iterable:
        return map(fn, items)

    def submit(self, fn: Callable, *args: Any) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args))
        except Exception as exc:
            future.set_exception(exc)
        return future

    def shutdown(self, wait: bool = True) -> None:
        pass


@dataclass
class Backend:
    """One tool: how to tell if it is here, its version, and how to start it."""

    key: str
    label: str
    needs: tuple[str, ...]
    opener: Callable[[Context, int], Session]

    def missing(self) -> str | None:
        """Why this tool cannot run here, or None."""
        return missing(self.needs)

    def open(self, ctx: Context, workers: int) -> Session:
        return self.opener(ctx, workers)


def _serial(_ctx: Context, _workers: int) -> Session:
    return Session(SerialExecutor())


def _process(_ctx: Context, workers: int) -> Session:
    from concurrent.futures import ProcessPoolExecutor

    return Session(ProcessPoolExecutor(max_workers=workers))


def _loky(_ctx: Context, workers: int) -> Session:
    import loky

    return Session(loky.ProcessPoolExecutor(max_workers=workers))


def dask_client(workers: int) -> tuple[Any, Callable[[], None]]:
    """A Dask client on a local cluster of ``workers`` one-thread processes, and what closes both."""
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=workers, processes=True, threads_per_worker=1, host="127.0.0.1",
                           dashboard_address=None, silence_logs=logging.ERROR)
    client = Client(cluster)

    def close() -> None:
        client.close()
        cluster.close()

    return client, close


def _dask(_ctx: Context, workers: int) -> Session:
    client, close = dask_client(workers)
    # pure=False: identical calls are separate tasks, as in every other tool
    return Session(client.get_executor(pure=False), close)


def _ipyparallel(_ctx: Context, workers: int) -> Session:
    import ipyparallel as ipp

    cluster = ipp.Cluster(n=workers, controller_ip="127.0.0.1", engine_timeout=60, log_level=logging.ERROR)
    client = cluster.start_and_connect_sync(activate=False)
    view = client.load_balanced_view()

    def close() -> None:
        client.close()
        cluster.stop_cluster_sync()

    return Session(view.executor, close)


def close_core4nb(executor: Any) -> None:
    # cancel_futures: after a failed workload, jobs still queued must not hold the shut-down up.
    executor.shutdown(wait=True, cancel_futures=True)


def _core4nb(ctx: Context, workers: int) -> Session:
    from core4nb import Core4Executor

    # The embedded default (no URL) keeps its queue in $CORE4NB_HOME: a fresh one per session,
    # as every other tool starts empty too.
    os.environ["CORE4NB_HOME"] = str(ctx.scratch / f"home-{secrets.token_hex(3)}")
    executor = Core4Executor(workers=workers)
    return Session(executor, lambda: close_core4nb(executor))


def _core4nb_mongo(ctx: Context, workers: int) -> Session:
    from core4nb import Core4Executor

    db = f"bench_{secrets.token_hex(3)}"  # a fresh database: nx scans every document on a claim
    url = ctx.mongo_url(db)
    executor = Core4Executor(url, workers=workers)

    def close() -> None:
        close_core4nb(executor)
        ctx.drop_mongo_db(db)

    return Session(executor, close)


BACKENDS: dict[str, Backend] = {b.key: b for b in (
    Backend("serial", "serial Python", (), _serial),
    Backend("process", "concurrent.futures.ProcessPoolExecutor", (), _process),
    Backend("loky", "loky", ("loky",), _loky),
    Backend("dask", "Dask (LocalCluster, processes)", ("distributed",), _dask),
    Backend("ipyparallel", "ipyparallel (local cluster, load-balanced view)", ("ipyparallel",), _ipyparallel),
    Backend("core4nb", "core4nb (embedded SQLite store)", ("core4nb:Core4Executor",), _core4nb),
    Backend("core4nb-mongo", "core4nb (mongo wire-protocol test server)",
            ("core4nb:Core4Executor", "tests.servers:WireServer"), _core4nb_mongo),
)}


def select(keys: Iterable[str]) -> list[Backend]:
    unknown = [k for k in keys if k not in BACKENDS]
    if unknown:
        raise SystemExit(f"unknown backend(s) {', '.join(unknown)}; choose from {', '.join(BACKENDS)}")
    return [BACKENDS[k] for k in keys]
