"""The released code's scalar method (Delattre et al. 2026, code commit 3707eec), re-implemented.

Bisection on t (not log t) over [1e-12, 1e12] for 80 steps returning the midpoint, 1e-12 added
inside every logarithm and to the denominators, Φ as ½(1 + erf(x/√2)) in float64, and a 60-step
bisection on r that keeps the lower end.  It exists to measure whether those habits can overstate
a certificate (chapter 6); :mod:`hybridrs.certify` is the package's sound solver.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from hybridrs import _validate as v


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
