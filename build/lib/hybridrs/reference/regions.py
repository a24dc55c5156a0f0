"""The non-product structure of the optimal region (Delattre et al. 2026, Prop. 4.1).

The best region of the form {γ_s ≤ t₁} × {W ≤ c} (per-modality thresholds), and a Monte Carlo of
the Neyman–Pearson worst-case classifier itself.

Notation: groups k with clean mass c_k, adversarial mass a_k and log ratio ℓ_k = log g_k; ρ = r/σ;
W = ⟨z_v − v, δ⟩/(σ r) is N(0, 1) under the clean law and N(ρ, 1) under the adversarial one, and
log Λ = ℓ_k + ρW − ρ²/2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import mpmath
import numpy as np
import torch
from scipy.optimize import minimize_scalar
from scipy.special import ndtr, ndtri

from hybridrs import _validate as v
from hybridrs.kernels import Groups, UniformKernel
from hybridrs.reference.mp import _DPS, mp_knapsack, mp_threshold, mp_uniform_groups, mp_worst_case


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
