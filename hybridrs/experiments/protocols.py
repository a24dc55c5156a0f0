"""Chapter 8's protocols as thin calls of the one certification pipeline.

Every certificate is ``HybridSmooth(f, sigma, kernel).certify(tokens, image, threat=...,
estimator=FixedN(n, alpha, familywise), tau=..., seed=input_seed(seed, *keys))`` where ``keys``
spell out every setting of the run (set, input, method, σ, β, threat, n, α, τ, family-wise
flag), so noise is independent across settings; :func:`certificate_row` maps the
:class:`~hybridrs.smoothing.Certificate` to a flat table row.  The definitions stay the
Certificate's:

* **d_max** (the paper's "certified text budget", the released code's ``d_cert``) =
  ``budget(0, strict=True)`` for the hybrid certificate (some positive image radius at every
  d' ≤ d), ``budget(0)`` for text-only smoothing (no image radius exists); −1 → 0 in the means;
* **certified** (the paper's "certified examples") = d_max ≥ 1, i.e. (1, 0⁺) certified; for
  image-only RS a positive Cohen radius;
* **r*(d)** = ``radii[d]``, clipped at 0 in means over all inputs (uncertified, −inf or not
  evaluated → 0).

Protocols (the paper's, Delattre et al. 2026, released code):

* image-only RS — ``kernel=None``: text clean, Cohen's radius at τ;
* text-only RS — ``sigma=None``, ``Suffix(m, filler)`` per-d: knapsack certificate, image clean;
* hybrid RS, append-only suffix per d — ``Suffix(m, filler, shared=False)``: one estimate per d,
  stop at the first failing d; ``familywise=False`` spends α on every stage (the paper: each d
  holds at 1 − α, the frontier at about 1 − d·α), ``familywise=True`` spends α/m (Bonferroni: the
  whole frontier at 1 − α);
* shared-D — ``Suffix(m, filler, shared=True)``: one estimate with all m slots noised;
* ℓ0 over the prompt — ``L0(d_max)`` on the prompt without filler slots: one estimate.

Resumable loops: :mod:`hybridrs.experiments.cache`; attack: :mod:`~hybridrs.experiments.attack`;
intervals: :mod:`~hybridrs.experiments.summary`; tabular: :mod:`~hybridrs.experiments.tabular`.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from hybridrs.experiments.cache import (CODE_VERSION, ResultCache, cache_dir, cache_key,  # noqa: F401
                                        run_cached)

#: The paper's hyper-parameters.
ALPHA, BETA, TAU, M = 0.01, 0.25, 4.6e-5, 8


class Flip(torch.nn.Module):
    """1 − f: protects the Safe class (certify a safe input with threshold 1 − τ)."""

    def __init__(self, base):
        super().__init__()
        self.base = base

    def forward(self, tokens, images):
        return 1 - torch.as_tensor(self.base(tokens, images)).long()


def threat_for(name: str, m: int = M, d_max: int = M):
    """The pipeline threat of a protocol name: "suffix" (per d), "shared" (shared-D), "l0",
    "image" (image-only: no threat)."""
    from hybridrs.data.pairs import filler_id
    from hybridrs.threats import L0, Suffix

    if name == "suffix":
        return Suffix(m=m, filler_id=filler_id(), shared=False)
    if name == "shared":
        return Suffix(m=m, filler_id=filler_id(), shared=True)
    if name == "l0":
        return L0(d_max=d_max)
    if name == "image":
        return None
    raise ValueError(f"unknown protocol {name!r}")


def certify(f, tokens: torch.Tensor, image: torch.Tensor, *, protocol: str, sigma: float | None,
            beta: float | None, n: int, alpha: float, tau: float, familywise: bool, seed: int, keys: tuple,
            batch_size: int = 2500):
    """One certificate through the pipeline; ``tokens`` is the prompt *without* filler slots
    (the suffix threats append them).  Seed: ``input_seed(seed, *keys, protocol, sigma, beta, n,
    alpha, tau, familywise)``."""
    from hybridrs.estimators import FixedN
    from hybridrs.experiments.filters import chapter_kernel
    from hybridrs.smoothing import HybridSmooth, input_seed

    kernel = None if protocol == "image" else chapter_kernel(beta)
    sm = HybridSmooth(f, sigma=sigma, kernel=kernel, batch_size=batch_size, progress=False)
    s = input_seed(seed, *keys, protocol, sigma, beta, n, alpha, tau, familywise)
    return sm.certify(tokens, image, threat=threat_for(protocol), tau=tau, seed=s,
                      estimator=FixedN(n, alpha, familywise=familywise))


def _num(x) -> float:
    x = float(x)
    return x if math.isfinite(x) else (None if math.isnan(x) else (-1.0 if x < 0 else x))


def certificate_row(cert, text_only: bool = False) -> dict:
    """Flat row: radii (−inf → −1, NaN → None), p_A per budget, counts and draws per stage,
    d_max (released ``d_cert``; text-only: ``budget(0)``), timing."""
    strict = not text_only and cert.sigma is not None and cert.threat != "image-only"
    d_max = cert.budget(0.0, strict=strict) if cert.threat != "image-only" else -1
    return {"threat": cert.threat, "radii": [_num(r) for r in cert.radii],
            "p_a": [_num(p) for p in cert.p_a], "counts": [int(c) for c in cert.counts],
            "draws": int(cert.n), "stages": len(cert.counts), "alpha_stage": float(cert.alpha_per_stage),
            "d_max": int(d_max), "seconds_sampling": float(cert.seconds_sampling),
            "seconds_certify": float(cert.seconds_certify)}


def radius_at(row: dict, d: int) -> float:
    """r*(d) of a stored row, clipped at 0 (−1 / None / missing → 0)."""
    r = row["radii"]
    x = r[d] if d < len(r) else None
    return 0.0 if x is None or x < 0 else float(x)


def radius_raw(row: dict, d: int) -> float:
    """r*(d) of a stored row with −inf for "not certified" (−1 / None / missing)."""
    r = row["radii"]
    x = r[d] if d < len(r) else None
    return -math.inf if x is None or x < 0 else float(x)


def image_radius(row: dict) -> float:
    """Cohen radius of an image-only row, clipped at 0."""
    return radius_at(row, 0)


def certified_accuracy_curve(radii: np.ndarray, eps_grid: np.ndarray) -> np.ndarray:
    """Share of inputs with r ≥ ε for each ε (``hybridrs.analysis.certified_accuracy``, every
    input's class protected)."""
    from hybridrs.analysis import certified_accuracy

    return np.asarray(certified_accuracy(np.asarray(radii, dtype=np.float64), None, np.asarray(eps_grid)))


def p_unsafe_curve(f, tokens: torch.Tensor, image: torch.Tensor, *, positions: str, beta: float,
                   sigma: float | None, n: int, seed: int, m: int = M) -> float:
    """Monte Carlo P[f = unsafe] (n draws) with the kernel at rate β on the positions a threat
    noises: ``"suffix"`` — all m appended filler slots; ``"prompt"`` — every prompt token (ℓ0)."""
    from hybridrs.data.pairs import with_suffix
    from hybridrs.experiments.filters import chapter_kernel
    from hybridrs.smoothing import HybridSmooth, input_seed

    sm = HybridSmooth(f, sigma=sigma, kernel=chapter_kernel(beta), batch_size=2500, progress=False)
    s = input_seed(seed, "p_unsafe", positions, beta, sigma, n)
    if positions == "suffix":
        toks, mask = with_suffix(tokens, m)
        return sm.count(toks, image, n, seed=s, mask=mask) / n
    if positions == "prompt":
        return sm.count(tokens, image, n, seed=s) / n
    raise ValueError(f"positions must be 'suffix' or 'prompt', got {positions!r}")
