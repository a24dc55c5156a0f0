"""From per-input certificates to the curves and tables the book reports.

A certification run gives, for every test input i, a certified radius r_i (−inf or a negative
number when the smoothed classifier abstains or is not certified) and whether its prediction is
correct.  The *certified (robust) accuracy* at radius ε is

    CRA(ε) = (1/N) · #{ i : correct_i and r_i ≥ ε },

the fraction of inputs that are classified correctly *and* provably stay so under every
perturbation of ℓ2 norm at most ε (Cohen, Rosenfeld and Kolter 2019, §4).  Abstentions count as
wrong at every ε, including ε = 0.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


def _as_float_1d(values, name: str) -> np.ndarray:
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a 1-D array of numbers, got {values!r}") from exc
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if np.isnan(arr).any():
        raise ValueError(f"{name} contains NaN")
    return arr


def certified_accuracy_curve(radii, correct, eps_grid) -> np.ndarray:
    """CRA(ε) = mean over inputs of [correct_i and r_i ≥ ε], for every ε in ``eps_grid``.

    Parameters
    ----------
    radii: certified radius of each input; −inf (or any negative value) marks an abstention or an
        uncertified input, which never counts as certified, not even at ε = 0.
    correct: whether each input's (non-abstained) prediction equals its label (bool or 0/1).
    eps_grid: radii ε ≥ 0 at which to evaluate the curve (any order).

    Returns an array of ``len(eps_grid)`` fractions in [0, 1]; non-increasing in ε.
    """
    r = _as_float_1d(radii, "radii")
    c = np.asarray(correct)
    if c.ndim != 1 or c.shape != r.shape:
        raise ValueError(f"correct must be 1-D with the shape of radii {r.shape}, got {c.shape}")
    if c.dtype != bool:
        if not np.isin(c, (0, 1)).all():
            raise ValueError("correct must hold booleans or 0/1 values")
        c = c.astype(bool)
    if r.size == 0:
        raise ValueError("radii is empty: a certified accuracy needs at least one input")
    eps = _as_float_1d(np.atleast_1d(eps_grid), "eps_grid")
    if (eps < 0).any():
        raise ValueError(f"eps_grid must be >= 0, got {eps.min()!r}")
    # An abstention carries a negative radius; requiring r ≥ 0 keeps it out even at ε = 0.
    ok = c & (r >= 0)
    return (ok[None, :] & (r[None, :] >= eps[:, None])).mean(axis=1)


def plot_certified_accuracy(ax, eps_grid, curves: Mapping[str, np.ndarray], *, title: str | None = None):
    """Draw certified-accuracy curves (one line per entry of ``curves``) on the matplotlib ``ax``.

    The x axis is the ℓ2 radius ε in [0, 1]-pixel units and the y axis the certified accuracy in
    [0, 1].  Curves are drawn as steps (CRA is a right-continuous step function of ε evaluated on a
    grid).  Returns ``ax``.
    """
    eps = _as_float_1d(np.atleast_1d(eps_grid), "eps_grid")
    if not curves:
        raise ValueError("curves is empty: nothing to plot")
    for label, values in curves.items():
        y = _as_float_1d(values, f"curves[{label!r}]")
        if y.shape != eps.shape:
            raise ValueError(f"curves[{label!r}] has shape {y.shape}, expected {eps.shape} (one value per ε)")
        ax.step(eps, y, where="post", label=str(label))
    ax.set_xlabel(r"$\ell_2$ radius $\varepsilon$ (pixels in [0, 1])")
    ax.set_ylabel("certified accuracy")
    ax.set_ylim(0.0, 1.02)
    ax.set_xlim(float(eps.min()), float(eps.max()))
    ax.grid(alpha=0.3)
    ax.legend()
    if title is not None:
        ax.set_title(title)
    return ax
