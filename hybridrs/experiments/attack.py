"""Adaptive attack on the *smoothed* filter, and the Neyman–Pearson worst case that attains the
certificate's bound.

The certificate says: with probability ≥ 1 − α over the clean estimate, every point of the
(d, ε) ball — d suffix tokens, image moved by ≤ ε in ℓ2 — has P[f(Z) = unsafe] ≥ p_adv(d, ε) under
the same smoothing (here the per-d suffix kernel of stage d and σ).  :func:`attack_smoothed` looks
for a point of the ball where that probability is small:

* image: ℓ2-PGD (Madry et al. 2018) on δ, ‖δ‖₂ ≤ ε, minimising the Monte Carlo surrogate
  mean_j sigmoid(logit f(Z_j)) over ``eot`` fixed noise draws (expectation over transformation,
  Athalye et al. 2018; common random numbers: the same seeded draws at every step);
* text: greedy substitution of each of the d suffix slots by the best of ``candidates`` random
  alphabet tokens under the same surrogate;

alternated for ``rounds`` rounds.  :func:`attack_row` then re-estimates P[unsafe] at the attacked
point with fresh draws and reports it, with its one-sided Clopper–Pearson upper bound, against
p_adv as a ratio (≥ 1 whenever the bound holds).  :func:`np_reference` evaluates the
Neyman–Pearson worst-case classifier h* of the same p_A (``hybridrs.reference.regions.np_region_mc``):
the classifier that attains p_adv exactly, so the gap between the two ratios is the certificate's
slack against this filter.
"""

from __future__ import annotations

import torch

from hybridrs.certify import worst_case
from hybridrs.stats import clopper_pearson_upper


def _surrogate(model, toks_batch: torch.Tensor, img: torch.Tensor, noise: torch.Tensor, sigma: float):
    return torch.sigmoid(model.logits(toks_batch, img.unsqueeze(0) + sigma * noise)).mean()


def _noisy_tokens(kernel, toks: torch.Tensor, mask: torch.Tensor, eot: int, seed: int) -> torch.Tensor:
    return kernel.sample(toks, eot, generator=torch.Generator().manual_seed(seed), mask=mask)


def attack_smoothed(model, tokens: torch.Tensor, image: torch.Tensor, *, d: int, eps: float, sigma: float,
                    kernel, m: int, eot: int = 128, pgd_steps: int = 20, rounds: int = 2, candidates: int = 48,
                    seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Attack the smoothed filter at the padded input ``tokens`` (prompt ∥ m filler slots):
    change at most the first d slots and move the image by ‖δ‖₂ ≤ ε.  ``model`` needs
    ``logits(tokens, images)``.  Returns the attacked (tokens, image)."""
    gen = torch.Generator().manual_seed(seed)
    L = tokens.numel() - m
    mask = torch.zeros(tokens.numel(), dtype=torch.bool)
    mask[L: L + d] = True
    noise = torch.randn((eot, *image.shape), generator=gen)
    tseed = int(torch.randint(2**62, (1,), generator=gen))
    alphabet = kernel.alphabet if kernel.alphabet is not None else torch.arange(kernel.vocab_size)
    toks = tokens.clone()
    delta = torch.zeros_like(image)
    step = 2.5 * eps / max(pgd_steps, 1)
    for _ in range(rounds):
        zt = _noisy_tokens(kernel, toks, mask, eot, tseed)
        if eps > 0:
            for _ in range(pgd_steps):
                delta.requires_grad_(True)
                loss = _surrogate(model, zt, image + delta, noise, sigma)
                (g,) = torch.autograd.grad(loss, delta)
                with torch.no_grad():
                    delta = delta - step * g / g.norm().clamp_min(1e-12)
                    nrm = delta.norm()
                    if nrm > eps:
                        delta = delta * (eps / nrm)
            delta = delta.detach()
        with torch.no_grad():
            for pos in range(L, L + d):
                cand = alphabet[torch.randint(len(alphabet), (candidates,), generator=gen)].tolist()
                best = toks[pos].item()
                best_val = float(_surrogate(model, _noisy_tokens(kernel, toks, mask, eot, tseed), image + delta,
                                            noise, sigma))
                for c in cand:
                    trial = toks.clone()
                    trial[pos] = c
                    val = float(_surrogate(model, _noisy_tokens(kernel, trial, mask, eot, tseed), image + delta,
                                           noise, sigma))
                    if val < best_val:
                        best, best_val = c, val
                toks[pos] = best
    return toks, (image + delta).detach()


def np_reference(kernel, d: int, eps: float, sigma: float, p_a: float, n: int = 100_000, seed: int = 0) -> dict:
    """The Neyman–Pearson worst-case classifier of p_A against the canonical adversary (d changed
    slots, image shifted by ε): its exact adversarial probability (= p_adv) and a Monte Carlo
    check of it (mean and standard error over n draws)."""
    from hybridrs.kernels import UniformKernel
    from hybridrs.reference.regions import np_region_mc

    k = UniformKernel(kernel.beta, vocab_size=kernel.vocab_size)
    s = torch.zeros(d, dtype=torch.long)
    out = np_region_mc(k, s, s + 1, p_a, eps, sigma, n, seed=seed)
    return {"np_p_adv_exact": out["p_adv_exact"], "np_adv_mc": out["adv_mean"], "np_adv_se": out["adv_se"],
            "np_clean_mc": out["clean_mean"]}


def attack_row(model, tokens: torch.Tensor, image: torch.Tensor, *, p_a: float, d: int, eps: float, sigma: float,
               kernel, m: int, n_attack: int, alpha: float, tau: float, seed: int, np_draws: int = 100_000) -> dict:
    """Attack one certified input at (d, ε) and compare with the bound p_adv(d, ε) from ``p_a``
    (the clean certificate's lower bound for stage d)."""
    from hybridrs.smoothing import HybridSmooth, input_seed

    p_adv = float(worst_case(p_a, kernel, d, eps, sigma))
    adv_t, adv_v = attack_smoothed(model, tokens, image, d=d, eps=eps, sigma=sigma, kernel=kernel, m=m,
                                   seed=input_seed(seed, "attack"))
    L = tokens.numel() - m
    mask = torch.zeros(tokens.numel(), dtype=torch.bool)
    mask[L: L + d] = True
    sm = HybridSmooth(model, sigma=sigma, kernel=kernel, batch_size=2500, progress=False)
    k_att = sm.count(adv_t, adv_v, n_attack, seed=input_seed(seed, "attacked estimate"), mask=mask)
    k_cln = sm.count(tokens, image, n_attack, seed=input_seed(seed, "clean estimate"), mask=mask)
    up = float(clopper_pearson_upper(k_att, n_attack, alpha))
    ref = np_reference(kernel, d, eps, sigma, p_a, n=np_draws, seed=input_seed(seed, "np") % 2**31)
    return {"d": d, "eps": eps, "p_a": p_a, "p_adv": p_adv, "certified": bool(p_adv >= tau),
            "p_clean": k_cln / n_attack, "p_attacked": k_att / n_attack, "p_attacked_upper": up,
            "ratio": (k_att / n_attack) / p_adv if p_adv > 0 else float("inf"),
            "ratio_upper": up / p_adv if p_adv > 0 else float("inf"),
            "bound_respected": bool(up >= p_adv), "tokens_changed": int((adv_t != tokens).sum()),
            "perturbation_l2": float((adv_v - image).norm()), **ref,
            "np_ratio": ref["np_p_adv_exact"] / p_adv if p_adv > 0 else float("nan")}
