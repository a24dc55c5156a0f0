"""Independent high-precision (mpmath, 40 digits) path to the hybrid certificate.

The likelihood-ratio groups of the uniform and absorbing kernels from exact integer counts, the CDF
F and value V of the joint likelihood ratio, the threshold u*, the worst case p_adv, the fractional
knapsack value and the radius ρ*.  It shares no code with :mod:`hybridrs.certify` and is the
reference the book (chapter 6), the tests and the benchmarks compare the package with.

Notation: groups k with clean mass c_k, adversarial mass a_k and log ratio ℓ_k = log g_k; ρ = r/σ;
W = ⟨z_v − v, δ⟩/(σ r) is N(0, 1) under the clean law and N(ρ, 1) under the adversarial one, and
log Λ = ℓ_k + ρW − ρ²/2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import mpmath
from scipy.special import ndtri

from hybridrs import _validate as v

_DPS = 40



@dataclass(frozen=True)
class MPGroups:
    """Groups as mpmath numbers: clean masses c_k, adversarial masses a_k, log ratios ℓ_k.

    ℓ_k = −inf marks a_k = 0 (the group lies inside every region); groups with c_k = 0 are
    dropped (they never enter a region and add nothing to F or V).  Sorted by ℓ_k.
    """

    clean: tuple
    adv: tuple
    log_ratio: tuple


def _mp_sorted(items) -> MPGroups:
    items = sorted((it for it in items if it[0] > 0), key=lambda t: t[2])
    return MPGroups(tuple(t[0] for t in items), tuple(t[1] for t in items), tuple(t[2] for t in items))


def mp_uniform_groups(d: int, vocab_size: int, beta: float, dps: int = _DPS) -> MPGroups:
    """Groups of a d-change adversary under the uniform kernel, in ``dps``-digit arithmetic.

    With a = β/(V − 1), i = #changed positions with z ≠ s, j = #changed positions with z ≠ s':
    N(i, j) = C(d, i)·C(i, d − j)·(V − 2)^(i + j − d) (exact integer),
    c = N·a^i(1 − β)^(d − i), a = N·a^j(1 − β)^(d − j), ℓ = (j − i)·log(a/(1 − β))
    (Chen et al. 2025; Delattre et al. 2026).  ``beta`` is converted exactly from its float value.
    """
    d = v.integer(d, "d")
    V = v.integer(vocab_size, "vocab_size", minimum=2)
    b = v.beta(beta)
    with mpmath.workdps(dps):
        mb = mpmath.mpf(b)
        a, keep = mb / (V - 1), 1 - mb
        items = []
        for i in range(d + 1):
            for j in range(d - i, d + 1):
                n = math.comb(d, i) * math.comb(i, d - j) * (V - 2) ** (i + j - d)
                if n == 0:
                    continue
                c = n * a ** i * keep ** (d - i)
                ad = n * a ** j * keep ** (d - j)
                lr = -mpmath.inf if ad == 0 else (mpmath.log(ad) - mpmath.log(c) if c > 0 else mpmath.inf)
                items.append((c, ad, lr))
        return _mp_sorted(items)


def mp_absorbing_groups(d: int, beta: float, dps: int = _DPS) -> MPGroups:
    """Absorbing kernel, d changes: ℓ = −inf with c = 1 − β^d (some changed position kept) and
    ℓ = 0 with c = a = β^d (all d masked) (Chen et al. 2025)."""
    d = v.integer(d, "d")
    b = v.beta(beta)
    with mpmath.workdps(dps):
        m = mpmath.mpf(b) ** d
        return _mp_sorted([(1 - m, mpmath.mpf(0), -mpmath.inf), (m, m, mpmath.mpf(0))])


def _arg(u, rho, lr):
    return rho / 2 + (u - lr) / rho


def mp_F(u, rho, g: MPGroups):
    """F(u; ρ) = Σ_k c_k Φ(ρ/2 + (u − ℓ_k)/ρ), the clean mass of {log Λ ≤ u} (ρ > 0)."""
    tot = mpmath.mpf(0)
    for c, lr in zip(g.clean, g.log_ratio):
        tot += c if lr == -mpmath.inf else c * mpmath.ncdf(_arg(u, rho, lr))
    return tot


def mp_V(u, rho, g: MPGroups):
    """V(u; ρ) = Σ_k a_k Φ(−ρ/2 + (u − ℓ_k)/ρ), the adversarial mass of {log Λ ≤ u} (ρ > 0)."""
    tot = mpmath.mpf(0)
    for a, lr in zip(g.adv, g.log_ratio):
        if a != 0:
            tot += a * mpmath.ncdf(_arg(u, rho, lr) - rho)
    return tot


def _mp_root(f, lo, hi, flo, fhi, tol, max_iter=400):
    """Root of an increasing f on [lo, hi] with f(lo) < 0 ≤ f(hi): Illinois steps, bisection when
    a step fails to halve the bracket.  Returns the final bracket."""
    side, halve = 0, False
    for _ in range(max_iter):
        if hi - lo <= tol:
            break
        width = hi - lo
        x = (lo + hi) / 2 if halve else hi - fhi * (hi - lo) / (fhi - flo)
        if not lo < x < hi:
            x = (lo + hi) / 2
        fx = f(x)
        if fx < 0:
            lo, flo = x, fx
            if side == -1:
                fhi /= 2
            side = -1
        else:
            hi, fhi = x, fx
            if side == 1:
                flo /= 2
            side = 1
        halve = (hi - lo) > width / 2
    return lo, hi


def _u_bracket(rho, g: MPGroups):
    finite = [lr for lr in g.log_ratio if mpmath.isfinite(lr)]
    lmin, lmax = (min(finite), max(finite)) if finite else (mpmath.mpf(0), mpmath.mpf(0))
    pad = rho * rho / 2 + 60 * rho + 1
    return lmin - pad, lmax + pad


def mp_threshold(p_a: float, rho: float, g: MPGroups, dps: int = _DPS):
    """u*(ρ), the root of F(u*; ρ) = p_A (unique: F is continuous and strictly increasing for
    ρ > 0).  Returns −inf when p_A is covered by the ℓ = −inf mass alone."""
    with mpmath.workdps(dps):
        p, r = mpmath.mpf(p_a), mpmath.mpf(rho)
        lo, hi = _u_bracket(r, g)
        f = lambda u: mp_F(u, r, g) - p
        flo, fhi = f(lo), f(hi)
        if flo >= 0:
            return -mpmath.inf
        if fhi < 0:
            return hi
        # Newton steps safeguarded by the bracket: a handful of iterations once close.
        fp = lambda u: sum(c * mpmath.npdf(_arg(u, r, lr)) for c, lr in zip(g.clean, g.log_ratio)
                           if lr != -mpmath.inf) / r
        tol = mpmath.mpf(10) ** (-dps + 8) * (1 + abs(hi))
        x = (lo + hi) / 2
        for _ in range(600):
            fx = f(x)
            if fx == 0:
                return x
            if fx < 0:
                lo = x
            else:
                hi = x
            dfx = fp(x)
            xn = x - fx / dfx if dfx > 0 else lo - 1
            if not lo < xn < hi:
                xn = (lo + hi) / 2
            if abs(xn - x) <= tol or hi - lo <= tol:
                return xn
            x = xn
        raise RuntimeError("mp_threshold did not converge")


def mp_knapsack(p_a: float, g: MPGroups, dps: int = _DPS):
    """Fractional knapsack value (the ρ → 0 limit): fill p_A with groups in increasing ℓ, split
    the boundary group, sum the adversarial masses (Chen et al. 2025)."""
    with mpmath.workdps(dps):
        left, val = mpmath.mpf(p_a), mpmath.mpf(0)
        for c, a in zip(g.clean, g.adv):
            take = min(c, left)
            val += a * take / c
            left -= take
            if left <= 0:
                break
        return val


def mp_worst_case(p_a: float, rho: float, g: MPGroups, dps: int = _DPS):
    """p_adv = V(u*(ρ); ρ) with F(u*; ρ) = p_A (Delattre et al. 2026); the knapsack at ρ = 0."""
    p_a = float(v.probability(p_a, "p_a", allow_array=False))
    rho = v.nonnegative(rho, "rho")
    if rho == 0:
        return mp_knapsack(p_a, g, dps)
    with mpmath.workdps(dps):
        u = mp_threshold(p_a, rho, g, dps)
        return mpmath.mpf(0) if u == -mpmath.inf else mp_V(u, mpmath.mpf(rho), g)


def mp_radius(p_a: float, g: MPGroups, tau: float, dps: int = _DPS, rho_tol: float = 1e-20):
    """ρ* = sup{ρ : V(u*(ρ); ρ) ≥ τ} for one adversary (r* = σ·ρ*), by bracketing in ρ.

    −inf when the knapsack value at ρ = 0 is below τ (not certified even at ε = 0); 0 when the
    certificate holds at ρ = 0 but fails already at ρ = 1e-12.  V is non-increasing in ρ and is
    below Cohen's value Φ(Φ⁻¹(p_A) − ρ), which bounds the bracket.
    """
    p_a = float(v.probability(p_a, "p_a", allow_array=False))
    tau = v.open_unit(tau, "tau")
    with mpmath.workdps(dps):
        t = mpmath.mpf(tau)
        if mp_knapsack(p_a, g, dps) < t:
            return -mpmath.inf
        # log τ − log V is increasing in ρ and closer to linear than V itself: fewer steps.
        f = lambda r: mpmath.log(t) - mpmath.log(mp_worst_case(p_a, r, g, dps))
        lo = mpmath.mpf("1e-12")
        flo = f(lo)
        if flo >= 0:
            return mpmath.mpf(0)
        if p_a >= 1:
            raise ValueError("p_a = 1 certifies every radius; pass p_a < 1")
        hi = mpmath.mpf(float(ndtri(p_a) - ndtri(tau)) + 1)
        fhi = f(hi)
        lo, _ = _mp_root(f, lo, hi, flo, fhi, tol=mpmath.mpf(rho_tol))
        return lo
