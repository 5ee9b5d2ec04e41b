"""``concurrent.futures`` on the core4nb queue: :class:`Core4Executor` and :class:`Core4Future`."""

from core4nb.executor.executor import Core4Executor
from core4nb.executor.futures import Core4Future, Progress

__all__ = ["Core4Executor", "Core4Future", "Progress"]
