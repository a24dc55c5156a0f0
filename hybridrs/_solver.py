"""The numerical solver behind :mod:`hybridrs.certify`: vectorised, safeguarded and sound.

Every problem (p_A, adversary) carries its own padded row of likelihood-ratio groups, so one
vectorised solve handles all text budgets d and adversaries at once.  Roots are found by Newton
steps in a bracket that is never abandoned; every decision that makes a certificate larger is
taken with the relative margin ``MARGIN``, on the side of the bracket that makes it smaller.
The formulas, with their sources, are in :mod:`hybridrs.certify`'s docstring.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import ndtr, ndtri

from hybridrs.kernels import Groups

#: Relative safety margin applied wherever a computed quantity decides a certificate.
MARGIN = 1e-12
_SQRT2PI = math.sqrt(2 * math.pi)
_TOL = 1e-13  # root tolerance (relative and absolute): tightness only, soundness never depends on it
_SPAN = 40.0  # Φ(±40) is 0 or 1 in float64: brackets at this many ρ-units contain every root.


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
