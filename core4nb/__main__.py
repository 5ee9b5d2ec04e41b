"""``python -m core4nb`` is the ``core4nb`` command."""

import sys

if sys.argv[1:2] == ["worker"]:  # the command is always the first argument: there are no global options
    # Local worker nodes run as `python -m core4nb worker`: starting the forkserver before the CLI's own
    # imports lets it preload beside them (cli._worker starts it for the `core4nb` script).
    from core4nb.worker import forkserver

    forkserver.start()

from core4nb.cli import main

if __name__ == "__main__":
    sys.exit(main())
