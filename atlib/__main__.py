"""``python -m atlib``: the command line (see :mod:`atlib.book.cli`)."""
import sys

from atlib.book.cli import main

if __name__ == "__main__":
    sys.exit(main())
