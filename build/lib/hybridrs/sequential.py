"""Sequential certification: draw Monte Carlo batches until the answer is known.

The fixed-n protocol (Cohen et al. 2019; Delattre et al. 2026) spends n = 10^4 forward passes on
every input, although most inputs are decided after a few hundred: a smoothed score of 0.2 will
never certify a (d, ε) that needs p_A ≥ 0.9, and a score of 1.0 certifies it after ~70 draws.
Stopping as soon as the data decide requires a confidence bound that stays valid at a
*data-dependent* stopping time; a Clopper–Pearson bound recomputed after every batch does not
(peeking inflates its error).  This module uses a confidence *sequence* instead.

Confidence sequence (beta-binomial mixture; Robbins 1970, Howard et al. 2021 §3).  After t
Bernoulli(p) draws with S successes, for a candidate p₀ let

    M_t(p₀) = B(a + S, b + t − S) / B(a, b)  /  ( p₀^S (1 − p₀)^(t − S) ),

the Beta(a, b)-mixture likelihood over the likelihood under p₀.  Under p = p₀, (M_t) is a
nonnegative martingale with M_0 = 1 (a mixture of likelihood-ratio martingales), so Ville's
inequality gives P[∃ t : M_t(p) ≥ 1/α] ≤ α.  Hence the sets

    C_t = { p₀ : M_t(p₀) < 1/α } = (L_t, U_t)

contain the true p at *every* t simultaneously with probability ≥ 1 − α, and in particular at any
stopping time, however it depends on the data (optional stopping).  log M_t is convex in p₀ with
its minimum (≤ 0) at the MLE S/t, so C_t is a non-empty interval and L_t, U_t are found by
bisection on either side of S/t.  Both ends are rounded outwards: L_t is the lower end of a
bracket at which M_t ≥ 1/α was checked with a margin.

Decision rule for a target (d, ε) whose smallest certifying score is p* = required_p_a(kernel, d,
ε, σ, τ): stop with **certified** when L_t ≥ p*, **refuted** when U_t < p*, else draw the next
(geometrically growing) batch, up to ``max_n`` draws (**undecided**).  A wrong "certified" needs
p < p* ≤ L_t and a wrong "refuted" needs p ≥ p* > U_t; both imply p ∉ C_t, so the probability of
any wrong decision is ≤ α.  Moreover L_τ at the stopping time τ is itself a valid lower
confidence bound on p at level α, so the whole (d, ε) frontier computed from it (the p_A of the
fixed protocol replaced by L_τ) holds with probability ≥ 1 − α.

The mixture costs a little against Clopper–Pearson at a fixed n (when all n draws succeed, the
prior Beta(1, 1) gives L_n = (α/(n + 1))^(1/n) instead of α^(1/n)); the gain is that easy inputs
stop early, see ``benchmarks/sequential.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy.special import betaln

from hybridrs import _validate as v

CERTIFIED, REFUTED, UNDECIDED = "certified", "refuted", "undecided"

_ITER = 80  # bisection steps: the bracket shrinks to < 1e-24, far below float64 spacing near 1


def _log_m(k, t, p0, a: float, b: float) -> tuple[np.ndarray, np.ndarray]:
    """log M_t(p₀) and an absolute bound on its float64 rounding error."""
    with np.errstate(divide="ignore", invalid="ignore"):
        mix = betaln(a + k, b + t - k) - betaln(a, b)
        l1 = np.where(k > 0, k * np.log(p0), 0.0)
        l0 = np.where(t - k > 0, (t - k) * np.log1p(-p0), 0.0)
    val = mix - l1 - l0
    err = 1e-12 * (np.abs(mix) + np.abs(l1) + np.abs(l0) + 1.0)
    return val, err


def _check_prior(prior) -> tuple[float, float]:
    try:
        a, b = prior
    except (TypeError, ValueError) as exc:
        raise ValueError(f"prior must be a pair (a, b) of Beta parameters, got {prior!r}") from exc
    return v.positive(a, "prior[0]"), v.positive(b, "prior[1]")


def _counts(k, t):
    k_arr, t_arr = np.asarray(k), np.asarray(t)
    for arr, name in ((k_arr, "k"), (t_arr, "t")):
        if not (np.issubdtype(arr.dtype, np.integer)
                or (np.issubdtype(arr.dtype, np.floating) and np.all(arr == np.round(arr)))):
            raise ValueError(f"{name} must be integer counts, got {arr!r}")
    k_arr, t_arr = np.broadcast_arrays(k_arr.astype(np.float64), t_arr.astype(np.float64))
    if (t_arr < 0).any() or (k_arr < 0).any() or (k_arr > t_arr).any():
        raise ValueError("counts must satisfy 0 <= k <= t")
    return k_arr, t_arr


def confidence_sequence(k, t, alpha: float, prior: tuple[float, float] = (1.0, 1.0)):
    """Anytime-valid (1 − α) confidence interval (L_t, U_t) for a binomial proportion.

    C_t = {p₀ : M_t(p₀) < 1/α} with M_t the beta-binomial mixture martingale (module docstring):
    P[p ∈ (L_t, U_t) for every t ≥ 0] ≥ 1 − α (Ville's inequality), so the bound may be checked
    after every batch and the sampling stopped whenever one likes.  ``k`` successes in ``t``
    draws (integers or arrays, broadcast).  Returns (lower, upper) as floats or arrays; with t = 0
    the interval is [0, 1].  Rounded outwards.
    """
    alpha = v.open_unit(alpha, "alpha")
    a, b = _check_prior(prior)
    k, t = _counts(k, t)
    level = math.log(1.0 / alpha)
    p_hat = np.where(t > 0, k / np.maximum(t, 1), 0.5)

    def rejected(p0):
        val, err = _log_m(k, t, p0, a, b)
        return val - err >= level  # M_t(p0) ≥ 1/α for sure: p0 lies outside C_t

    # Lower end: on (0, p̂) log M decreases; keep lo rejected, hi not (p̂ itself has M ≤ 1).
    lo, hi = np.zeros_like(p_hat), p_hat.copy()
    for _ in range(_ITER):
        mid = 0.5 * (lo + hi)
        r = rejected(mid)
        lo, hi = np.where(r, mid, lo), np.where(r, hi, mid)
    lower = np.where((k == 0) | (t == 0), 0.0, lo)
    # Upper end: on (p̂, 1) log M increases; keep hi rejected.
    lo, hi = p_hat.copy(), np.ones_like(p_hat)
    for _ in range(_ITER):
        mid = 0.5 * (lo + hi)
        r = rejected(mid)
        lo, hi = np.where(r, lo, mid), np.where(r, mid, hi)
    upper = np.where((k == t) | (t == 0), 1.0, hi)
    if lower.ndim == 0:
        return float(lower), float(upper)
    return lower, upper


@dataclass
class SequentialResult:
    """Outcome of a sequential test of p ≥ p_required.

    ``decision`` is "certified" (lower ≥ p_required), "refuted" (upper < p_required) or
    "undecided" (the cap ``max_n`` was reached first); ``n`` draws were made, ``count`` of them
    positive; (lower, upper) is the confidence-sequence interval at the stopping time.
    """

    decision: str
    n: int
    count: int
    lower: float
    upper: float
    p_required: float
    batches: int


def batch_schedule(first: int, growth: float, max_n: int) -> list[int]:
    """Batch sizes first, ⌈first·growth⌉, ... (cumulative total capped at max_n)."""
    first = v.integer(first, "first_batch", minimum=1)
    growth = v.real(growth, "growth")
    if not growth >= 1.0:
        raise ValueError(f"growth must be >= 1, got {growth!r}")
    max_n = v.integer(max_n, "max_n", minimum=1)
    sizes, total, b = [], 0, float(first)
    while total < max_n:
        s = min(int(math.ceil(b)), max_n - total)
        sizes.append(s)
        total += s
        b *= growth
    return sizes


def sequential_test(draw: Callable[[int, int], int], p_required: float, alpha: float, *,
                    max_n: int = 100_000, first_batch: int = 100, growth: float = 2.0,
                    prior: tuple[float, float] = (1.0, 1.0)) -> SequentialResult:
    """Draw batches until p ≥ p_required is decided by the confidence sequence, or max_n draws.

    ``draw(size, index)`` makes ``size`` fresh draws (batch number ``index``) and returns how many
    are positive.  P[wrong decision] ≤ α for every p (module docstring).  ``p_required`` ≥ 1 or
    inf means no score certifies: the answer is "refuted" without drawing.
    """
    alpha = v.open_unit(alpha, "alpha")
    p_req = v.real(p_required, "p_required")
    if not p_req >= 0:
        raise ValueError(f"p_required must be >= 0, got {p_required!r}")
    sizes = batch_schedule(first_batch, growth, max_n)
    if p_req > 1:
        return SequentialResult(REFUTED, 0, 0, 0.0, 1.0, p_req, 0)
    n = k = 0
    lower, upper = 0.0, 1.0
    for j, size in enumerate(sizes):
        got = v.integer(draw(size, j), "draw(...) result")
        if got > size:
            raise ValueError(f"draw returned {got} positives out of {size} draws")
        n, k = n + size, k + got
        lower, upper = confidence_sequence(k, n, alpha, prior)
        if lower >= p_req:
            return SequentialResult(CERTIFIED, n, k, lower, upper, p_req, j + 1)
        if upper < p_req:
            return SequentialResult(REFUTED, n, k, lower, upper, p_req, j + 1)
    return SequentialResult(UNDECIDED, n, k, lower, upper, p_req, len(sizes))
