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


def certified_accuracy(radii, correct, eps):
    """CRA(ε) = (1/N) · #{i : correct_i and r_i ≥ ε} — the one certified-accuracy function.

    Cohen, Rosenfeld and Kolter (2019, §4): the share of inputs classified correctly *and*
    certified at radius ε.  Used for every method in the book (Lipschitz margins, randomized
    smoothing, the hybrid certificate at a fixed text budget) and by ``hybridrs report``.

    Parameters
    ----------
    radii: certified radius of each input.  −inf, any negative value or NaN means "not certified"
        (an abstention, a failed certificate, or a stage that was not run), which never counts, not
        even at ε = 0; a radius of exactly 0 counts at ε = 0 only.
    correct: whether each input's prediction equals its label (bool or 0/1); ``None`` when every
        input is certified for its true class (e.g. the protected class of a safety filter).
    eps: one radius ε ≥ 0 (returns a float) or several (returns an array, one share per ε).
    """
    r = np.asarray(radii, dtype=np.float64)
    if r.ndim != 1 or r.size == 0:
        raise ValueError(f"radii must be a non-empty 1-D array of numbers, got shape {r.shape}")
    if correct is None:
        c = np.ones(r.shape, dtype=bool)
    else:
        c = np.asarray(correct)
        if c.shape != r.shape:
            raise ValueError(f"correct must be 1-D with the shape of radii {r.shape}, got {c.shape}")
        if c.dtype != bool:
            if not np.isin(c, (0, 1)).all():
                raise ValueError("correct must hold booleans or 0/1 values")
            c = c.astype(bool)
    e = np.asarray(eps, dtype=np.float64)
    if np.isnan(e).any() or (e < 0).any():
        raise ValueError(f"eps must be >= 0 with no NaN, got {eps!r}")
    # A negative radius marks an abstention; r >= 0 keeps it out even at ε = 0 (NaN compares False).
    ok = c & (r >= 0)
    res = (ok[None, :] & (r[None, :] >= e.reshape(-1, 1))).mean(axis=1)
    return float(res[0]) if e.ndim == 0 else res


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
