"""Test-session setup shared by the unit tests and the nbval notebook runs.

The environment is set when pytest imports this file, before any notebook kernel starts (kernels
inherit it):

- ``HYBRIDRS_PROFILE=quick``: notebooks run with small samples, whatever their ``profile`` says;
- ``HYBRIDRS_RESULTS_DIR``: a fresh temporary folder, so a test run never overwrites the committed
  tables in ``data/results``. Notebooks read earlier chapters' tables from it, which is why the
  notebooks are run in file-name order (= book order), see ``pytest_collection_modifyitems``;
- model hubs offline, a non-interactive matplotlib backend, fixed string hashing, and (as in
  ``reproduce.py``) no tqdm bars and no "IProgress not found" warning in the outputs.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent

_RESULTS = tempfile.mkdtemp(prefix="hybridrs-test-results-")
os.environ.update({
    "HYBRIDRS_PROFILE": "quick",
    "HYBRIDRS_RESULTS_DIR": _RESULTS,
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "MPLBACKEND": "Agg",
    "PYTHONHASHSEED": "0",
    # As in reproduce.py, so that a re-executed cell prints what the committed one printed: no
    # tqdm bars (rates and times), no machine-specific "IProgress not found" warning.
    "TQDM_DISABLE": "1",
})
_QUIET = "ignore:IProgress not found"
if _QUIET not in os.environ.get("PYTHONWARNINGS", "").split(","):
    os.environ["PYTHONWARNINGS"] = ",".join(filter(None, [os.environ.get("PYTHONWARNINGS"), _QUIET]))


def pytest_configure(config) -> None:
    # pytest.ini names the sanitize file relative to the repository root; make it absolute so that
    # running pytest from another directory still finds it.
    name = getattr(config.option, "nbval_sanitize_with", None)
    if name and not os.path.isabs(name) and not os.path.exists(name):
        candidate = ROOT / name
        if candidate.exists():
            config.option.nbval_sanitize_with = str(candidate)


def _notebook_of(item) -> str | None:
    path = str(getattr(item, "path", getattr(item, "fspath", "")))
    return path if path.endswith(".ipynb") else None


def pytest_collection_modifyitems(session, config, items) -> None:
    """Unit tests first, then notebooks by file name; cells keep their order within a notebook.

    Chapter N reads tables that chapter N-1 wrote into HYBRIDRS_RESULTS_DIR, so the notebooks must
    run in book order even when pytest is given them in another order on the command line."""
    position = {id(item): i for i, item in enumerate(items)}

    def key(item):
        nb = _notebook_of(item)
        return (0, "", position[id(item)]) if nb is None else (1, Path(nb).name, position[id(item)])

    items.sort(key=key)


def pytest_unconfigure(config) -> None:
    shutil.rmtree(_RESULTS, ignore_errors=True)
