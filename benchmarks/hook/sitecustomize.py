"""Counts store calls in processes the benchmark starts (``benchmarks/queue_rate.py``).

On ``PYTHONPATH`` only for the benchmark's own processes. Without
``CORE4NB_COUNT_CALLS`` it does nothing; with it (a directory), every store class
defined in this process gets its public verbs wrapped, and each call appends one
line, the verb, to ``<dir>/<pid>.calls`` (a line per call, so a process that
leaves by ``os._exit`` loses nothing).
"""

import os

if os.environ.get("CORE4NB_COUNT_CALLS"):
    try:
        from benchmarks.counting import install_subclass_hook

        install_subclass_hook(os.environ["CORE4NB_COUNT_CALLS"])
    except Exception as exc:  # never break the interpreter's start
        import sys

        print(f"benchmarks store-call hook not installed: {type(exc).__name__}: {exc}", file=sys.stderr)
