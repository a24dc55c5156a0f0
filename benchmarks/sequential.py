"""Sequential vs fixed-n certification: forward passes per input and certified fraction.

    .venv/bin/python benchmarks/sequential.py [--inputs 4000] [--seed 0]

Simulated inputs whose smoothed score p = P[f(Z) = 1] is known and drawn from a spread meant to
resemble a smoothed safety filter on harmful inputs (the mixture is printed with the results):
half are confidently flagged (p close to 1), a fifth sit around the certification threshold, the
rest are spread out or clearly not flagged.  Each input is certified for a target (d, ε) whose
smallest certifying score is p* = required_p_a(kernel, d, ε, σ, τ):

* fixed: n = 10^4 draws, certified iff the Clopper–Pearson lower bound at α reaches p*
  (the protocol of Cohen et al. 2019 and Delattre et al. 2026);
* sequential: batches of 100, 200, 400, ... draws until the beta-binomial confidence sequence
  decides (hybridrs.sequential), with a cap of 10^4 or 10^5 draws.

Both are valid at level α.  The sequential decisions are simulated in a vectorised loop that applies
the same rule as ``hybridrs.sequential.sequential_test``; the script checks that the two agree on
the first inputs.  Counts are drawn as Binomial(batch, p), which is what the model's draws are.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from hybridrs.certify import required_p_a
from hybridrs.kernels import UniformKernel
from hybridrs.sequential import CERTIFIED, REFUTED, UNDECIDED, batch_schedule, confidence_sequence, sequential_test
from hybridrs.stats import clopper_pearson_lower

MIXTURE = [  # (weight, Beta(a, b) on p, description)
    (0.50, (200.0, 0.5), "confidently flagged: p ~ Beta(200, 0.5), mean 0.9975"),
    (0.20, (16.0, 4.0), "around the threshold: p ~ Beta(16, 4), mean 0.80"),
    (0.15, (2.0, 2.0), "spread out: p ~ Beta(2, 2)"),
    (0.15, (0.5, 20.0), "not flagged: p ~ Beta(0.5, 20), mean 0.024"),
]


def draw_scores(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    comp = rng.choice(len(MIXTURE), size=n, p=[w for w, _, _ in MIXTURE])
    p = np.empty(n)
    for j, (_, (a, b), _) in enumerate(MIXTURE):
        idx = comp == j
        p[idx] = rng.beta(a, b, size=idx.sum())
    return p, comp


def fixed(p, p_req, alpha, n, rng):
    k = rng.binomial(n, p)
    return clopper_pearson_lower(k, n, alpha) >= p_req, np.full(p.shape, n)


def sequential(p, p_req, alpha, max_n, rng, first=100, growth=2.0):
    k = np.zeros(p.shape, dtype=np.int64)
    used = np.zeros(p.shape, dtype=np.int64)
    decision = np.full(p.shape, UNDECIDED, dtype=object)
    for s in batch_schedule(first, growth, max_n):
        active = decision == UNDECIDED
        if not active.any():
            break
        k[active] += rng.binomial(s, p[active])
        used[active] += s
        lo, hi = confidence_sequence(k[active], used[active], alpha)
        idx = np.flatnonzero(active)
        decision[idx[lo >= p_req]] = CERTIFIED
        decision[idx[hi < p_req]] = REFUTED
    return decision, used


def check_against_library(p, p_req, alpha, max_n, seed, m=20):
    """The vectorised loop and sequential_test make the same decisions on the same draws."""
    for i in range(m):
        rng_a, rng_b = np.random.default_rng([seed, i]), np.random.default_rng([seed, i])
        dec, used = sequential(p[i:i + 1], p_req, alpha, max_n, rng_a)
        res = sequential_test(lambda s, j: int(rng_b.binomial(s, p[i])), p_req, alpha, max_n=max_n)
        assert (res.decision, res.n) == (dec[0], used[0]), (i, res, dec, used)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--inputs", type=int, default=4000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="also write the table to this CSV (the scale page includes it)")
    args = ap.parse_args(argv)
    rows = []
    alpha, n_fixed = 0.01, 10_000
    kernel = UniformKernel(0.25, 30522)
    sigma, tau = 0.5, 4.6e-5
    rng = np.random.default_rng(args.seed)
    p, comp = draw_scores(args.inputs, rng)
    print(f"{args.inputs} simulated inputs, alpha = {alpha}, uniform kernel beta = 0.25, V = 30522, "
          f"sigma = {sigma}, tau = {tau}")
    for w, _, desc in MIXTURE:
        print(f"  {w:.0%}  {desc}")
    print()
    print(f"{'target (d, eps)':>16} {'p*':>8} {'method':>22} {'mean draws':>11} {'x fewer':>8} "
          f"{'certified':>10} {'undecided':>10}")
    t0 = time.perf_counter()
    for d, eps in [(1, 0.5), (1, 1.0), (2, 0.25)]:
        p_req = required_p_a(kernel, d, eps, sigma, tau)
        check_against_library(p, p_req, alpha, 100_000, args.seed)
        cert_f, used_f = fixed(p, p_req, alpha, n_fixed, rng)
        base = used_f.mean()
        print(f"{f'({d}, {eps})':>16} {p_req:8.4f} {'fixed n = 10^4':>22} {base:11.0f} {1.0:8.1f} "
              f"{cert_f.mean():10.3%} {'':>10}")
        rows.append({"target (d, eps)": f"({d}, {eps})", "method": "fixed n = 10^4", "mean draws": round(base),
                     "fewer draws": "1.0x", "certified": f"{cert_f.mean():.1%}", "undecided": ""})
        for cap in (10_000, 100_000):
            dec, used = sequential(p, p_req, alpha, cap, rng)
            print(f"{'':>16} {'':>8} {f'sequential, cap {cap:.0e}':>22} {used.mean():11.0f} "
                  f"{base / used.mean():8.1f} {np.mean(dec == CERTIFIED):10.3%} {np.mean(dec == UNDECIDED):10.3%}")
            rows.append({"target (d, eps)": f"({d}, {eps})", "method": f"sequential, cap {cap:.0e}",
                         "mean draws": round(float(used.mean())), "fewer draws": f"{base / used.mean():.1f}x",
                         "certified": f"{np.mean(dec == CERTIFIED):.1%}", "undecided": f"{np.mean(dec == UNDECIDED):.1%}"})
    print(f"\n({time.perf_counter() - t0:.1f} s)")
    if args.out:
        import csv

        with open(args.out, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)


if __name__ == "__main__":
    main()
