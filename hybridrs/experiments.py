"""Experiment loops of chapter 8 (reproducing Delattre et al. 2026 offline), resumable.

Every loop certifies one input at a time and appends its row to a CSV file under
``<results>/cache/`` (``hybridrs.book.results_dir``) as soon as it is done; a rerun reads the file
and skips every key already there, so an interrupted run resumes where it stopped.  Keys spell out
every parameter that changes the result (set, input index, σ, β, n, seed, ...), so runs with other
settings never reuse a row.

Certificates (``shared/notes/paper.md`` §1.3; ``hybridrs.certify``):

* image-only RS: Cohen's radius σ(Φ⁻¹(p_A) − Φ⁻¹(τ)) with the text clean;
* text-only RS, append-only suffix: for d = 1..m a fresh Monte Carlo estimate with the kernel K_d
  that noises only the first d appended slots, image clean; (d, 0) certified iff the fractional
  knapsack value ≥ τ; stop at the first failure;
* hybrid RS, suffix: the same per-d estimates with the image noised too; r*(d) the hybrid
  Neyman–Pearson radius; d_max the largest d with r*(d') > 0 for all d' ≤ d (the released code's
  ``d_cert``), stop at the first d with r*(d) ≤ 0;
* shared-D: one estimate with all m slots noised, the whole frontier from it;
* ℓ0: one estimate with every prompt token noised, the whole frontier from it.

p_A is the one-sided Clopper–Pearson lower bound at level α on P[f(Z) = 1], 1 = Unsafe.
"""

from __future__ import annotations

import csv
import json
import math
import time
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import pandas as pd
import torch

from . import _validate as v
from .certify import cohen_radius, frontier, radius, worst_case
from .smoothing import HybridSmooth
from .stats import clopper_pearson_lower, clopper_pearson_upper


# ------------------------------------------------------------------------------------------------
# Resumable cache
# ------------------------------------------------------------------------------------------------


def cache_dir() -> Path:
    from .book import results_dir

    path = results_dir() / "cache"
    path.mkdir(parents=True, exist_ok=True)
    return path


class ResultCache:
    """Rows keyed by a string ``key``, appended to ``<folder>/<name>.csv`` one at a time.

    Values that are lists or dicts are stored as JSON strings and decoded on reading.
    """

    def __init__(self, name: str, folder: Path | str | None = None):
        if not name or "/" in name:
            raise ValueError(f"name must be a plain file stem, got {name!r}")
        self.path = Path(folder if folder is not None else cache_dir()) / f"{name}.csv"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.rows: dict[str, dict] = {}
        self.columns: list[str] | None = None
        if self.path.exists():
            with self.path.open(newline="") as fh:
                reader = csv.DictReader(fh)
                self.columns = reader.fieldnames
                for row in reader:
                    self.rows[row["key"]] = {k: _decode(x) for k, x in row.items()}

    def __contains__(self, key: str) -> bool:
        return key in self.rows

    def add(self, key: str, row: dict) -> dict:
        row = {"key": key, **row}
        if self.columns is None:
            self.columns = list(row)
            with self.path.open("w", newline="") as fh:
                csv.writer(fh).writerow(self.columns)
        if set(row) != set(self.columns):
            raise ValueError(f"row columns {sorted(row)} differ from the cache's {sorted(self.columns)}")
        with self.path.open("a", newline="") as fh:
            csv.writer(fh).writerow([_encode(row[c]) for c in self.columns])
        self.rows[key] = {k: _decode(_encode(x) if not isinstance(x, bool) else str(x)) for k, x in row.items()}
        return self.rows[key]


def _encode(x):
    if isinstance(x, (list, tuple, dict)):
        return json.dumps(x)
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    return x


def _decode(x):
    if not isinstance(x, str):
        return x
    if x in ("True", "False"):
        return x == "True"
    if x[:1] in "[{":
        return json.loads(x)
    for cast in (int, float):
        try:
            return cast(x)
        except ValueError:
            pass
    return x


def run_cached(name: str, jobs: Iterable[tuple[str, Callable[[], dict]]], folder=None,
               progress: bool = True, desc: str | None = None) -> pd.DataFrame:
    """Run each (key, job) whose key is not yet in the cache ``name``; return the rows of all the
    given keys, in order, as a DataFrame.  Each row is written the moment its job returns."""
    from tqdm.auto import tqdm

    cache = ResultCache(name, folder)
    jobs = list(jobs)
    todo = [(k, f) for k, f in jobs if k not in cache]
    for k, f in tqdm(todo, desc=desc or name, disable=not progress or not todo):
        cache.add(k, f())
    return pd.DataFrame([cache.rows[k] for k, _ in jobs])


# ------------------------------------------------------------------------------------------------
# One input, one certificate
# ------------------------------------------------------------------------------------------------


def _clean(x: float) -> float:
    """Certified radius as a number ≥ 0 for averaging (−inf, not certified → 0)."""
    return float(x) if np.isfinite(x) and x > 0 else (math.inf if x == math.inf else 0.0)


def image_only(base, tokens: torch.Tensor, image: torch.Tensor, *, sigma: float, n: int, alpha: float,
               tau: float, seed: int) -> dict:
    """Image-only RS: text clean, image + σN(0, I); Cohen's radius at τ."""
    sm = HybridSmooth(base, sigma=sigma, kernel=None, progress=False)
    t0 = time.perf_counter()
    k = sm.count(tokens, image, n, seed=seed)
    t1 = time.perf_counter()
    p = float(clopper_pearson_lower(k, n, alpha))
    r = float(cohen_radius(p, sigma, tau))
    t2 = time.perf_counter()
    return {"count": k, "p_a": p, "radius": _clean(r), "certified": bool(r >= 0),
            "seconds_sampling": t1 - t0, "seconds_certify": t2 - t1}


def suffix_per_d(base, tokens: torch.Tensor, image: torch.Tensor, *, kernel, sigma: float | None, n: int,
                 alpha: float, tau: float, seed: int, m: int = 8) -> dict:
    """Append-only suffix threat with per-d re-sampling (the paper's main protocol).

    ``tokens`` is the padded sequence s ∥ c^m; for d = 1..m the kernel noises the first d appended
    slots only.  ``sigma=None``: text-only (image clean, knapsack certificate); else hybrid with the
    image noised and r*(d) from :func:`hybridrs.certify.radius`.  Stops at the first failing d.
    """
    L = tokens.numel() - m
    if L < 1:
        raise ValueError("tokens must hold the prompt followed by m filler slots")
    sm = HybridSmooth(base, sigma=sigma, kernel=kernel, progress=False)
    counts, pas, radii = [], [], []
    ts = tc = 0.0
    for d in range(1, m + 1):
        mask = torch.zeros(tokens.numel(), dtype=torch.bool)
        mask[L: L + d] = True
        t0 = time.perf_counter()
        k = sm.count(tokens, image, n, seed=seed * 1_000 + d, mask=mask)
        t1 = time.perf_counter()
        p = float(clopper_pearson_lower(k, n, alpha))
        if sigma is None:
            r = 0.0 if worst_case(p, kernel, d, 0.0, 1.0) >= tau else -math.inf
        else:
            r = float(radius(p, kernel, d, sigma, tau))
        tc += time.perf_counter() - t1
        ts += t1 - t0
        counts.append(k)
        pas.append(p)
        radii.append(r if np.isfinite(r) else -1.0)
        ok = (r >= 0) if sigma is None else (r > 0)
        if not ok:
            break
    ok = [(r >= 0) if sigma is None else (r > 0) for r in radii]
    d_max = int(np.argmin(ok)) if not all(ok) else len(ok)
    r_at = [max(r, 0.0) for r in radii] + [0.0] * (m - len(radii))
    return {"counts": counts, "p_a": pas, "radii": r_at, "d_max": d_max,
            "r_d1": r_at[0], "r_dmax": r_at[d_max - 1] if d_max >= 1 else 0.0,
            "draws": n * len(counts), "seconds_sampling": ts, "seconds_certify": tc}


def one_shot(base, tokens: torch.Tensor, image: torch.Tensor, *, kernel, sigma: float, n: int, alpha: float,
             tau: float, seed: int, mask: torch.Tensor | None, d_max: int = 8) -> dict:
    """One Monte Carlo estimate (noise on ``mask``, all positions if None) and the frontier
    r*(0..d_max) from it: the shared-D suffix and the ℓ0 protocols."""
    sm = HybridSmooth(base, sigma=sigma, kernel=kernel, progress=False)
    t0 = time.perf_counter()
    k = sm.count(tokens, image, n, seed=seed, mask=mask)
    t1 = time.perf_counter()
    p = float(clopper_pearson_lower(k, n, alpha))
    if sigma is None:
        ok = np.logical_and.accumulate([worst_case(p, kernel, d, 0.0, 1.0) >= tau for d in range(d_max + 1)])
        fr = np.where(ok, 0.0, -np.inf)
    else:
        fr = frontier(p, kernel, d_max, sigma, tau)
    t2 = time.perf_counter()
    good = (fr[1:] >= 0) if sigma is None else (fr[1:] > 0)
    d_cert = int(np.argmin(good)) if not good.all() else d_max
    rad = [max(float(x), 0.0) for x in fr[1:]]
    return {"count": k, "p_a": p, "radii": rad, "d_max": d_cert, "r_d1": rad[0],
            "r_dmax": rad[d_cert - 1] if d_cert >= 1 else 0.0, "draws": n,
            "seconds_sampling": t1 - t0, "seconds_certify": t2 - t1}


# ------------------------------------------------------------------------------------------------
# Adaptive attack (ℓ2-PGD on the image + greedy token substitution in the suffix)
# ------------------------------------------------------------------------------------------------


def _smoothed_logit(model, toks: torch.Tensor, img: torch.Tensor, noise: torch.Tensor, sigma: float):
    b = noise.shape[0]
    return model.logits(toks.expand(b, -1), img.unsqueeze(0) + sigma * noise).mean()


def adaptive_attack(model, tokens: torch.Tensor, image: torch.Tensor, *, d: int, eps: float, sigma: float,
                    alphabet: torch.Tensor, m: int = 8, eot: int = 64, pgd_steps: int = 10, rounds: int = 2,
                    candidates: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Attack the smoothed filter: lower E_noise[logit f(s', v + δ + σZ)] (expectation over ``eot``
    fixed draws, Athalye et al.'s EOT) by alternating, for ``rounds`` rounds,
    (i) ``pgd_steps`` steps of ℓ2-PGD on δ, ‖δ‖₂ ≤ ε (step 2.5ε/steps, Madry et al. 2018), and
    (ii) greedy substitution of each of the first d suffix slots by the best of ``candidates``
    random alphabet tokens.  Returns the attacked (tokens, image)."""
    gen = torch.Generator().manual_seed(seed)
    L = tokens.numel() - m
    noise = torch.randn((eot, *image.shape), generator=gen)
    toks = tokens.clone()
    delta = torch.zeros_like(image)
    step = 2.5 * eps / max(pgd_steps, 1)
    for _ in range(rounds):
        if eps > 0:
            for _ in range(pgd_steps):
                delta.requires_grad_(True)
                loss = _smoothed_logit(model, toks, image + delta, noise, sigma)
                (g,) = torch.autograd.grad(loss, delta)
                with torch.no_grad():
                    delta = delta - step * g / g.norm().clamp_min(1e-12)
                    nrm = delta.norm()
                    if nrm > eps:
                        delta = delta * (eps / nrm)
            delta = delta.detach()
        with torch.no_grad():
            for pos in range(L, L + d):
                cand = alphabet[torch.randint(len(alphabet), (candidates,), generator=gen)]
                best, best_val = toks[pos].item(), float(_smoothed_logit(model, toks, image + delta, noise, sigma))
                for c in cand.tolist():
                    trial = toks.clone()
                    trial[pos] = c
                    val = float(_smoothed_logit(model, trial, image + delta, noise, sigma))
                    if val < best_val:
                        best, best_val = c, val
                toks[pos] = best
    return toks, (image + delta).detach()


def attack_row(model, tokens, image, *, kernel, d: int, eps: float, sigma: float, alphabet, n_clean: int,
               n_attack: int, alpha: float, tau: float, seed: int, m: int = 8) -> dict:
    """Certificate at (d, ε) from the clean point (per-d suffix kernel, n_clean draws) versus a
    Monte Carlo estimate of P[f = Unsafe] at the adversarial point (same kernel, n_attack draws).

    Soundness requires p_U(attacked) ≥ p_adv(d, ε) whenever the bound holds (probability ≥ 1 − α);
    the row reports the upper Clopper–Pearson bound on p_U(attacked) so the comparison is one-sided.
    """
    L = tokens.numel() - m
    mask = torch.zeros(tokens.numel(), dtype=torch.bool)
    mask[L: L + d] = True
    sm = HybridSmooth(model, sigma=sigma, kernel=kernel, progress=False)
    k0 = sm.count(tokens, image, n_clean, seed=seed, mask=mask)
    p_a = float(clopper_pearson_lower(k0, n_clean, alpha))
    p_adv = float(worst_case(p_a, kernel, d, eps, sigma))
    adv_t, adv_v = adaptive_attack(model, tokens, image, d=d, eps=eps, sigma=sigma, alphabet=alphabet, m=m,
                                   seed=seed)
    k1 = sm.count(adv_t, adv_v, n_attack, seed=seed + 7, mask=mask)
    return {"d": d, "eps": eps, "clean_count": k0, "p_a": p_a, "p_adv_bound": p_adv,
            "certified": bool(p_adv >= tau), "attacked_count": k1, "p_attacked": k1 / n_attack,
            "p_attacked_upper": float(clopper_pearson_upper(k1, n_attack, alpha)),
            "base_flipped": bool(int(model(adv_t.unsqueeze(0), adv_v.unsqueeze(0))[0]) == 0),
            "perturbation_l2": float((adv_v - image).norm()), "tokens_changed": int((adv_t != tokens).sum())}


# ------------------------------------------------------------------------------------------------
# Summaries
# ------------------------------------------------------------------------------------------------


def certified_accuracy_curve(radii: np.ndarray, eps_grid: np.ndarray) -> np.ndarray:
    """Share of inputs whose certified radius is ≥ ε for each ε of the grid (radius < 0 or NaN: none).

    ``radii`` (N,) — inputs whose certificate fails count as 0 at every ε; at ε = 0 a radius of
    exactly 0 counts as certified only when ``radii`` ≥ 0.
    """
    r = np.asarray(radii, dtype=np.float64)
    r = np.where(np.isnan(r), -np.inf, r)
    return np.array([(r >= e).mean() if e > 0 else (r > 0).mean() for e in np.asarray(eps_grid)])
