"""Independent high-precision (mpmath) computation of the hybrid certificate, for the tests.

Nothing here calls the package's solver: the groups come from exact integer arithmetic, F and V
from mpmath's normal CDF at 40 digits, and the roots from mpmath bisection and Newton iterations.
"""

from __future__ import annotations

import math

import mpmath as mp

mp.mp.dps = 40


def uniform_groups(beta, V, d):
    """(c, a, log g) of the uniform kernel's d-change adversary, exact then rounded to 40 digits."""
    beta = mp.mpf(beta)
    a = beta / (V - 1)
    keep = 1 - beta
    out = []
    for i in range(d + 1):
        for j in range(d + 1):
            if i + j < d:
                continue
            n = math.comb(d, i) * math.comb(i, d - j) * (V - 2) ** (i + j - d)
            if n == 0:
                continue
            c = n * a**i * keep ** (d - i)
            adv = n * a**j * keep ** (d - j)
            if c == 0 and adv == 0:
                continue
            lg = mp.log(adv) - mp.log(c) if c > 0 and adv > 0 else (mp.inf if c == 0 else -mp.inf)
            out.append((c, adv, lg))
    return out


def absorbing_groups(beta, d):
    beta = mp.mpf(beta)
    return [(1 - beta**d, mp.mpf(0), -mp.inf), (beta**d, beta**d, mp.mpf(0))]


def _phi_arg(u, rho, lg, shift):
    if lg == -mp.inf:
        return mp.inf
    if lg == mp.inf:
        return -mp.inf
    return shift + (u - lg) / rho


def F(u, rho, groups):
    return mp.fsum(c * mp.ncdf(_phi_arg(u, rho, lg, rho / 2)) for c, _, lg in groups)


def V(u, rho, groups):
    return mp.fsum(a * mp.ncdf(_phi_arg(u, rho, lg, -rho / 2)) for _, a, lg in groups)


def knapsack(p, groups):
    p = mp.mpf(p)
    val, used = mp.mpf(0), mp.mpf(0)
    for c, a, lg in sorted(groups, key=lambda t: t[2]):
        if used + c <= p:
            used += c
            val += a
        else:
            if c > 0:
                val += (p - used) * a / c
            return val
    return val


def _bisect(f, lo, hi, steps=200):
    """Root of an increasing f inside [lo, hi]."""
    lo, hi = mp.mpf(lo), mp.mpf(hi)
    for _ in range(steps):
        mid = (lo + hi) / 2
        if f(mid) < 0:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def _u_range(rho, groups):
    ell = [lg for _, _, lg in groups if mp.isfinite(lg)] or [mp.mpf(0)]
    return min(ell) - rho * rho / 2 - 60 * rho - 1, max(ell) + rho * rho / 2 + 60 * rho + 1


def worst_case(p, groups, rho):
    """V(u*; ρ) with F(u*; ρ) = p (ρ > 0), or the knapsack value at ρ = 0."""
    p, rho = mp.mpf(p), mp.mpf(rho)
    if rho == 0:
        return knapsack(p, groups)
    zero_mass = mp.fsum(c for c, _, lg in groups if lg == -mp.inf)
    if p <= zero_mass:
        return mp.mpf(0)
    lo, hi = _u_range(rho, groups)
    u = _bisect(lambda u: F(u, rho, groups) - p, lo, hi)
    return V(u, rho, groups)


def radius_rho(p, groups, tau, rho_guess):
    """ρ* solving F(u; ρ) = p and V(u; ρ) = τ, refined by Newton from a rough guess.

    Returns (ρ*, residual).  The solution is unique (G(ρ) is increasing), so the starting point
    does not bias the answer; the residual shows convergence.
    """
    p, tau = mp.mpf(p), mp.mpf(tau)
    rho0 = mp.mpf(rho_guess)
    lo, hi = _u_range(rho0, groups)
    u0 = _bisect(lambda u: V(u, rho0, groups) - tau, lo, hi, steps=120)
    sol = mp.findroot(lambda u, r: (F(u, r, groups) - p, V(u, r, groups) - tau), (u0, rho0))
    u, r = sol[0], sol[1]
    res = max(abs(F(u, r, groups) - p), abs(V(u, r, groups) - tau) / tau)
    return r, res
