"""MMCert-style certificate: independent sub-sampling of each modality (Wang, Fu, Zou and Jia,
CVPR 2024), and the soundness check of combining unimodal certificates.

Sub-sampling.  Modality i has n_i elements (tokens, pixels); the smoothed classifier keeps a
uniformly random subset of exactly k_i of them, independently per modality, and blanks the rest
(text: dropped; image: set to 0).  An attacker who changes at most r_i elements of modality i
changes the ablated input only if some kept element is attacked, which happens with probability

    δ(r₁, r₂) = 1 − C(n₁ − r₁, k₁)·C(n₂ − r₂, k₂) / (C(n₁, k₁)·C(n₂, k₂))        (MMCert, Thm. 1)

so every class probability moves by at most δ.  With p̲ the Clopper–Pearson lower bound on the
top class (binary: the upper bound of the other is 1 − p̲), the prediction is certified at
(r₁, r₂) iff p̲ − δ > 1 − p̲ + δ, i.e. δ < p̲ − 1/2.

The threat is ℓ0 on both modalities: an ℓ2 image perturbation of any size > 0 may touch every
pixel (r₂ = n₂, δ = 1), so MMCert certifies no ℓ2 radius at all; we compare on ℓ0 pixel counts.
"""

from __future__ import annotations

from fractions import Fraction
from math import comb

import numpy as np
import torch

from hybridrs import _validate as v
from hybridrs.stats import clopper_pearson_lower


def mmcert_delta(n1: int, k1: int, r1: int, n2: int, k2: int, r2: int) -> float:
    """δ = 1 − C(n₁−r₁, k₁)C(n₂−r₂, k₂)/(C(n₁, k₁)C(n₂, k₂)), exact in integers, rounded up to float.

    (Wang et al. 2024, MMCert, Theorem 1.)  Raises ValueError unless 0 ≤ k_i ≤ n_i and 0 ≤ r_i ≤ n_i.
    """
    vals = {}
    for name, val in (("n1", n1), ("k1", k1), ("r1", r1), ("n2", n2), ("k2", k2), ("r2", r2)):
        vals[name] = v.integer(val, name)
    for i in ("1", "2"):
        n, k, r = vals["n" + i], vals["k" + i], vals["r" + i]
        if k > n:
            raise ValueError(f"k{i} ({k}) exceeds n{i} ({n})")
        if r > n:
            raise ValueError(f"r{i} ({r}) exceeds n{i} ({n})")
    keep = Fraction(comb(vals["n1"] - vals["r1"], vals["k1"]) * comb(vals["n2"] - vals["r2"], vals["k2"]),
                    comb(vals["n1"], vals["k1"]) * comb(vals["n2"], vals["k2"]))
    d = 1 - keep
    f = float(d)
    # Round up: the certificate must never use a δ below the exact value.
    return f if Fraction(f) >= d else float(np.nextafter(f, 2.0))


def mmcert_certified(count: int, n: int, alpha: float, delta: float) -> bool:
    """Binary MMCert decision: p̲ − δ > (1 − p̲) + δ with p̲ = CP lower bound of count/n at α."""
    p = float(clopper_pearson_lower(v.integer(count, "count"), v.integer(n, "n", minimum=1), alpha))
    delta = float(v.probability(delta, "delta"))
    return bool(p - delta > 1 - p + delta)


def max_certified_r(count: int, n: int, alpha: float, n1: int, k1: int, n2: int, k2: int,
                    ratio: float = 0.0, r1_max: int | None = None) -> int:
    """Largest r₁ certified with r₂ = ⌊ratio·r₁⌋ (MMCert's curves use r₂ = 2r₁ on pixels);
    −1 when not even (0, 0) is certified."""
    r1_max = n1 if r1_max is None else r1_max
    best = -1
    for r1 in range(0, r1_max + 1):
        r2 = min(n2, int(ratio * r1))
        if mmcert_certified(count, n, alpha, mmcert_delta(n1, k1, r1, n2, k2, r2)):
            best = r1
        else:
            break
    return best


def ablate(tokens: torch.Tensor, image: torch.Tensor, k1: int, k2: int, n: int,
           generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """n independent ablations of one input: keep k₁ of the L tokens (order kept, others dropped and
    the row right-padded with 0) and k₂ of the H·W pixels (others set to 0)."""
    tokens = torch.as_tensor(tokens, dtype=torch.long)
    L = tokens.numel()
    k1, k2 = v.integer(k1, "k1", minimum=1), v.integer(k2, "k2", minimum=1)
    if k1 > L:
        raise ValueError(f"k1 ({k1}) exceeds the number of tokens ({L})")
    P = image[0].numel()
    if k2 > P:
        raise ValueError(f"k2 ({k2}) exceeds the number of pixels ({P})")
    keep_t = torch.rand(n, L, generator=generator).argsort(1)[:, :k1].sort(1).values
    toks = tokens[keep_t]
    keep_p = torch.rand(n, P, generator=generator).argsort(1)[:, :k2]
    mask = torch.zeros(n, P)
    mask.scatter_(1, keep_p, 1.0)
    imgs = image.reshape(1, image.shape[0], P) * mask.unsqueeze(1)
    return toks, imgs.reshape(n, *image.shape)


@torch.no_grad()
def ablated_count(base, tokens: torch.Tensor, image: torch.Tensor, k1: int, k2: int, n: int,
                  seed: int = 0, batch_size: int = 1000) -> int:
    """Number of the n ablated copies that ``base`` labels 1 (unsafe)."""
    gen = torch.Generator().manual_seed(v.integer(seed, "seed"))
    total, left = 0, v.integer(n, "n", minimum=1)
    while left > 0:
        b = min(batch_size, left)
        t, im = ablate(tokens, image, k1, k2, b, gen)
        total += int((torch.as_tensor(base(t, im)) == 1).sum())
        left -= b
    return total
