"""Benchmark: cost of the hybrid ℓ0 certificate against image-only randomized smoothing.

Both certify the same input with the same small base classifier (token embedding bag + small CNN +
fusion MLP, random weights: only the cost matters here) at the same n.  Image-only RS draws
Gaussian image noise and computes Cohen's radius; hybrid RS also draws uniform token replacements
and computes the whole frontier r*(d), d = 0..8, from the same p_A.  Runs are interleaved and the
medians of ``--repeats`` runs are compared, in one process.

Run: ``.venv/bin/python benchmarks/sampling.py [--n 10000] [--repeats 5]``.
"""

from __future__ import annotations

import argparse
import platform
import statistics

import torch
from torch import nn

from hybridrs.kernels import UniformKernel
from hybridrs.smoothing import HybridSmooth
from hybridrs.threats import L0

V, L = 30522, 32


class TinyFilter(nn.Module):
    def __init__(self):
        super().__init__()
        self.text = nn.EmbeddingBag(V, 32, mode="mean")
        self.image = nn.Sequential(nn.Conv2d(1, 8, 3, stride=2), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2), nn.ReLU(),
                                   nn.Flatten(), nn.Linear(16 * 6 * 6, 32))
        self.head = nn.Sequential(nn.Linear(96, 32), nn.ReLU(), nn.Linear(32, 1))

    @torch.inference_mode()
    def forward(self, tokens, images):
        t, v = self.text(tokens), self.image(images)
        return (self.head(torch.cat([t, v, t * v], 1)).squeeze(1) > -10).long()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=1000)
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(2)
    model = TinyFilter().eval()
    tokens = torch.randint(0, V, (L,))
    image = torch.rand(1, 28, 28)
    image_only = HybridSmooth(model, sigma=0.5, batch_size=args.batch_size, progress=False)
    hybrid = HybridSmooth(model, sigma=0.5, kernel=UniformKernel(0.25, V), batch_size=args.batch_size, progress=False)
    runs = {"image-only RS": [], "hybrid RS (l0, d = 0..8)": []}
    for rep in range(args.repeats + 1):
        for name, smoother in (("image-only RS", image_only), ("hybrid RS (l0, d = 0..8)", hybrid)):
            cert = smoother.certify(tokens, image, args.n, alpha=0.01, tau=4.6e-5, threat=L0(8), seed=rep)
            if rep > 0:  # the first round warms up
                runs[name].append((cert.seconds_sampling, cert.seconds_certify))
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; n = {args.n}, batch {args.batch_size}, L = {L} tokens, 1x28x28 image")
    print()
    print("| method | sampling (s) | certification (s) | total (s) |")
    print("|---|---|---|---|")
    totals = {}
    for name, rs in runs.items():
        s = statistics.median(r[0] for r in rs)
        c = statistics.median(r[1] for r in rs)
        totals[name] = statistics.median(r[0] + r[1] for r in rs)
        print(f"| {name} | {s:.3f} | {c:.4f} | {totals[name]:.3f} |")
    names = list(totals)
    print()
    print(f"ratio hybrid / image-only (medians of {args.repeats}): {totals[names[1]] / totals[names[0]]:.3f}")


if __name__ == "__main__":
    main()
