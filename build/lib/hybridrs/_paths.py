"""Where the book's data live, resolved at run time (the package never looks at its own location).

The folder ``data/`` holds the trained model weights (``data/models``) and the tables and figures
of the book (``data/results``).  It is found, in this order:

1. ``HYBRIDRS_DATA_DIR`` when set;
2. ``./data`` when the working folder has one (a checkout's root);
3. ``../data`` when the parent of the working folder has one (the notebooks run in ``notebooks/``).

``HYBRIDRS_RESULTS_DIR`` and ``HYBRIDRS_MODEL_DIR`` override the two subfolders on their own
(the tests point the results at a scratch folder).  Functions that read or write files also take
an explicit folder argument, which wins over all of this.
"""

from __future__ import annotations

import os
from pathlib import Path


def data_dir() -> Path:
    """The ``data/`` folder (module docstring); an error names the variable to set if none is found."""
    env = os.environ.get("HYBRIDRS_DATA_DIR")
    if env:
        return Path(env)
    cwd = Path.cwd()
    for candidate in (cwd / "data", cwd.parent / "data"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(
        f"no data/ folder in {cwd} or its parent: set HYBRIDRS_DATA_DIR (or pass the folder explicitly)")


def model_dir() -> Path:
    """Folder of trained weights: ``HYBRIDRS_MODEL_DIR``, else ``<data>/models``."""
    env = os.environ.get("HYBRIDRS_MODEL_DIR")
    return Path(env) if env else data_dir() / "models"


def results_dir() -> Path:
    """Folder of tables and figures: ``HYBRIDRS_RESULTS_DIR``, else ``<data>/results`` (created)."""
    env = os.environ.get("HYBRIDRS_RESULTS_DIR")
    path = Path(env) if env else data_dir() / "results"
    path.mkdir(parents=True, exist_ok=True)
    return path
