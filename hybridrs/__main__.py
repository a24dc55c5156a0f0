"""``python -m hybridrs ...``: the same command line as the ``hybridrs`` console script."""

import sys

from hybridrs.run.cli import main

if __name__ == "__main__":
    sys.exit(main())
