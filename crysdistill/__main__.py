"""``python -m crysdistill``: the same as the ``crysdistill`` console script."""

import sys

from crysdistill.cli import main

if __name__ == "__main__":
    sys.exit(main())
