"""Worker nodes: claim jobs from the queue and run them in child processes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from core4nb.worker.node import WorkerNode

__all__ = ["WorkerNode"]


def __getattr__(name: str) -> Any:
    # On first use: the node's forkserver preloads core4nb.worker.child, which loads this package
    # first, and must not load the node (its store, writer and reaper) with it.
    if name == "WorkerNode":
        from core4nb.worker.node import WorkerNode

        return WorkerNode
    raise AttributeError(f"module 'core4nb.worker' has no attribute {name!r}")
