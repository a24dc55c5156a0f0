"""Exact binomial confidence bounds (Clopper and Pearson, 1934).

With ``k`` successes in ``n`` Bernoulli(p) draws, the one-sided bounds at level ``alpha`` are the
Beta quantiles

    lower(k, n, α) = Beta⁻¹(α;     k,     n − k + 1)   (0 when k = 0)
    upper(k, n, α) = Beta⁻¹(1 − α; k + 1, n − k)       (1 when k = n)

and satisfy P[p ≥ lower] ≥ 1 − α and P[p ≤ upper] ≥ 1 − α for every p.  This is the lower end of
the two-sided interval at level 2α, the bound used by Cohen et al. (2019) and by the released code
of the hybrid paper.  When all n draws succeed, lower = α^(1/n).
"""

from __future__ import annotations

import numpy as np
from scipy import stats as _st

from hybridrs import _validate as v


def _counts(k, n) -> tuple[np.ndarray, np.ndarray]:
    k_arr = np.asarray(k)
    n_arr = np.asarray(n)
    for arr, name in ((k_arr, "k"), (n_arr, "n")):
        if not np.issubdtype(arr.dtype, np.integer):
            if np.issubdtype(arr.dtype, np.floating) and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
                continue
            raise ValueError(f"{name} must be integer counts, got {arr!r}")
    k_arr = k_arr.astype(np.int64)
    n_arr = n_arr.astype(np.int64)
    if (n_arr < 1).any():
        raise ValueError(f"n must be >= 1, got {n_arr.min()}")
    if (k_arr < 0).any() or (k_arr > n_arr).any():
        raise ValueError("k must satisfy 0 <= k <= n")
    return np.broadcast_arrays(k_arr, n_arr)


def clopper_pearson_lower(k, n, alpha: float):
    """One-sided (1 − α) lower confidence bound on a binomial proportion.

    ``k`` and ``n`` may be integers or integer arrays (broadcast together); returns a float or an
    array of the broadcast shape.
    """
    alpha = v.open_unit(alpha, "alpha")
    k_arr, n_arr = _counts(k, n)
    with np.errstate(invalid="ignore"):
        out = _st.beta.ppf(alpha, k_arr, n_arr - k_arr + 1)
    out = np.where(k_arr == 0, 0.0, out)
    return float(out) if out.ndim == 0 else out


def clopper_pearson_upper(k, n, alpha: float):
    """One-sided (1 − α) upper confidence bound on a binomial proportion."""
    alpha = v.open_unit(alpha, "alpha")
    k_arr, n_arr = _counts(k, n)
    with np.errstate(invalid="ignore"):
        out = _st.beta.ppf(1.0 - alpha, k_arr + 1, n_arr - k_arr)
    out = np.where(k_arr == n_arr, 1.0, out)
    return float(out) if out.ndim == 0 else out
