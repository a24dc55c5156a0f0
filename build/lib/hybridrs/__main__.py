"""``python -m hybridrs ...``: the same command line as the ``hybridrs`` console script.

``python -m`` puts the working folder first on ``sys.path``; it is moved to the end, so that a
model named ``package.module:factory`` is resolved as by the console script: installed packages
first, the working folder last (a ``PIL/`` or ``torch/`` folder there never shadows the real one).
"""

import os
import sys

if sys.path and sys.path[0] in ("", os.getcwd()):
    sys.path.append(sys.path.pop(0))

from hybridrs.run.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
