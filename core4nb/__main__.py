"""``python -m core4nb`` is the ``core4nb`` command."""

import sys

from core4nb.cli import main

if __name__ == "__main__":
    sys.exit(main())
