"""Uncertainty and estimands for chapter 8's tables.

* Shares (certified %, flagged %, attack success, ...): exact two-sided Clopper–Pearson 95 %
  intervals (:func:`share_ci`).
* Means (mean certified radius, mean d_max, ...): percentile bootstrap 95 % intervals with a
  fixed seed (:func:`mean_ci`; 2 000 resamples of the inputs).
* Estimands (:func:`estimands`): the paper reports means without saying over which inputs; we
  report both the mean over **all** evaluated inputs (an uncertified input contributes radius 0
  and d_max 0) and the mean over **certified** inputs only (those with d_max ≥ 1, the paper's
  "certified examples"), each with its interval, plus the certified share.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import beta as _beta

LEVEL = 0.95
BOOTSTRAP = 2000
BOOTSTRAP_SEED = 20260


def share_ci(k: int, n: int, level: float = LEVEL) -> tuple[float, float, float]:
    """(k/n, lower, upper): exact two-sided Clopper–Pearson interval; (nan, nan, nan) for n = 0."""
    k, n = int(k), int(n)
    if n == 0:
        return (float("nan"),) * 3
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    a = (1 - level) / 2
    lo = 0.0 if k == 0 else float(_beta.ppf(a, k, n - k + 1))
    hi = 1.0 if k == n else float(_beta.ppf(1 - a, k + 1, n - k))
    return k / n, lo, hi


def mean_ci(x, level: float = LEVEL, reps: int = BOOTSTRAP, seed: int = BOOTSTRAP_SEED) -> tuple[float, float, float]:
    """(mean, lower, upper): percentile bootstrap over the entries of ``x`` (NaN dropped)."""
    x = np.asarray(x, dtype=np.float64)
    x = x[~np.isnan(x)]
    if x.size == 0:
        return (float("nan"),) * 3
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(reps, x.size))].mean(1)
    a = (1 - level) / 2
    return float(x.mean()), float(np.quantile(means, a)), float(np.quantile(means, 1 - a))


def ratio_ci(x, y, level: float = LEVEL, reps: int = BOOTSTRAP, seed: int = BOOTSTRAP_SEED) -> tuple[float, float, float]:
    """(mean(x)/mean(y), lower, upper): paired percentile bootstrap (the same inputs resampled for
    both), e.g. hybrid r̄ over image-only r̄ on the same inputs."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1 or x.size == 0:
        raise ValueError("x and y must be non-empty 1-D arrays of the same length")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(reps, x.size))
    with np.errstate(divide="ignore", invalid="ignore"):
        r = x[idx].mean(1) / y[idx].mean(1)
    a = (1 - level) / 2
    est = x.mean() / y.mean() if y.mean() != 0 else float("nan")
    r = r[np.isfinite(r)]
    if r.size == 0:
        return float(est), float("nan"), float("nan")
    return float(est), float(np.quantile(r, a)), float(np.quantile(r, 1 - a))


def fmt(est: tuple[float, float, float], digits: int = 2, percent: bool = False) -> str:
    """"m [lo, hi]" (×100 with ``percent``)."""
    m, lo, hi = (100 * np.asarray(est)) if percent else est
    return f"{m:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def with_ci(prefix: str, est: tuple[float, float, float]) -> dict:
    """{prefix: m, prefix + " lo": lo, prefix + " hi": hi}."""
    return {prefix: est[0], f"{prefix} lo": est[1], f"{prefix} hi": est[2]}


def estimands(values, certified) -> dict:
    """Mean of ``values`` over all inputs (uncertified → value as given, usually 0) and over the
    certified ones, each with its bootstrap interval, and the certified share with its
    Clopper–Pearson interval."""
    values = np.asarray(values, dtype=np.float64)
    certified = np.asarray(certified, dtype=bool)
    if values.shape != certified.shape:
        raise ValueError("values and certified must have the same shape")
    out = {"inputs": int(values.size)}
    out.update(with_ci("certified share", share_ci(int(certified.sum()), values.size)))
    out.update(with_ci("mean (all)", mean_ci(values)))
    out.update(with_ci("mean (certified)", mean_ci(values[certified])))
    return out


def frame(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows)
