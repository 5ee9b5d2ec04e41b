"""``python -m tests.othermachine ARGS``: ``core4nb ARGS`` as if on another machine.

``CORE4NB_TEST_HOST`` names that machine (``socket.gethostname``) and ``CORE4NB_TEST_CLOCK_SKEW``
sets its wall clock that many seconds off (``time.time``/``time_ns``); its monotonic clock is its own.
"""

from __future__ import annotations

import os
import socket
import sys
import time

skew = float(os.environ.get("CORE4NB_TEST_CLOCK_SKEW", "0"))
if skew:
    _time, _time_ns = time.time, time.time_ns
    time.time = lambda: _time() + skew
    time.time_ns = lambda: _time_ns() + int(skew * 1e9)
if os.environ.get("CORE4NB_TEST_HOST"):
    socket.gethostname = lambda: os.environ["CORE4NB_TEST_HOST"]

if __name__ == "__main__":  # not when multiprocessing's forkserver imports this module as __mp_main__
    from core4nb.cli import main

    sys.exit(main())
