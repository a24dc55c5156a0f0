"""Certificates: Cohen's Gaussian radius, the discrete knapsack bound and the hybrid Neyman–Pearson
certificate of Delattre et al. (ICML 2026).

Notation (``shared/notes/certificate.md``).  Groups k of a discrete adversary have clean mass c_k,
adversarial mass a_k and log likelihood ratio ℓ_k = log g_k.  With ρ = r/σ,

    F(u; ρ) = Σ_k c_k Φ( ρ/2 + (u − ℓ_k)/ρ )     clean mass of the region {log Λ ≤ u}
    V(u; ρ) = Σ_k a_k Φ(−ρ/2 + (u − ℓ_k)/ρ )     adversarial mass of the same region

The Neyman–Pearson worst case at image radius r is V(u*; ρ) with F(u*; ρ) = p_A.  Both F and V
increase in u, so (d, ε) is certified iff F(u_τ; ρ) ≤ p_A where V(u_τ; ρ) = τ.  The function

    G(ρ) = F(u_τ(ρ); ρ)     (the smallest p_A that certifies radius ρ)

does not depend on p_A; the radius is r*(d) = σ · sup{ρ : G(ρ) ≤ p_A}.  At ρ = 0 the worst case
is the fractional knapsack of Chen et al. (2025).

Soundness (certificate.md §4).  Every root is kept inside a bracket and the side that makes the
certificate *smaller* is used: a certified radius ρ_lo comes with a witness u with V(u) ≥ τ and
F(u) ≤ p_A, both checked with a relative margin of 1e-12 that covers float64 rounding of the
masses and sums; the reported radius is the lower end of its bracket, rounded down.  When p_A is
above 1/2 the comparison is made on complements, 1 − F = Σ c_k Φ(−·), to avoid cancellation.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
from scipy.special import ndtr, ndtri

from . import _validate as v
from .kernels import Groups

#: Relative safety margin applied wherever a computed quantity decides a certificate.
MARGIN = 1e-12
_SPAN = 40.0  # Φ(±40) is 0 or 1 in float64: brackets at this many ρ-units contain every root.


# --------------------------------------------------------------------------------------------
# Cohen et al. (2019)
# --------------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------------
# The ε = 0 certificate: fractional knapsack (Chen et al. 2025)
# --------------------------------------------------------------------------------------------

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
    out = _knapsack(p.ravel(), g).reshape(p.shape)
    return float(out) if out.ndim == 0 else out


def _cumulative(g: Groups):
    c, a = g.clean, g.adv
    ccum, acum = np.cumsum(c), np.cumsum(a)
    ctail = np.cumsum(c[::-1])[::-1]  # Σ_{j≥k} c_j: accurate near the top, where ccum is ≈ 1
    return ccum, acum, ctail


def _knapsack(p: np.ndarray, g: Groups) -> np.ndarray:
    ccum, acum, ctail = _cumulative(g)
    K = len(g)
    b = np.minimum(np.searchsorted(ccum, p, side="left"), K - 1)
    hi_side = p > 0.5
    # Clean mass taken from the boundary group, computed on the accurate side.
    prev_c = np.where(b > 0, ccum[np.maximum(b - 1, 0)], 0.0)
    frac = np.where(hi_side, ctail[b] - (1.0 - p), p - prev_c)
    frac = np.clip(frac, 0.0, g.clean[b])
    ratio = np.exp(g.log_ratio[b])  # finite or 0 (ℓ = −inf); the boundary never has ℓ = +inf
    ratio = np.where(np.isfinite(ratio), ratio, 0.0)
    prev_a = np.where(b > 0, acum[np.maximum(b - 1, 0)], 0.0)
    val = prev_a + frac * ratio
    # Rounding: relative error of the partial sums plus the absolute error of frac·ratio.
    slack = MARGIN * val + 4 * np.finfo(float).eps * ctail[b] * ratio
    return np.clip(val - slack, 0.0, 1.0)


def _knapsack_inverse(tau: float, g: Groups) -> tuple[float, float]:
    """Smallest p_A whose knapsack value reaches τ, as (G0, 1 − G0), rounded against certifying."""
    ccum, acum, ctail = _cumulative(g)
    tau_eff = tau * (1 + MARGIN)
    if acum[-1] < tau_eff:
        return math.inf, -math.inf
    b = int(np.searchsorted(acum, tau_eff, side="left"))
    need = tau_eff - (acum[b - 1] if b > 0 else 0.0)
    ratio = math.exp(g.log_ratio[b])
    extra = need / ratio
    g0 = (ccum[b - 1] if b > 0 else 0.0) + extra
    g0c = ctail[b] - extra
    return g0 * (1 + MARGIN), g0c * (1 - MARGIN)


# --------------------------------------------------------------------------------------------
# Vectorised bracketed root finding
# --------------------------------------------------------------------------------------------

def _bracket_root(f: Callable[[np.ndarray, np.ndarray], np.ndarray], lo, hi, flo, fhi,
                  rtol: float, atol: float = 0.0, max_iter: int = 200):
    """Illinois (modified regula falsi) on many increasing functions at once.

    Invariant for every problem i: f(lo_i) < 0 ≤ f(hi_i).  ``f(x, idx)`` evaluates the problems
    ``idx`` at ``x``.  A step that fails to halve the bracket is followed by a bisection step, so
    convergence is never slower than bisection.  Returns the final (lo, hi).
    """
    lo, hi, flo, fhi = (np.array(a, dtype=np.float64, copy=True) for a in (lo, hi, flo, fhi))
    side = np.zeros(lo.shape, dtype=np.int8)
    bisect = np.zeros(lo.shape, dtype=bool)
    active = np.ones(lo.shape, dtype=bool)
    for _ in range(max_iter):
        active &= (hi - lo) > rtol * np.maximum(np.abs(lo), np.abs(hi)) + atol
        idx = np.flatnonzero(active)
        if idx.size == 0:
            break
        l, h, fl, fh = lo[idx], hi[idx], flo[idx], fhi[idx]
        mid = 0.5 * (l + h)
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            x = h - fh * (h - l) / (fh - fl)
        use_mid = bisect[idx] | ~np.isfinite(x) | (x <= l) | (x >= h)
        x = np.where(use_mid, mid, x)
        stuck = (x <= l) | (x >= h)  # the bracket is as small as float64 allows
        active[idx[stuck]] = False
        fx = f(x, idx)
        width_before = h - l
        down = fx < 0
        # Illinois: halve the stale end's value when the same end moves twice.
        fh_new = np.where(down & (side[idx] == -1), 0.5 * fh, fh)
        fl_new = np.where(~down & (side[idx] == 1), 0.5 * fl, fl)
        lo[idx] = np.where(down, x, l)
        flo[idx] = np.where(down, fx, fl_new)
        hi[idx] = np.where(down, h, x)
        fhi[idx] = np.where(down, fh_new, fx)
        side[idx] = np.where(down, -1, 1)
        bisect[idx] = (hi[idx] - lo[idx]) > 0.5 * width_before
    return lo, hi


# --------------------------------------------------------------------------------------------
# The hybrid certificate
# --------------------------------------------------------------------------------------------

def _args(u: np.ndarray, rho: np.ndarray, g: Groups) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return rho[:, None] / 2 + (u[:, None] - g.log_ratio[None, :]) / rho[:, None]


def _F(u, rho, g, complement: bool = False):
    x = _args(u, rho, g)
    return (g.clean * ndtr(-x if complement else x)).sum(axis=1)


def _V(u, rho, g):
    return (g.adv * ndtr(_args(u, rho, g) - rho[:, None])).sum(axis=1)


def _u_bracket(rho: np.ndarray, g: Groups):
    finite = g.log_ratio[np.isfinite(g.log_ratio)]
    lmin, lmax = (finite.min(), finite.max()) if finite.size else (0.0, 0.0)
    return (lmin - rho * rho / 2 - _SPAN * rho - 1.0, lmax + rho * rho / 2 + _SPAN * rho + 1.0)


def _required(rho: np.ndarray, g: Groups, tau: float):
    """G(ρ), the smallest p_A certifying radius ρ against one adversary, for ρ > 0.

    Returns (G rounded up, 1 − G rounded down).  Solves V(u; ρ) = τ(1 + margin) inside a bracket
    and evaluates F at the upper end, where V ≥ τ is guaranteed: any such u gives F(u) ≥ G.
    """
    tau_eff = tau * (1 + MARGIN)
    lo, hi = _u_bracket(rho, g)
    log_tau = math.log(tau_eff)

    def f(u, idx):
        with np.errstate(divide="ignore"):
            return np.log(_V(u, rho[idx], g)) - log_tau

    all_idx = np.arange(rho.size)
    flo, fhi = f(lo, all_idx), f(hi, all_idx)
    ok = (flo < 0) & (fhi >= 0)
    _, u_hi = _bracket_root(f, lo, hi, np.where(ok, flo, -1.0), np.where(ok, fhi, 1.0), rtol=4e-16, atol=1e-300)
    big = np.where(ok, _F(u_hi, rho, g) * (1 + MARGIN), np.inf)
    small = np.where(ok, _F(u_hi, rho, g, complement=True) * (1 - MARGIN), -np.inf)
    return big, small


def _radius_one(p: np.ndarray, g: Groups, tau: float) -> np.ndarray:
    """ρ* = sup{ρ : G(ρ) ≤ p_A} for one adversary; −inf if not certified at ε = 0."""
    out = np.full(p.shape, -np.inf)
    cert0 = _knapsack(p, g) >= tau * (1 + MARGIN)
    if not cert0.any():
        return out
    idx0 = np.flatnonzero(cert0)
    pp = p[idx0]
    q = 1.0 - pp
    hi_side = pp > 0.5

    def psi(rho, idx):
        big, small = _required(rho, g, tau)
        # ψ < 0 ⟺ certified at ρ, computed on the accurate side.
        return np.where(hi_side[idx], q[idx] - small, big - pp[idx])

    g0, g0c = _knapsack_inverse(tau, g)
    flo = np.where(hi_side, q - g0c, g0 - pp)
    flo = np.minimum(flo, -1e-300)
    lo = np.zeros(pp.shape)
    with np.errstate(divide="ignore"):
        hi = np.maximum(ndtri(np.minimum(pp, 1 - 1e-16)) - ndtri(tau), 0.0) + 1.0
    all_idx = np.arange(pp.size)
    fhi = psi(hi, all_idx)
    for _ in range(60):  # the Cohen radius bounds every d ≥ 0 radius; grow only if needed
        grow = fhi < 0
        if not grow.any():
            break
        lo = np.where(grow, hi, lo)
        flo = np.where(grow, fhi, flo)
        hi = np.where(grow, 2 * hi, hi)
        fhi[grow] = psi(hi[grow], np.flatnonzero(grow))
    lo, _ = _bracket_root(psi, lo, hi, flo, fhi, rtol=1e-13)
    out[idx0] = lo
    return out


def _check_kernel(kernel):
    if not hasattr(kernel, "adversaries"):
        raise ValueError(f"kernel must be a hybridrs kernel (UniformKernel, AbsorbingKernel, ...), "
                         f"got {type(kernel).__name__}")
    return kernel


def frontier(p_a, kernel, d_max: int, sigma: float, tau: float = 0.5) -> np.ndarray:
    """Certified image radius r*(d) for every text budget d = 0..d_max.

    r*(d) = σ · sup{ρ : V_{d'}(u*; ρ) ≥ τ for all d' ≤ d and every canonical adversary}, the
    largest ℓ2 radius ε such that every (s', v') with at most d token changes and ‖v' − v‖₂ ≤ ε
    keeps P[f = 1] ≥ τ (Delattre et al. 2026).  Conventions: −inf where (d, 0) is not certified,
    0.0 where only ε = 0 is.  Non-increasing in d by construction (the threat "≤ d" is the union
    of "exactly d'" for d' ≤ d).

    ``p_a`` is a float (returns shape (d_max + 1,)) or an array of shape (B,) (returns
    (B, d_max + 1)).  Vectorised over p_A; loops over d and adversaries only.
    """
    p = v.probability(p_a, "p_a")
    kernel = _check_kernel(kernel)
    d_max = v.integer(d_max, "d_max")
    sigma = v.positive(sigma, "sigma")
    tau = v.open_unit(tau, "tau")
    flat = p.reshape(-1)
    rho = np.empty((flat.size, d_max + 1))
    running = np.full(flat.size, np.inf)
    for d in range(d_max + 1):
        for g in kernel.adversaries(d):
            running = np.minimum(running, _radius_one(flat, g, tau))
        rho[:, d] = running
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
    out = np.ones(flat.size)
    for dd in range(d + 1):
        for g in kernel.adversaries(dd):
            out = np.minimum(out, _knapsack(flat, g) if eps == 0 else _worst_one(flat, g, eps / sigma))
    out = out.reshape(p.shape)
    return float(out) if out.ndim == 0 else out


def _worst_one(p: np.ndarray, g: Groups, rho: float) -> np.ndarray:
    rho_v = np.full(p.shape, rho)
    lo, hi = _u_bracket(rho_v, g)
    q = 1.0 - p
    hi_side = p > 0.5

    def f(u, idx):  # < 0 ⟺ F(u) < p_A, with the margin on the side that lowers V
        return np.where(hi_side[idx], q[idx] * (1 + MARGIN) - _F(u, rho_v[idx], g, complement=True),
                        _F(u, rho_v[idx], g) - p[idx] * (1 - MARGIN))

    all_idx = np.arange(p.size)
    flo, fhi = f(lo, all_idx), f(hi, all_idx)
    empty = flo >= 0  # p_A within the zero-ratio mass: the worst case is 0
    full = fhi < 0  # p_A beyond float resolution of 1: take the whole upper bracket
    ok = ~empty & ~full
    u_lo, _ = _bracket_root(f, lo, hi, np.where(ok, flo, -1.0), np.where(ok, fhi, 1.0), rtol=4e-16, atol=1e-300)
    u = np.where(full, hi, u_lo)
    val = _V(u, rho_v, g) * (1 - MARGIN)
    return np.where(empty | (p == 0), 0.0, np.clip(val, 0.0, 1.0))


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
    need = 0.0
    for dd in range(d + 1):
        for g in kernel.adversaries(dd):
            if eps == 0:
                g0, _ = _knapsack_inverse(tau, g)
            else:
                big, _ = _required(np.array([eps / sigma]), g, tau)
                g0 = float(big[0])
            need = max(need, g0)
    return need if need <= 1.0 else math.inf
