"""Benchmark: the vectorised certificate solver against the released code's scalar method.

Task (issue "Package core", §4): the full frontier r*(d), d = 0..8, for 1000 values of p_A
(uniform kernel, V = 30522, β = 0.25, σ = 1, τ = 4.6e-5).

* ``hybridrs.certify.frontier``: vectorised over p_A; safeguarded Newton in probit space inside
  verified brackets.
* Baseline: a re-implementation of the method of the paper's released code (float64 torch, one
  (p_A, d) at a time): bisection on t over [1e-12, 1e12] (80 midpoint steps, on t not log t, with
  1e-12 added inside the logarithms) nested in a bisection on r over [0, 20] (60 steps, lower end).
  It is timed on a subset of the p_A values and its per-problem time is compared, in the same run.
* Accuracy: both against a 40-digit mpmath solution on a subset.

Run: ``.venv/bin/python benchmarks/certificate_solver.py [--baseline-points 10] [--mp-points 12]``.
"""

from __future__ import annotations

import argparse
import math
import platform
import time

import numpy as np
import torch

from hybridrs.certify import frontier
from hybridrs.kernels import UniformKernel
from hybridrs.reference import mp as M

V, BETA, SIGMA, TAU, D_MAX = 30522, 0.25, 1.0, 4.6e-5, 8


def baseline_radius(p_a: float, groups, sigma: float, tau: float, r_max: float = 20.0) -> float:
    """The released code's nested scalar bisection (re-implemented from its description)."""
    c = torch.tensor(groups.clean, dtype=torch.float64)
    a = torch.tensor(groups.adv, dtype=torch.float64)
    g = torch.exp(torch.tensor(groups.log_ratio, dtype=torch.float64))
    g = torch.where(torch.isfinite(g), g, torch.zeros_like(g))
    normal = torch.distributions.Normal(torch.tensor(0.0, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64))
    eps = 1e-12

    def arg(t, r):
        return (r * r / 2 + sigma**2 * (torch.log(t + eps) - torch.log(g + eps))) / (sigma * r + eps)

    def F(t, r):
        return (c * normal.cdf(arg(t, r))).sum()

    def Vv(t, r):
        return (a * normal.cdf(arg(t, r) - r / sigma)).sum()

    def certified(r):
        lo, hi = torch.tensor(1e-12, dtype=torch.float64), torch.tensor(1e12, dtype=torch.float64)
        r = torch.tensor(r, dtype=torch.float64)
        for _ in range(80):
            mid = (lo + hi) / 2
            if F(mid, r) < p_a:
                lo = mid
            else:
                hi = mid
        return bool(Vv((lo + hi) / 2, r) >= tau)

    lo, hi = 0.0, r_max
    if not certified(1e-9):
        return -math.inf
    for _ in range(60):
        mid = (lo + hi) / 2
        if certified(mid):
            lo = mid
        else:
            hi = mid
    return lo


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--points", type=int, default=1000, help="p_A values for the vectorised solver")
    ap.add_argument("--baseline-points", type=int, default=10, help="p_A values timed with the baseline")
    ap.add_argument("--mp-points", type=int, default=12, help="p_A values checked against mpmath")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)

    kernel = UniformKernel(BETA, V)
    p = np.linspace(0.5, 0.01 ** (1 / 10_000), args.points)

    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        ours = frontier(p, kernel, D_MAX, SIGMA, TAU)
        times.append(time.perf_counter() - t0)
    ours_total = float(np.median(times))
    ours_per_problem = ours_total / (args.points * (D_MAX + 1))

    rng = np.random.default_rng(0)
    sub = np.sort(rng.choice(args.points, args.baseline_points, replace=False))
    groups = [kernel.groups(d) for d in range(D_MAX + 1)]
    t0 = time.perf_counter()
    base = np.array([[baseline_radius(float(p[i]), groups[d], SIGMA, TAU) for d in range(D_MAX + 1)] for i in sub])
    base_per_problem = (time.perf_counter() - t0) / base.size

    # accuracy against 40-digit references (exact-d radius; the uniform kernel is monotone in d)
    certified = np.flatnonzero(ours[:, 1] > 0)
    mp_sub = np.sort(rng.choice(certified, min(args.mp_points, certified.size), replace=False))
    rel_ours, rel_base, above = [], [], 0
    for i in mp_sub:
        for d in range(1, D_MAX + 1):
            r = ours[i, d]
            if not r > 0:
                continue
            rho = M.mp_radius(float(p[i]), M.mp_uniform_groups(d, V, BETA), TAU)
            exact = float(rho) * SIGMA
            rel_ours.append(abs(r - exact) / exact)
            above += r > exact * (1 + 1e-12)
            rb = baseline_radius(float(p[i]), groups[d], SIGMA, TAU)
            rel_base.append(abs(rb - exact) / exact)

    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch thread(s), "
          f"python {platform.python_version()}, numpy {np.__version__}, torch {torch.__version__}")
    print(f"task: frontier d = 0..{D_MAX}, V = {V}, beta = {BETA}, sigma = {SIGMA}, tau = {TAU}")
    print()
    print("| solver | problems timed | time per (p_A, d) | total for 1000 p_A | max rel. error vs mpmath |")
    print("|---|---|---|---|---|")
    print(f"| hybridrs.certify.frontier (vectorised) | {args.points * (D_MAX + 1)} | {ours_per_problem * 1e6:.1f} µs "
          f"| {ours_total:.2f} s | {max(rel_ours):.1e} ({above} above) |")
    print(f"| released-code scalar bisection (re-implemented) | {base.size} | {base_per_problem * 1e3:.1f} ms "
          f"| {base_per_problem * 1000 * (D_MAX + 1):.0f} s (extrapolated) | {max(rel_base):.1e} |")
    print()
    print(f"speed-up (per problem, same run): {base_per_problem / ours_per_problem:.0f}x")
    print(f"agreement on the timed subset: max |ours - baseline| = "
          f"{np.max(np.abs(np.where(np.isfinite(base), ours[sub] - np.where(np.isfinite(base), base, 0.0), 0.0))):.2e}")


if __name__ == "__main__":
    main()
