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

from hybridrs import _validate as v
from hybridrs.kernels import Groups

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

# --------------------------------------------------------------------------------------------
# Groups as rows: every problem (p_A, adversary) carries its own padded row of groups, so that one
# vectorised solve handles all text budgets d and adversaries at once.
# --------------------------------------------------------------------------------------------

class _Rows:
    """Groups stacked as (R, K) arrays, padded with empty groups (c = a = 0, ℓ = +inf)."""

    def __init__(self, clean, adv, ell):
        self.clean, self.adv, self.ell = clean, adv, ell

    @classmethod
    def stack(cls, groups: list[Groups], rows: np.ndarray) -> "_Rows":
        K = max(len(g) for g in groups)
        C = np.zeros((len(groups), K))
        A = np.zeros((len(groups), K))
        L = np.full((len(groups), K), np.inf)
        for i, g in enumerate(groups):
            C[i, :len(g)], A[i, :len(g)], L[i, :len(g)] = g.clean, g.adv, g.log_ratio
        return cls(C[rows], A[rows], L[rows])

    def take(self, idx) -> "_Rows":
        return _Rows(self.clean[idx], self.adv[idx], self.ell[idx])


def _row_pick(arr2d: np.ndarray, col: np.ndarray) -> np.ndarray:
    return np.take_along_axis(arr2d, col[:, None], axis=1)[:, 0]


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
    flat = p.reshape(-1)
    out = _knapsack(flat, _Rows.stack([g], np.zeros(flat.size, dtype=int))).reshape(p.shape)
    return float(out) if out.ndim == 0 else out


def _knapsack(p: np.ndarray, g: _Rows) -> np.ndarray:
    ccum, acum = np.cumsum(g.clean, axis=1), np.cumsum(g.adv, axis=1)
    ctail = np.cumsum(g.clean[:, ::-1], axis=1)[:, ::-1]  # Σ_{j≥k} c_j: accurate where ccum ≈ 1
    K = g.clean.shape[1]
    b = np.minimum((ccum < p[:, None]).sum(axis=1), K - 1)
    bm = np.maximum(b - 1, 0)
    # Clean mass taken from the boundary group, computed on the accurate side.
    prev_c = np.where(b > 0, _row_pick(ccum, bm), 0.0)
    frac = np.where(p > 0.5, _row_pick(ctail, b) - (1.0 - p), p - prev_c)
    frac = np.clip(frac, 0.0, _row_pick(g.clean, b))
    with np.errstate(over="ignore"):
        ratio = np.exp(_row_pick(g.ell, b))  # finite or 0 (ℓ = −inf); never bought at ℓ = +inf
    ratio = np.where(np.isfinite(ratio), ratio, 0.0)
    prev_a = np.where(b > 0, _row_pick(acum, bm), 0.0)
    val = prev_a + frac * ratio
    # Rounding: relative error of the partial sums plus the absolute error of frac·ratio.
    slack = MARGIN * val + 4 * np.finfo(float).eps * _row_pick(ctail, b) * ratio
    return np.clip(val - slack, 0.0, 1.0)


def _knapsack_inverse(tau: float, g: _Rows) -> tuple[np.ndarray, np.ndarray]:
    """Smallest p_A whose knapsack value reaches τ, as (G0, 1 − G0), rounded against certifying."""
    ccum = np.cumsum(g.clean, axis=1)
    ctail = np.cumsum(g.clean[:, ::-1], axis=1)[:, ::-1]
    acum = np.cumsum(np.where(g.clean > 0, g.adv, 0.0), axis=1)  # mass at ℓ = +inf cannot be bought
    tau_eff = tau * (1 + MARGIN)
    K = g.clean.shape[1]
    reach = acum[:, -1] >= tau_eff
    b = np.minimum((acum < tau_eff).sum(axis=1), K - 1)
    bm = np.maximum(b - 1, 0)
    need = tau_eff - np.where(b > 0, _row_pick(acum, bm), 0.0)
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        extra = need / np.exp(_row_pick(g.ell, b))
    g0 = np.where(b > 0, _row_pick(ccum, bm), 0.0) + extra
    g0c = _row_pick(ctail, b) - extra
    return np.where(reach, g0 * (1 + MARGIN), np.inf), np.where(reach, g0c * (1 - MARGIN), -np.inf)


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
            raw = xi - f / df
        tol = rtol * np.maximum(np.abs(l), np.abs(h)) + atol
        good = np.isfinite(raw) & (raw > l) & (raw < h)
        # A Newton target just past an end means the root sits at that end: converged.
        at_end = np.isfinite(raw) & ~good & (np.minimum(np.abs(raw - l), np.abs(raw - h)) <= tol)
        xn = np.where(good, raw, np.where(at_end, np.clip(raw, l, h), 0.5 * (l + h)))
        s = np.where(good | at_end, np.abs(xn - xi), h - l)
        s = np.where(at_end, 0.0, s)
        x[idx], step[idx] = xn, s
        done = (s <= tol) | (h - l <= tol) | at_end
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


def _phi(x):
    with np.errstate(over="ignore"):
        return np.exp(-0.5 * x * x) / _SQRT2PI


def _terms(u, rho, g: _Rows):
    """Per-group x_k = ρ/2 + (u − ℓ_k)/ρ and (u − ℓ_k)/ρ² (for derivatives in ρ)."""
    with np.errstate(invalid="ignore"):
        z = (u[:, None] - g.ell) / rho[:, None]
    return rho[:, None] / 2 + z, z / rho[:, None]


def _pdf_times(w, phi):
    """φ·w with the convention φ = 0 ⟹ 0 (w may be ±inf where the group is at ℓ = ±inf)."""
    with np.errstate(invalid="ignore"):
        return np.where(phi > 0, phi * w, 0.0)


def _V(u, rho, g: _Rows):
    x, _ = _terms(u, rho, g)
    return (g.adv * ndtr(x - rho[:, None])).sum(axis=1)


def _wide_u(rho, g: _Rows, masses):
    """A bracket for u at which every Φ term is 0 (below) or 1 (above) in float64."""
    use = np.isfinite(g.ell) & (masses > 0)
    any_ = use.any(axis=1)
    lmin = np.where(any_, np.where(use, g.ell, np.inf).min(axis=1), 0.0)
    lmax = np.where(any_, np.where(use, g.ell, -np.inf).max(axis=1), 0.0)
    return lmin - rho * rho / 2 - _SPAN * rho - 1.0, lmax + rho * rho / 2 + _SPAN * rho + 1.0


def _u_tau(rho: np.ndarray, g: _Rows, tau_eff: float) -> tuple[np.ndarray, np.ndarray]:
    """Upper end u_hi of a bracket for V(u; ρ) = τ_eff, with V(u_hi; ρ) ≥ τ_eff checked exactly.

    Returns (u_hi, ok); ok is False where V never reaches τ_eff (then no p_A certifies ρ).
    """
    wide_lo, wide_hi = _wide_u(rho, g, g.adv)
    finite = np.isfinite(g.ell)
    fin_adv = np.where(finite, g.adv, 0.0)
    ok = fin_adv.sum(axis=1) >= tau_eff
    # Knapsack boundary: every group below ℓ_b is fully inside at ℓ_b + ρ²/2 + 40ρ and every group
    # from ℓ_b up is outside at ℓ_b + ρ²/2 − 40ρ, so the root lies within 40ρ of ℓ_b + ρ²/2.  On this
    # short bracket V is smooth even when ρ is small (no plateaus between groups).
    K = g.ell.shape[1]
    b = np.minimum((np.cumsum(fin_adv, axis=1) < tau_eff).sum(axis=1), K - 1)
    centre = _row_pick(g.ell, b) + rho * rho / 2
    short = np.isfinite(centre)
    lo = np.where(short, np.maximum(wide_lo, centre - _SPAN * rho), wide_lo)
    hi = np.where(short, np.minimum(wide_hi, centre + _SPAN * rho), wide_hi)
    # One group alone gives V ≥ a_k Φ(y_k): its root is an upper end close to the true root.
    big = (g.adv > tau_eff) & finite
    with np.errstate(divide="ignore", invalid="ignore"):
        cand = np.where(big, g.ell + rho[:, None] * (rho[:, None] / 2 + ndtri(np.where(big, tau_eff / g.adv, 0.5))),
                        np.inf)
    x0 = np.minimum(cand.min(axis=1), hi)
    target = ndtri(tau_eff)

    def fd(u, idx):
        r, gi = rho[idx], g.take(idx)
        x, _ = _terms(u, r, gi)
        y = x - r[:, None]
        val = (gi.adv * ndtr(y)).sum(axis=1)
        dval = (gi.adv * _phi(y)).sum(axis=1) / r
        q = ndtri(val)
        with np.errstate(invalid="ignore", divide="ignore"):
            slope = dval / _phi(q)
        return q - target, slope, val < tau_eff

    # The returned end must be a checked witness: fall back to the wide end where the short one fails.
    hi = np.where(fd(hi, np.arange(rho.size))[2], wide_hi, hi)
    lo, hi, x, step = _newton(fd, lo, hi, x0, rtol=_TOL, atol=_TOL)
    lo, hi = _close(fd, lo, hi, x, step, _TOL, _TOL, side="hi")
    return hi, ok


def _required(rho: np.ndarray, g: _Rows, tau: float, with_slope: bool = False):
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
    phi_x, phi_y = _phi(x), _phi(y)
    dF_drho = (g.clean * _pdf_times(0.5 - z2, phi_x)).sum(axis=1)
    dF_du = (g.clean * phi_x).sum(axis=1) / rho
    dV_drho = (g.adv * _pdf_times(-0.5 - z2, phi_y)).sum(axis=1)
    dV_du = (g.adv * phi_y).sum(axis=1) / rho
    with np.errstate(invalid="ignore", divide="ignore"):
        slope = dF_drho - dF_du * dV_drho / dV_du
    return big, small, slope


def _radius_rows(p: np.ndarray, g: _Rows, tau: float) -> np.ndarray:
    """ρ* = sup{ρ : G(ρ) ≤ p_A} per problem; −inf if not certified at ε = 0, 0 if only there."""
    out = np.full(p.shape, -np.inf)
    cert0 = _knapsack(p, g) >= tau * (1 + MARGIN)
    # p_A = 1: the region is every group of positive clean mass at any ρ, so the radius is infinite
    # exactly when that adversarial mass reaches τ.
    sure = (p == 1.0) & (np.where(g.clean > 0, g.adv, 0.0).sum(axis=1) >= tau * (1 + MARGIN))
    out[sure] = np.inf
    cert0 &= ~sure
    if not cert0.any():
        return out
    idx0 = np.flatnonzero(cert0)
    pp, gg = p[idx0], g.take(idx0)
    q = 1.0 - pp
    hi_side = pp > 0.5
    # Newton's target only steers the iterates (the exact side test decides), so keep it finite.
    target = ndtri(np.clip(pp, 1e-300, 1 - 1e-16))

    def fd(rho, idx):
        big, small, slope = _required(rho, gg.take(idx), tau, with_slope=True)
        hs = hi_side[idx]
        # h = Φ⁻¹(G) − Φ⁻¹(p_A): nearly linear in ρ (exactly so at d = 0).
        zg = np.where(hs, -ndtri(np.clip(small, 0, 1)), ndtri(np.clip(big, 0, 1)))
        certified = np.where(hs, small >= q[idx], big <= pp[idx])
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            return zg - target[idx], slope / _phi(zg), certified

    lo = np.zeros(pp.shape)
    with np.errstate(divide="ignore"):
        hi = np.maximum(ndtri(np.minimum(pp, 1 - 1e-16)) - ndtri(tau), 0.0) + 1.0
    # The Cohen radius (d = 0) bounds every d ≥ 0 radius; grow the bracket only if a check says so.
    todo = np.arange(pp.size)
    for _ in range(60):
        certified = fd(hi[todo], todo)[2]
        if not certified.any():
            break
        todo = todo[certified]
        lo[todo] = hi[todo]
        hi[todo] *= 2
    lo, hi, x, step = _newton(fd, lo, hi, 0.5 * (lo + hi), rtol=_TOL, atol=1e-300)
    lo, hi = _close(fd, lo, hi, x, step, _TOL, 1e-300, side="lo")
    out[idx0] = lo
    return out


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


def _worst_rows(p: np.ndarray, g: _Rows, rho: float) -> np.ndarray:
    rho_v = np.full(p.shape, rho)
    lo, hi = _wide_u(rho_v, g, g.clean)
    q = 1.0 - p
    hi_side = p > 0.5
    p_eff, q_eff = p * (1 - MARGIN), q * (1 + MARGIN)
    target = np.where(hi_side, -ndtri(np.clip(q_eff, 1e-300, 1)), ndtri(np.clip(p_eff, 1e-300, 1)))

    def fd(u, idx):  # below ⟺ F(u) < p_A, with the margin on the side that lowers V
        r, gi = rho_v[idx], g.take(idx)
        x, _ = _terms(u, r, gi)
        hs = hi_side[idx]
        fc = (gi.clean * ndtr(-x)).sum(axis=1)
        f = (gi.clean * ndtr(x)).sum(axis=1)
        z = np.where(hs, -ndtri(np.clip(fc, 0, 1)), ndtri(np.clip(f, 0, 1)))
        dens = (gi.clean * _phi(x)).sum(axis=1) / r
        below = np.where(hs, fc > q_eff[idx], f < p_eff[idx])
        with np.errstate(invalid="ignore", divide="ignore"):
            slope = dens / _phi(z)
        return z - target[idx], slope, below

    all_idx = np.arange(p.size)
    empty = ~fd(lo, all_idx)[2]  # p_A within the zero-ratio mass: the worst case is 0
    full = fd(hi, all_idx)[2]  # p_A beyond float resolution of 1: the whole upper bracket
    # Short bracket around the knapsack boundary group (see _u_tau); the lower end is checked.
    K = g.clean.shape[1]
    b = np.minimum((np.cumsum(g.clean, axis=1) < p[:, None]).sum(axis=1), K - 1)
    centre = _row_pick(g.ell, b) - rho * rho / 2
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
