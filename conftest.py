"""Session-wide isolation, for the tests and for the notebook kernels nbval starts.

Nothing a test or an example notebook does may touch the user's embedded
queue or cluster key in ~/.core4nb: every run gets its own home and key file.
"""

from __future__ import annotations

import os
import shutil
import tempfile

_HOME = tempfile.mkdtemp(prefix="core4nb-test-home-")


def pytest_configure(config) -> None:
    os.environ["CORE4NB_HOME"] = _HOME
    os.environ["CORE4NB_KEY_FILE"] = os.path.join(_HOME, "key")
    os.environ.pop("CORE4NB_KEY", None)
    os.environ.pop("CORE4NB_URL", None)


def pytest_unconfigure(config) -> None:
    shutil.rmtree(_HOME, ignore_errors=True)
