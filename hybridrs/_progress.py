"""Progress bars that a caller can switch off and the environment can still silence."""

from __future__ import annotations

import os
from typing import Any


def progress_bar(iterable: Any = None, *, show: bool, **kwargs: Any):
    """A tqdm bar (``tqdm.auto``: a widget in notebooks, text elsewhere), disabled when ``show`` is
    False.

    ``TQDM_DISABLE`` (set by ``reproduce.py``) is honoured here explicitly: tqdm's notebook bar
    replaces a missing ``disable`` by False, which would override the environment and leave
    progress widgets in the stored notebooks.
    """
    from tqdm.auto import tqdm

    if not show or os.environ.get("TQDM_DISABLE", "").strip().lower() in ("1", "true", "yes"):
        kwargs["disable"] = True
    return tqdm(iterable, **kwargs)
