"""Sequential vs fixed-n certification on the book's MAIN set (chapter 8's filter and data).

    .venv/bin/python benchmarks/sequential_main.py [--inputs 20] [--sigma 0.5] [--d 1] [--eps 0.5]

The first ``--inputs`` unsafe test pairs of the interaction-only MAIN set (``hybridrs.data.pairs``),
chapter 8's MAIN filter (``hybridrs.experiments.filters.chapter_filter``), hybrid smoothing with the
uniform kernel over the usable WordPiece ids (β = 0.25) and Gaussian image noise σ, ℓ0 threat.
Each input is certified for the target (d, ε):

* fixed: n = 10^4 draws, certified iff r*(d) ≥ ε from the Clopper–Pearson bound (the paper's protocol);
* sequential: ``HybridSmooth.certify`` with the ``Sequential`` estimator, capped at 10^4 draws.

Both are valid at level α = 0.01 (τ = 4.6e-5).  Prints draws per input and certified fraction.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from hybridrs.data import pairs as data
from hybridrs.experiments.filters import chapter_filter
from hybridrs.kernels import UniformKernel
from hybridrs.estimators import FixedN, Sequential
from hybridrs.smoothing import HybridSmooth
from hybridrs.threats import L0

ALPHA, BETA, TAU, N = 0.01, 0.25, 4.6e-5, 10_000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--inputs", type=int, default=20)
    ap.add_argument("--sigma", type=float, default=0.5)
    ap.add_argument("--d", type=int, default=1)
    ap.add_argument("--eps", type=float, default=0.5)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    torch.set_num_threads(1)
    f, _ = chapter_filter("MAIN")
    test = data.dose_pairs(1000, "test", seed=0)
    idx = np.flatnonzero(test.labels == 1)[: args.inputs]
    smoother = HybridSmooth(f, sigma=args.sigma, kernel=UniformKernel(BETA, alphabet=data.usable_ids()),
                            batch_size=1000, progress=False)
    fixed_ok, seq_ok, seq_n, undecided = [], [], [], 0
    t_fixed = t_seq = 0.0
    for i in idx:
        tokens, image = test.tokens[i], test.images[i]
        t0 = time.perf_counter()
        c = smoother.certify(tokens, image, threat=L0(args.d), estimator=FixedN(N, ALPHA), tau=TAU, seed=int(i))
        t1 = time.perf_counter()
        s = smoother.certify(tokens, image, threat=L0(args.d), tau=TAU, seed=int(i) + 1_000_000,
                             estimator=Sequential(ALPHA, target_d=args.d, target_eps=args.eps, max_n=N))
        t2 = time.perf_counter()
        fixed_ok.append(c.certified(args.d, args.eps))
        seq_ok.append(s.extra["decision"] == "certified")
        undecided += s.extra["decision"] == "undecided"
        seq_n.append(s.n)
        t_fixed, t_seq = t_fixed + t1 - t0, t_seq + t2 - t1
    k = len(idx)
    print(f"MAIN set, {k} unsafe test inputs, target (d, eps) = ({args.d}, {args.eps}), sigma = {args.sigma}, "
          f"beta = {BETA}, alpha = {ALPHA}, tau = {TAU}")
    print()
    print("| method | mean draws per input | fewer draws | certified | seconds |")
    print("|---|---|---|---|---|")
    print(f"| fixed n = 10^4 | {N} | 1.0x | {100 * np.mean(fixed_ok):.1f} % | {t_fixed:.1f} |")
    print(f"| sequential, cap 10^4 | {np.mean(seq_n):.0f} | {N / np.mean(seq_n):.1f}x | {100 * np.mean(seq_ok):.1f} % "
          f"({undecided} undecided) | {t_seq:.1f} |")


if __name__ == "__main__":
    main()
