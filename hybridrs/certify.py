"""Certificates: Cohen's Gaussian radius, the discrete knapsack bound and the hybrid Neyman–Pearson
certificate of Delattre et al. (ICML 2026).

Notation.  Groups k of a discrete adversary have clean mass c_k,
adversarial mass a_k and log likelihood ratio ℓ_k = log g_k.  With ρ = r/σ,

    F(u; ρ) = Σ_k c_k Φ( ρ/2 + (u − ℓ_k)/ρ )     clean mass of the region {log Λ ≤ u}
    V(u; ρ) = Σ_k a_k Φ(−ρ/2 + (u − ℓ_k)/ρ )     adversarial mass of the same region

The Neyman–Pearson worst case at image radius r is V(u*; ρ) with F(u*; ρ) = p_A.  Both F and V
increase in u, so (d, ε) is certified iff F(u_τ; ρ) ≤ p_A where V(u_τ; ρ) = τ.  The function

    G(ρ) = F(u_τ(ρ); ρ)     (the smallest p_A that certifies radius ρ)

does not depend on p_A; the radius is r*(d) = σ · sup{ρ : G(ρ) ≤ p_A}.  The numerical solver is in
:mod:`hybridrs._solver`.  At ρ = 0 the worst case
is the fractional knapsack of Chen et al. (2025).

Soundness: a certificate that is too large by a rounding error is a false guarantee.  Every root
is kept inside a bracket and the side that makes the certificate *smaller* is used: a certified radius ρ_lo comes with a witness u with V(u) ≥ τ and
F(u) ≤ p_A, both checked with a relative margin of 1e-12 that covers float64 rounding of the
masses and sums; the reported radius is the lower end of its bracket, rounded down.  When p_A is
above 1/2 the comparison is made on complements, 1 − F = Σ c_k Φ(−·), to avoid cancellation.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import ndtr, ndtri

from hybridrs import _validate as v
from hybridrs.kernels import Groups
from hybridrs._solver import (MARGIN, _knapsack, _knapsack_inverse, _radius_rows, _required, _Rows,
                              _worst_rows)


def cohen_radius(p_a, sigma: float, tau: float = 0.5):
    """Gaussian ℓ2 radius r = σ·(Φ⁻¹(p_A) − Φ⁻¹(τ)) (Cohen, Rosenfeld and Kolter, 2019, Thm. 1).

    With τ = 1/2 this is σ·Φ⁻¹(p_A); a general τ certifies P[f = 1] ≥ τ at every point within r.
    Returns −inf where p_A < τ (not certified), and rounds down so that the radius is never larger
    than the exact value.  ``p_a`` may be a float or an array.
    """
    p = v.probability(p_a, "p_a")
    sigma = v.positive(sigma, "sigma")
    tau = v.open_unit(tau, "tau")
    with np.errstate(divide="ignore", invalid="ignore"):
        x, y = ndtri(p), ndtri(tau)
        r = sigma * (x - y)
        r = r - 8 * np.finfo(float).eps * sigma * (np.abs(x) + abs(y))
    r = np.where(p < tau, -np.inf, np.where(p == tau, 0.0, np.maximum(r, 0.0)))
    return float(r) if r.ndim == 0 else r


def cohen_required_p_a(eps: float, sigma: float, tau: float = 0.5) -> float:
    """The smallest p_A whose Cohen radius σ(Φ⁻¹(p_A) − Φ⁻¹(τ)) reaches ε: Φ(ε/σ + Φ⁻¹(τ)), rounded
    up by 1e-12 relative so that :func:`cohen_radius` at the returned value is ≥ ε; inf if none ≤ 1."""
    eps = v.nonnegative(eps, "eps")
    sigma = v.positive(sigma, "sigma")
    tau = v.open_unit(tau, "tau")
    p = float(ndtr(eps / sigma + float(ndtri(tau))))
    if not p < 1:
        return math.inf
    step = max(p * 1e-12, 1e-15)
    for _ in range(40):
        if cohen_radius(p, sigma, tau) >= eps:
            return p
        p, step = min(p + step, 1.0), 4 * step
    return math.inf


def _check_groups(groups) -> Groups:
    if not isinstance(groups, Groups):
        raise ValueError(f"groups must be a hybridrs.kernels.Groups, got {type(groups).__name__}")
    return groups


def knapsack_bound(p_a, groups: Groups):
    """Worst-case score at ε = 0: the fractional knapsack value (Chen et al. 2025, Thm. 5.4).

    Fill the clean budget p_A with the groups in increasing likelihood ratio g_k, splitting the
    boundary group, and sum their adversarial mass:

        p_adv = Σ_{k<b} a_k + (p_A − Σ_{k<b} c_k) · g_b.

    Rounded down (relative 1e-12).  ``p_a`` may be a float or an array.
    """
    p = v.probability(p_a, "p_a")
    g = _check_groups(groups)
    flat = p.reshape(-1)
    out = _knapsack(flat, _Rows.stack([g], np.zeros(flat.size, dtype=int))).reshape(p.shape)
    return float(out) if out.ndim == 0 else out


def _check_kernel(kernel):
    if not hasattr(kernel, "adversaries"):
        raise ValueError(f"kernel must be a hybridrs kernel (UniformKernel, AbsorbingKernel, ...), "
                         f"got {type(kernel).__name__}")
    return kernel


def _problems(kernel, d_max: int, n_p: int):
    """Rows for every (p_A index, d, adversary): returns (rows, p index, d of each problem)."""
    groups, d_of = [], []
    for d in range(d_max + 1):
        for g in kernel.adversaries(d):
            groups.append(g)
            d_of.append(d)
    n_g = len(groups)
    rows = np.tile(np.arange(n_g), n_p)
    return _Rows.stack(groups, rows), np.repeat(np.arange(n_p), n_g), np.tile(np.array(d_of), n_p)


def _per_budget(values: np.ndarray, p_idx, d_of, n_p: int, d_max: int, init: float) -> np.ndarray:
    """Minimum over adversaries at each (p_A, d), then the running minimum over d' ≤ d."""
    out = np.full((n_p, d_max + 1), init)
    np.minimum.at(out, (p_idx, d_of), values)
    return np.minimum.accumulate(out, axis=1)


def frontier(p_a, kernel, d_max: int, sigma: float, tau: float = 0.5) -> np.ndarray:
    """Certified image radius r*(d) for every text budget d = 0..d_max.

    r*(d) = σ · sup{ρ : V_{d'}(u*; ρ) ≥ τ for all d' ≤ d and every canonical adversary}, the
    largest ℓ2 radius ε such that every (s', v') with at most d token changes and ‖v' − v‖₂ ≤ ε
    keeps P[f = 1] ≥ τ (Delattre et al. 2026).  Conventions: −inf where (d, 0) is not certified,
    0.0 where only ε = 0 is.  Non-increasing in d by construction (the threat "≤ d" is the union
    of "exactly d'" for d' ≤ d).

    ``p_a`` is a float (returns shape (d_max + 1,)) or an array of shape (B,) (returns
    (B, d_max + 1)).  One vectorised solve covers every p_A, d and adversary.
    """
    p = v.probability(p_a, "p_a")
    kernel = _check_kernel(kernel)
    d_max = v.integer(d_max, "d_max")
    sigma = v.positive(sigma, "sigma")
    tau = v.open_unit(tau, "tau")
    flat = p.reshape(-1)
    rows, p_idx, d_of = _problems(kernel, d_max, flat.size)
    rho = _per_budget(_radius_rows(flat[p_idx], rows, tau), p_idx, d_of, flat.size, d_max, np.inf)
    r = np.where(np.isfinite(rho) & (rho > 0), np.nextafter(sigma * rho, -np.inf), rho)
    return r.reshape(p.shape + (d_max + 1,))


def radius(p_a, kernel, d: int, sigma: float, tau: float = 0.5):
    """Certified image radius r*(d) at text budget d (see :func:`frontier` for conventions)."""
    d = v.integer(d, "d")
    r = frontier(p_a, kernel, d, sigma, tau)[..., d]
    return float(r) if np.ndim(r) == 0 else r


def worst_case(p_a, kernel, d: int, eps: float, sigma: float):
    """p_adv(d, ε): the smallest possible P[f(Z') = 1] over s' with ≤ d changes and ‖δ‖₂ ≤ ε.

    p_adv = min_{d' ≤ d} V_{d'}(u*; ε/σ) with F(u*; ε/σ) = p_A (Delattre et al. 2026), and the
    fractional knapsack value at ε = 0.  The root u* is bracketed and V is evaluated at the lower
    end, then rounded down, so the value never exceeds the exact worst case.
    """
    p = v.probability(p_a, "p_a")
    kernel = _check_kernel(kernel)
    d = v.integer(d, "d")
    eps = v.nonnegative(eps, "eps")
    sigma = v.positive(sigma, "sigma")
    flat = p.reshape(-1)
    rows, p_idx, d_of = _problems(kernel, d, flat.size)
    vals = _knapsack(flat[p_idx], rows) if eps == 0 else _worst_rows(flat[p_idx], rows, eps / sigma)
    out = _per_budget(vals, p_idx, d_of, flat.size, d, 1.0)[:, d].reshape(p.shape)
    return float(out) if out.ndim == 0 else out


def required_p_a(kernel, d: int, eps: float, sigma: float, tau: float = 0.5) -> float:
    """The smallest p_A that certifies (d, ε): max over d' ≤ d of G_{d'}(ε/σ), rounded up.

    The inverse of the certificate: ``worst_case(p, kernel, d, eps, sigma) >= tau`` for every
    p ≥ required_p_a(...).  Returns inf when no p_A ≤ 1 certifies (d, ε).
    """
    kernel = _check_kernel(kernel)
    d = v.integer(d, "d")
    eps = v.nonnegative(eps, "eps")
    sigma = v.positive(sigma, "sigma")
    tau = v.open_unit(tau, "tau")
    rows, _, _ = _problems(kernel, d, 1)
    if eps == 0:
        big, small = _knapsack_inverse(tau, rows)
    else:
        big, small = _required(np.full(rows.clean.shape[0], eps / sigma), rows, tau)
    # Near 1 the complement 1 − G is the accurate one (rounded down, so 1 − it rounds up).
    need = float(np.where(big > 0.5, 1.0 - small, big).max())
    if not need <= 1.0:
        return math.inf
    # Make the inverse consistent with the (rounded-down) certificate itself.
    step = max(need * MARGIN, 1e-15)
    for _ in range(40):
        if worst_case(need, kernel, d, eps, sigma) >= tau:
            return need
        need, step = min(need + step, 1.0), 4 * step
    return math.inf
