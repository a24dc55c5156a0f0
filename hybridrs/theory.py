"""Checks and illustrations of the hybrid Neyman–Pearson certificate (chapter 6 of the book).

Three things live here, none of which the certificate itself needs:

* an **independent high-precision path** (mpmath): the likelihood-ratio groups of the uniform and
  absorbing kernels from exact integer counts, the CDF F and value V of the joint likelihood ratio,
  the threshold u*, the worst case p_adv and the radius ρ*.  It shares no code with
  :mod:`hybridrs.certify` and is the reference the book and the tests compare the package with;
* a **re-implementation of the released code's scalar method** (Delattre et al. 2026, code commit
  3707eec): bisection on t (not log t) over [1e-12, 1e12] for 80 steps returning the midpoint,
  1e-12 added inside every logarithm and to the denominators, Φ as ½(1 + erf(x/√2)) in float64, and
  a 60-step bisection on r that keeps the lower end.  It exists to measure whether those habits can
  overstate a certificate;
* the **non-product structure** of the optimal region (Delattre et al. 2026, Prop. 4.1): the best
  region of the form {γ_s ≤ t₁} × {W ≤ c}, and a Monte Carlo of the worst-case classifier itself.

Notation (``shared/notes/certificate.md``): groups k with clean mass c_k, adversarial mass a_k and
log ratio ℓ_k = log g_k; ρ = r/σ; W = ⟨z_v − v, δ⟩/(σ r) is N(0, 1) under the clean law and
N(ρ, 1) under the adversarial one, and log Λ = ℓ_k + ρW − ρ²/2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import mpmath
import numpy as np
import torch
from scipy.optimize import minimize_scalar
from scipy.special import ndtr, ndtri

from . import _validate as v
from .kernels import Groups, UniformKernel

__all__ = [
    "MPGroups", "mp_uniform_groups", "mp_absorbing_groups", "mp_F", "mp_V", "mp_threshold",
    "mp_worst_case", "mp_knapsack", "mp_radius", "released_groups_uniform", "released_worst_case",
    "released_radius", "ProductRegion", "product_region", "np_region_mc",
]

_DPS = 40


# --------------------------------------------------------------------------------------------
# Independent high-precision path
# --------------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------------
# The released code's scalar method, re-implemented to measure its habits
# --------------------------------------------------------------------------------------------

_EPS = 1e-12


def released_groups_uniform(d: int, vocab_size: int, beta: float):
    """Uniform-kernel groups as the released code forms them: plain float64 products (no log
    space) and the ratio g = a_k/c_k (set to 0 where c_k = 0).  Returns (clean, adv, g) arrays."""
    d = v.integer(d, "d")
    V = v.integer(vocab_size, "vocab_size", minimum=2)
    b = v.beta(beta)
    a, keep = b / (V - 1), 1 - b
    pc, pa, gg = [], [], []
    for i in range(d + 1):
        for j in range(d - i, d + 1):
            n = math.comb(d, i) * math.comb(i, d - j) * (V - 2) ** (i + j - d)
            c, ad = a ** i * keep ** (d - i), a ** j * keep ** (d - j)
            pc.append(c * n)
            pa.append(ad * n)
            gg.append(0.0 if c == 0 else ad / c)
    return np.array(pc), np.array(pa), np.array(gg)


def _phi_erf(x: torch.Tensor) -> torch.Tensor:
    # Φ through erf, as torch.distributions.Normal.cdf computes it: cancels for x ≪ 0.
    return 0.5 * (1 + torch.erf(x / math.sqrt(2)))


def _released_FV(t: float, r: float, sigma: float, mass: torch.Tensor, g: torch.Tensor, adv: bool):
    logt = torch.log(torch.tensor(t, dtype=torch.float64) + _EPS)
    base = 0.5 * r * r + sigma * sigma * (logt - torch.log(g + _EPS))
    arg = base / (sigma * r + _EPS)
    if adv:
        arg = arg - r / (sigma + _EPS)
    return float((mass * _phi_erf(arg)).sum())


def _released_t_star(p_a: float, r: float, sigma: float, clean: torch.Tensor, g: torch.Tensor) -> float:
    lo, hi = 1e-12, 1e12
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        if _released_FV(mid, r, sigma, clean, g, adv=False) >= p_a:
            hi = mid
        else:
            lo = mid
    return 0.5 * (lo + hi)


def released_worst_case(p_a: float, groups, r: float, sigma: float) -> float:
    """p_adv as the released code evaluates it: V(t*; r) with t* the midpoint of an 80-step
    bisection on t ∈ [1e-12, 1e12] of F(t; r) ≥ p_A, where

        F(t; r) = Σ c_k Φ((r²/2 + σ²(log(t + 1e-12) − log(g_k + 1e-12))) / (σ r + 1e-12)),
        V(t; r) = Σ a_k Φ(that argument − r/(σ + 1e-12)),

    Φ = ½(1 + erf(x/√2)) in float64 (Delattre et al. 2026, released code ``F_sigma``, ``V_sigma``,
    ``solve_t_star``).  ``groups`` is the (clean, adv, g) triple of :func:`released_groups_uniform`.
    Only for measuring the habits; use :func:`hybridrs.certify.worst_case` for certificates.
    """
    p_a = float(v.probability(p_a, "p_a", allow_array=False))
    r = v.nonnegative(r, "r")
    sigma = v.positive(sigma, "sigma")
    clean, adv, g = (torch.as_tensor(np.asarray(x, dtype=np.float64)) for x in groups)
    t = _released_t_star(p_a, r, sigma, clean, g)
    return _released_FV(t, r, sigma, adv, g, adv=True)


def released_radius(p_a: float, groups, tau: float, sigma: float, r_max: float = 20.0) -> float:
    """r* as the released code computes it: 60 bisection steps on r ∈ [0, r_max], accepting r when
    :func:`released_worst_case` at r is ≥ τ, returning the lower end (0.0 also when nothing is
    certified: the released code does not tell the two apart)."""
    p_a = float(v.probability(p_a, "p_a", allow_array=False))
    tau = v.open_unit(tau, "tau")
    sigma = v.positive(sigma, "sigma")
    r_max = v.positive(r_max, "r_max")
    clean, adv, g = (torch.as_tensor(np.asarray(x, dtype=np.float64)) for x in groups)
    lo, hi = 0.0, r_max
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        t = _released_t_star(p_a, mid, sigma, clean, g)
        if _released_FV(t, mid, sigma, adv, g, adv=True) >= tau:
            lo = mid
        else:
            hi = mid
    return lo


# --------------------------------------------------------------------------------------------
# Prop. 4.1: the optimal region is not a product of per-modality thresholds
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ProductRegion:
    """A region {γ_s ≤ t₁} × {W ≤ c} (text test possibly randomised on its boundary ratio).

    ``text_clean`` = clean mass C of the text test, ``log_t1`` = its threshold log ratio,
    ``fraction`` = share of the boundary ratio's mass it keeps (1 for a deterministic test),
    ``w_threshold`` = c with C·Φ(c) = p_A, ``adv_mass`` = its adversarial mass A·Φ(c − ρ).
    """

    adv_mass: float
    text_clean: float
    text_adv: float
    log_t1: float
    fraction: float
    w_threshold: float


def _merge_ratios(g: Groups):
    finite = np.isfinite(g.log_ratio) | (g.log_ratio == -np.inf)
    lr, c, a = g.log_ratio[finite], g.clean[finite], g.adv[finite]
    keys, idx = np.unique(lr, return_inverse=True)
    return keys, np.bincount(idx, weights=c), np.bincount(idx, weights=a)


def product_region(p_a: float, groups: Groups, rho: float, randomized: bool = False) -> ProductRegion:
    """The product-of-thresholds region of clean mass p_A with the smallest adversarial mass.

    "Combining unimodal thresholds" means taking the text test {γ_s ≤ t₁} that is optimal for
    the text alone and the image test {W ≤ c} (a threshold on γ_v = exp(ρW − ρ²/2)) that is optimal
    for the image alone, and intersecting them.  Because Z_s and Z_v are independent under both
    laws, such a region has clean mass C·Φ(c) and adversarial mass A·Φ(c − ρ), where (C, A) are the
    clean and adversarial masses of the text test.  Minimising A(C)·Φ(Φ⁻¹(p_A/C) − ρ) over the
    admissible text tests (C ≥ p_A) gives the best such region; the Neyman–Pearson region
    {γ_s·γ_v ≤ t*} is feasible for the same problem and is optimal, so the returned adversarial
    mass is never below the hybrid worst case (Delattre et al. 2026, Prop. 4.1).

    ``randomized=False`` allows only deterministic text thresholds (C a cumulative clean mass over
    distinct ratios); ``True`` also allows splitting the boundary ratio (C anywhere in [p_A, 1]).
    Groups with ℓ = +inf (clean mass 0) are always excluded: t₁ is finite.
    """
    p_a = float(v.probability(p_a, "p_a", allow_array=False))
    rho = v.nonnegative(rho, "rho")
    if not isinstance(groups, Groups):
        raise ValueError(f"groups must be a hybridrs.kernels.Groups, got {type(groups).__name__}")
    if not 0 < p_a < 1:
        raise ValueError(f"p_a must lie in (0, 1) for a product region, got {p_a}")
    keys, c, a = _merge_ratios(groups)
    C, A = np.cumsum(c), np.cumsum(a)
    Cprev, Aprev = np.concatenate([[0.0], C[:-1]]), np.concatenate([[0.0], A[:-1]])
    ratio = np.exp(keys)

    def J(cm, am):
        return am * ndtr(ndtri(min(p_a / cm, 1.0)) - rho)

    best = None
    for m in range(len(keys)):
        cands = []
        if C[m] >= p_a * (1 - 1e-15):
            cands.append(1.0)
        if randomized and C[m] > p_a:
            lam_min = max(0.0, (p_a - Cprev[m]) / c[m])
            cands.append(lam_min)
            if 1.0 > lam_min:
                res = minimize_scalar(lambda lam: J(Cprev[m] + lam * c[m], Aprev[m] + lam * c[m] * ratio[m]),
                                      bounds=(lam_min, 1.0), method="bounded", options={"xatol": 1e-12})
                cands.append(float(res.x))
        for lam in cands:
            cm, am = Cprev[m] + lam * c[m], Aprev[m] + lam * c[m] * ratio[m]
            if cm < p_a * (1 - 1e-15):
                continue
            val = float(J(cm, am))
            if best is None or val < best.adv_mass:
                best = ProductRegion(val, float(cm), float(am), float(keys[m]), float(lam),
                                     float(ndtri(min(p_a / cm, 1.0))))
    if best is None:
        raise ValueError("no text threshold reaches clean mass p_a (the finite-ratio groups carry "
                         "less clean mass than p_a)")
    return best


# --------------------------------------------------------------------------------------------
# Monte Carlo of the worst-case classifier
# --------------------------------------------------------------------------------------------

def np_region_mc(kernel: UniformKernel, tokens, adv_tokens, p_a: float, eps: float, sigma: float,
                 n: int, dim: int = 4, seed: int = 0) -> dict:
    """Monte Carlo of the Neyman–Pearson worst-case classifier h* for explicit token sequences.

    Draws n pairs Z = (Z_s, Z_v) under the clean law (s, v) and n under the adversarial law
    (s', v + δ), ‖δ‖₂ = ε, with Z_v = · + σ·N(0, I_dim), and evaluates

        h*(z) = 1{log Λ(z) < u*} + λ·1{log Λ(z) = u*},   log Λ = log γ_s(z_s) + ρW − ρ²/2,

    where log γ_s = Σ_i [log K(z_i | s'_i) − log K(z_i | s_i)] is computed position by position from
    the sequences, u* solves F(u*; ρ) = p_A (:func:`mp_threshold`, or the knapsack boundary at
    ρ = 0) and λ ∈ [0, 1] is the randomisation needed only at ρ = 0, where Λ has atoms.
    E_clean[h*] should equal p_A and E_adv[h*] the hybrid worst case (Delattre et al. 2026).
    Returns the two empirical means with standard errors, u*, λ, and the mpmath p_adv.
    """
    if not isinstance(kernel, UniformKernel) or kernel.alphabet is not None:
        raise ValueError("kernel must be a UniformKernel over ids 0..V-1")
    s = torch.as_tensor(tokens, dtype=torch.long)
    s2 = torch.as_tensor(adv_tokens, dtype=torch.long)
    if s.ndim != 1 or s.shape != s2.shape:
        raise ValueError("tokens and adv_tokens must be 1-D sequences of the same length")
    p_a = float(v.probability(p_a, "p_a", allow_array=False))
    if not 0 < p_a < 1:
        raise ValueError(f"p_a must lie in (0, 1), got {p_a}")
    eps = v.nonnegative(eps, "eps")
    sigma = v.positive(sigma, "sigma")
    n = v.integer(n, "n", minimum=1)
    dim = v.integer(dim, "dim", minimum=1)
    gen = torch.Generator().manual_seed(int(seed))
    V, b = kernel.vocab_size, kernel.beta
    d = int((s != s2).sum())
    rho = eps / sigma
    g = mp_uniform_groups(d, V, b)
    L = math.log(b / (V - 1)) - math.log1p(-b)  # log ratio per unit of (j − i)

    # Per-sample text log ratio, from the sequences themselves: (j − i)·L over changed positions.
    def text_key(z):
        ch = s != s2
        i = (z[:, ch] != s[ch]).sum(1)
        j = (z[:, ch] != s2[ch]).sum(1)
        return (j - i).double()

    direction = torch.randn(dim, generator=gen, dtype=torch.float64)
    direction /= direction.norm()

    def sample(seq, shift):
        zs = kernel.sample(seq, n, generator=gen)
        zv = torch.randn((n, dim), generator=gen, dtype=torch.float64) * sigma + shift * direction
        return text_key(zs), zv

    k_clean, zv_clean = sample(s, 0.0)
    k_adv, zv_adv = sample(s2, eps)

    with mpmath.workdps(_DPS):
        if rho > 0:
            u_star = float(mp_threshold(p_a, rho, g))
            lam = 1.0
            p_adv = float(mp_worst_case(p_a, rho, g))
        else:
            # Knapsack boundary: the ratio level where the cumulative clean mass reaches p_A.
            keys = sorted({round(float(lr / L)) if mpmath.isfinite(lr) else None for lr in g.log_ratio} - {None},
                          reverse=True)  # L < 0: a larger j − i is a smaller ratio
            cum = mpmath.mpf(0)
            for key in keys:
                mass = sum(c for c, lr in zip(g.clean, g.log_ratio) if round(float(lr / L)) == key)
                if cum + mass >= p_a:
                    lam = float((p_a - cum) / mass)
                    u_star = key * L
                    break
                cum += mass
            p_adv = float(mp_knapsack(p_a, g))

    def h(keys, zv):
        if rho > 0:
            w = (zv @ direction) / sigma
            loglam = keys * L + rho * w - rho * rho / 2
            return (loglam <= u_star).double()
        level = keys * L
        tie = torch.isclose(level, torch.tensor(u_star, dtype=torch.float64), rtol=1e-12, atol=1e-12)
        return torch.where(tie, torch.tensor(lam, dtype=torch.float64), (level < u_star).double())

    hc, ha = h(k_clean, zv_clean), h(k_adv, zv_adv)
    return {
        "d": d, "rho": rho, "u_star": u_star, "lambda": lam, "p_adv_exact": p_adv,
        "clean_mean": float(hc.mean()), "clean_se": float(hc.std() / math.sqrt(n)),
        "adv_mean": float(ha.mean()), "adv_se": float(ha.std() / math.sqrt(n)),
    }
