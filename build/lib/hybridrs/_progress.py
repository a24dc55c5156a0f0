"""Progress bars that a caller can switch off and the environment can still silence."""

from __future__ import annotations

from typing import Any


def progress_bar(iterable: Any = None, *, show: bool, **kwargs: Any):
    """A tqdm bar (``tqdm.auto``: a widget in notebooks, text elsewhere), disabled when ``show`` is
    False.

    When ``show`` is True no ``disable`` argument is passed, so tqdm's own environment settings
    (``TQDM_DISABLE=1``, set by ``reproduce.py``) still apply; an explicit ``disable=False`` would
    override them and leave empty widgets in the stored notebooks.
    """
    from tqdm.auto import tqdm

    if not show:
        kwargs["disable"] = True
    return tqdm(iterable, **kwargs)
