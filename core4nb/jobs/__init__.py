"""The worker-side job layer: the job classes and the functions a worker runs for the executor.

Below the executor and the notebook layer: nothing here imports them, so a
worker child loads only what a job needs.
"""

from core4nb.jobs.chunk import ChunkError, run_chunk
from core4nb.jobs.core4job import Core4Job

__all__ = ["ChunkError", "Core4Job", "run_chunk"]
