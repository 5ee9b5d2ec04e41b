"""The worker-side job layer: the job classes and the functions a worker runs for the executor.

Below the executor and the notebook layer (widgets, magics, cells): nothing here
imports them; the executor imports this layer (a map's chunks run :func:`run_chunk`).
"""

from core4nb.jobs.chunk import ChunkError, run_chunk
from core4nb.jobs.core4job import Core4Job

__all__ = ["ChunkError", "Core4Job", "run_chunk"]
