"""Worker nodes: claim jobs from the queue and run them in child processes."""

from core4nb.worker.node import WorkerNode

__all__ = ["WorkerNode"]
