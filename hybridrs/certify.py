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
import numpy as np
from scipy.special import ndtr, ndtri

from . import _validate as v
from .kernels import Groups

#: Relative safety margin applied wherever a computed quantity decides a certificate.
MARGIN = 1e-12
_TOL = 1e-13  # root tolerance (relative and absolute): tightness only, soundness never depends on it
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
    ccum, _, ctail = _cumulative(g)
    acum = np.cumsum(np.where(g.clean > 0, g.adv, 0.0))  # mass at ℓ = +inf cannot be bought
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
# Vectorised safeguarded Newton inside a bracket
# --------------------------------------------------------------------------------------------

def _newton(fd, lo, hi, x0, rtol: float, atol: float, max_iter: int = 100):
    """Safeguarded Newton on many increasing functions at once.

    ``fd(x, idx) -> (f, df, below)`` evaluates problems ``idx`` at ``x``: a transformed value f
    (nearly linear in x, for fast convergence), its derivative, and ``below`` (the *exact* side
    test, deciding which end of the bracket x replaces: below ⟹ x is a new lower end).  Steps that
    leave the bracket become bisections, so the method never does worse than bisection.  Returns
    (lo, hi, x, step): the bracket, the last iterate and the last step length.
    """
    lo, hi = lo.astype(np.float64, copy=True), hi.astype(np.float64, copy=True)
    x = np.where((x0 > lo) & (x0 < hi), x0, 0.5 * (lo + hi))
    step = np.full(x.shape, np.inf)
    active = np.ones(x.shape, dtype=bool)
    for _ in range(max_iter):
        idx = np.flatnonzero(active)
        if idx.size == 0:
            break
        xi = x[idx]
        f, df, below = fd(xi, idx)
        l = np.where(below, xi, lo[idx])
        h = np.where(below, hi[idx], xi)
        lo[idx], hi[idx] = l, h
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            xn = xi - f / df
        good = np.isfinite(xn) & (xn > l) & (xn < h)
        xn = np.where(good, xn, 0.5 * (l + h))
        s = np.where(good, np.abs(xn - xi), h - l)
        tol = rtol * np.maximum(np.abs(l), np.abs(h)) + atol
        x[idx], step[idx] = xn, s
        done = (s <= tol) | (h - l <= tol) | (xn <= l) | (xn >= h)
        active[idx[done]] = False
    return lo, hi, x, step


def _close(fd, lo, hi, x, step, rtol, atol, side: str):
    """Tighten the bracket end that matters next to a converged Newton iterate.

    Newton often converges from one side only, leaving the other end far away; step a little past
    the iterate towards that end, widening the step until the exact side test confirms it.
    """
    lo, hi = lo.copy(), hi.copy()
    pad = np.maximum(4 * step, rtol * np.abs(x) + atol)
    todo = np.arange(x.size)
    for _ in range(12):
        if todo.size == 0:
            break
        xt = x[todo] + pad[todo] if side == "hi" else x[todo] - pad[todo]
        xt = np.clip(xt, lo[todo], hi[todo])
        _, _, below = fd(xt, todo)
        ok = ~below if side == "hi" else below
        if side == "hi":
            hi[todo[ok]] = xt[ok]
        else:
            lo[todo[ok]] = xt[ok]
        todo = todo[~ok]
        pad[todo] *= 16
    return lo, hi


# --------------------------------------------------------------------------------------------
# The hybrid certificate
# --------------------------------------------------------------------------------------------

_SQRT2PI = math.sqrt(2 * math.pi)


def _terms(u, rho, g):
    """Per-group x_k = ρ/2 + (u − ℓ_k)/ρ and (u − ℓ_k)/ρ² (for derivatives in ρ)."""
    with np.errstate(invalid="ignore"):
        z = (u[:, None] - g.log_ratio[None, :]) / rho[:, None]
    return rho[:, None] / 2 + z, z / rho[:, None]


def _pdf_times(w, phi):
    """φ·w with the convention φ = 0 ⟹ 0 (w may be ±inf where the group is at ℓ = ±inf)."""
    with np.errstate(invalid="ignore"):
        return np.where(phi > 0, phi * w, 0.0)


def _F(u, rho, g, complement: bool = False):
    x, _ = _terms(u, rho, g)
    return (g.clean * ndtr(-x if complement else x)).sum(axis=1)


def _V(u, rho, g):
    x, _ = _terms(u, rho, g)
    return (g.adv * ndtr(x - rho[:, None])).sum(axis=1)


def _wide_u(rho, g, masses):
    """A bracket for u at which every Φ term is 0 (below) or 1 (above) in float64."""
    ell = g.log_ratio[np.isfinite(g.log_ratio) & (masses > 0)]
    lmin, lmax = (ell.min(), ell.max()) if ell.size else (0.0, 0.0)
    return lmin - rho * rho / 2 - _SPAN * rho - 1.0, lmax + rho * rho / 2 + _SPAN * rho + 1.0


def _u_tau(rho: np.ndarray, g: Groups, tau_eff: float) -> tuple[np.ndarray, np.ndarray]:
    """Upper end u_hi of a bracket for V(u; ρ) = τ_eff, with V(u_hi; ρ) ≥ τ_eff checked exactly.

    Returns (u_hi, ok); ok is False where V never reaches τ_eff (then no p_A certifies ρ).
    """
    lo, hi = _wide_u(rho, g, g.adv)
    finite = np.isfinite(g.log_ratio)
    ok = np.full(rho.shape, g.adv[finite].sum() >= tau_eff)
    # Knapsack boundary: every group below ℓ_b is fully inside at ℓ_b + ρ²/2 + 40ρ and every group
    # from ℓ_b up is outside at ℓ_b + ρ²/2 − 40ρ, so the root lies within 40ρ of ℓ_b + ρ²/2.  On this
    # short bracket V is smooth even when ρ is small (no plateaus between groups).
    b = min(int(np.searchsorted(np.cumsum(np.where(finite, g.adv, 0.0)), tau_eff)), len(g) - 1)
    if np.isfinite(g.log_ratio[b]):
        centre = g.log_ratio[b] + rho * rho / 2
        lo, hi = np.maximum(lo, centre - _SPAN * rho), np.minimum(hi, centre + _SPAN * rho)
    x0 = hi
    target = ndtri(tau_eff)

    def fd(u, idx):
        r = rho[idx]
        x, _ = _terms(u, r, g)
        y = x - r[:, None]
        val = (g.adv * ndtr(y)).sum(axis=1)
        dval = (g.adv * np.exp(-0.5 * y * y)).sum(axis=1) / (_SQRT2PI * r)
        q = ndtri(val)
        with np.errstate(invalid="ignore", divide="ignore"):
            slope = dval / (np.exp(-0.5 * q * q) / _SQRT2PI)
        return q - target, slope, val < tau_eff

    # The returned end must be a checked witness: fall back to the wide end where the short one fails.
    _, wide_hi = _wide_u(rho, g, g.adv)
    hi = np.where(fd(hi, np.arange(rho.size))[2], wide_hi, hi)
    lo, hi, x, step = _newton(fd, lo, hi, x0, rtol=_TOL, atol=_TOL)
    lo, hi = _close(fd, lo, hi, x, step, _TOL, _TOL, side="hi")
    return hi, ok


def _required(rho: np.ndarray, g: Groups, tau: float, with_slope: bool = False):
    """G(ρ), the smallest p_A certifying image radius ρσ against one adversary (ρ > 0).

    Returns (G rounded up, 1 − G rounded down[, dG/dρ]).  F is evaluated at the witness u_hi where
    V(u_hi) ≥ τ(1 + margin) was checked, so F(u_hi) ≥ G: the rounding only ever lowers the radius.
    """
    u, ok = _u_tau(rho, g, tau * (1 + MARGIN))
    x, z2 = _terms(u, rho, g)
    big = np.where(ok, (g.clean * ndtr(x)).sum(axis=1) * (1 + MARGIN), np.inf)
    small = np.where(ok, (g.clean * ndtr(-x)).sum(axis=1) * (1 - MARGIN), -np.inf)
    if not with_slope:
        return big, small
    y = x - rho[:, None]
    phi_x, phi_y = np.exp(-0.5 * x * x) / _SQRT2PI, np.exp(-0.5 * y * y) / _SQRT2PI
    dF_drho = (g.clean * _pdf_times(0.5 - z2, phi_x)).sum(axis=1)
    dF_du = (g.clean * phi_x).sum(axis=1) / rho
    dV_drho = (g.adv * _pdf_times(-0.5 - z2, phi_y)).sum(axis=1)
    dV_du = (g.adv * phi_y).sum(axis=1) / rho
    with np.errstate(invalid="ignore", divide="ignore"):
        slope = dF_drho - dF_du * dV_drho / dV_du
    return big, small, slope


def _radius_one(p: np.ndarray, g: Groups, tau: float) -> np.ndarray:
    """ρ* = sup{ρ : G(ρ) ≤ p_A} for one adversary; −inf if not certified at ε = 0, 0 if only there."""
    out = np.full(p.shape, -np.inf)
    cert0 = _knapsack(p, g) >= tau * (1 + MARGIN)
    # p_A = 1: the region is every group of positive clean mass at any ρ, so the radius is infinite
    # exactly when that adversarial mass reaches τ.
    sure = (p == 1.0) & (g.adv[g.clean > 0].sum() >= tau * (1 + MARGIN))
    out[sure] = np.inf
    cert0 &= ~sure
    if not cert0.any():
        return out
    idx0 = np.flatnonzero(cert0)
    pp = p[idx0]
    q = 1.0 - pp
    hi_side = pp > 0.5
    # Newton's target only steers the iterates (the exact side test decides), so keep it finite.
    target = ndtri(np.clip(pp, 1e-300, 1 - 1e-16))

    def fd(rho, idx):
        big, small, slope = _required(rho, g, tau, with_slope=True)
        hs = hi_side[idx]
        # h = Φ⁻¹(G) − Φ⁻¹(p_A): nearly linear in ρ (exactly so at d = 0).
        zg = np.where(hs, -ndtri(np.clip(small, 0, 1)), ndtri(np.clip(big, 0, 1)))
        certified = np.where(hs, small >= q[idx], big <= pp[idx])
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            return zg - target[idx], slope / (np.exp(-0.5 * zg * zg) / _SQRT2PI), certified

    lo = np.zeros(pp.shape)
    with np.errstate(divide="ignore"):
        hi = np.maximum(ndtri(np.minimum(pp, 1 - 1e-16)) - ndtri(tau), 0.0) + 1.0
    # The Cohen radius (d = 0) bounds every d ≥ 0 radius; grow the bracket only if a check says so.
    for _ in range(60):
        _, _, certified = fd(hi, np.arange(pp.size))
        if not certified.any():
            break
        lo = np.where(certified, hi, lo)
        hi = np.where(certified, 2 * hi, hi)
    lo, hi, x, step = _newton(fd, lo, hi, 0.5 * (lo + hi), rtol=_TOL, atol=1e-300)
    lo, hi = _close(fd, lo, hi, x, step, _TOL, 1e-300, side="lo")
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
    lo, hi = _wide_u(rho_v, g, g.clean)
    q = 1.0 - p
    hi_side = p > 0.5
    p_eff, q_eff = p * (1 - MARGIN), q * (1 + MARGIN)
    target = np.where(hi_side, -ndtri(np.clip(q_eff, 1e-300, 1)), ndtri(np.clip(p_eff, 1e-300, 1)))

    def fd(u, idx):  # below ⟺ F(u) < p_A, with the margin on the side that lowers V
        r = rho_v[idx]
        x, _ = _terms(u, r, g)
        hs = hi_side[idx]
        fc = (g.clean * ndtr(-x)).sum(axis=1)
        f = (g.clean * ndtr(x)).sum(axis=1)
        z = np.where(hs, -ndtri(np.clip(fc, 0, 1)), ndtri(np.clip(f, 0, 1)))
        dens = (g.clean * np.exp(-0.5 * x * x)).sum(axis=1) / (_SQRT2PI * r)
        below = np.where(hs, fc > q_eff[idx], f < p_eff[idx])
        with np.errstate(invalid="ignore", divide="ignore"):
            slope = dens / (np.exp(-0.5 * z * z) / _SQRT2PI)
        return z - target[idx], slope, below

    all_idx = np.arange(p.size)
    empty = ~fd(lo, all_idx)[2]  # p_A within the zero-ratio mass: the worst case is 0
    full = fd(hi, all_idx)[2]  # p_A beyond float resolution of 1: the whole upper bracket
    # Short bracket around the knapsack boundary group (see _u_tau); the lower end is checked.
    ccum = np.cumsum(g.clean)
    b = np.minimum(np.searchsorted(ccum, p), len(g) - 1)
    centre = g.log_ratio[b] - rho * rho / 2
    with np.errstate(invalid="ignore"):
        lo_s = np.where(np.isfinite(centre), np.maximum(lo, centre - _SPAN * rho), lo)
        hi_s = np.where(np.isfinite(centre), np.minimum(hi, centre + _SPAN * rho), hi)
    lo_s = np.where(fd(lo_s, all_idx)[2], lo_s, lo)
    lo2, hi2, x, step = _newton(fd, lo_s, np.maximum(hi_s, lo_s), 0.5 * (lo_s + hi_s), rtol=_TOL, atol=_TOL)
    lo2, _ = _close(fd, lo2, hi2, x, step, _TOL, _TOL, side="lo")
    u = np.where(full, hi, lo2)
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
