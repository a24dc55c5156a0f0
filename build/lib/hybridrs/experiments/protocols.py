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

from hybridrs import _validate as v
from hybridrs.certify import cohen_radius, frontier, radius, worst_case
from hybridrs.smoothing import HybridSmooth
from hybridrs.stats import clopper_pearson_lower, clopper_pearson_upper
from hybridrs.threats import L0


# ------------------------------------------------------------------------------------------------
# Resumable cache
# ------------------------------------------------------------------------------------------------


def cache_dir() -> Path:
    from hybridrs._paths import results_dir

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
    from hybridrs._progress import progress_bar

    cache = ResultCache(name, folder)
    jobs = list(jobs)
    todo = [(k, f) for k, f in jobs if k not in cache]
    for k, f in progress_bar(todo, show=progress and bool(todo), desc=desc or name):
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


# ------------------------------------------------------------------------------------------------
# Tabular: heterogeneous arities (Auto MPG, linear SVM)
# ------------------------------------------------------------------------------------------------

#: Auto MPG columns (mlxtend.data.autompg_data): categorical cylinders, model year, origin;
#: continuous displacement, horsepower, weight, acceleration.
TAB_CATEGORICAL = (0, 5, 6)
TAB_CONTINUOUS = (1, 2, 3, 4)


def autompg_table(seed: int = 0, test_fraction: float = 0.25) -> dict:
    """Auto MPG (UCI, 392 cars, shipped by mlxtend): 3 categorical fields as category indices,
    4 continuous fields standardised with training statistics, label 1 iff mpg > the training
    median.  Stratified-free seeded split."""
    from mlxtend.data import autompg_data

    X, mpg = autompg_data()
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(mpg))
    n_test = int(round(test_fraction * len(mpg)))
    te, tr = order[:n_test], order[n_test:]
    cats, arities = [], []
    for j in TAB_CATEGORICAL:
        values = np.unique(X[:, j])
        cats.append(np.searchsorted(values, X[:, j]))
        arities.append(len(values))
    cat = np.stack(cats, 1).astype(np.int64)
    cont = X[:, list(TAB_CONTINUOUS)].astype(np.float64)
    mu, sd = cont[tr].mean(0), cont[tr].std(0)
    cont = (cont - mu) / sd
    y = (mpg > np.median(mpg[tr])).astype(np.int64)
    return {"cat_train": cat[tr], "cont_train": cont[tr], "y_train": y[tr], "cat_test": cat[te],
            "cont_test": cont[te], "y_test": y[te], "arities": arities}


def _onehot(cat: np.ndarray, arities) -> np.ndarray:
    return np.concatenate([np.eye(a)[cat[:, j]] for j, a in enumerate(arities)], axis=1)


class TabularSVM:
    """Linear SVM on [one-hot(categorical), continuous]; ``__call__(tokens, images)`` takes the
    category indices (b, 3) as ``tokens`` and the continuous part (b, 4) as ``images`` and returns
    the predicted class (b,) — or, with ``protect`` set, 1 where the prediction equals it."""

    def __init__(self, svm, arities, protect: int | None = None):
        self.svm, self.arities, self.protect = svm, list(arities), protect

    def predict(self, cat: np.ndarray, cont: np.ndarray) -> np.ndarray:
        return self.svm.predict(np.concatenate([_onehot(cat, self.arities), cont], 1))

    def __call__(self, tokens, images):
        pred = self.predict(torch.as_tensor(tokens).numpy(), torch.as_tensor(images).double().numpy())
        out = pred if self.protect is None else (pred == self.protect)
        return torch.as_tensor(out.astype(np.int64))


def train_tabular_svm(tab: dict, *, sigma: float = 0.5, beta: float = 0.25, copies: int = 5, seed: int = 0):
    """LinearSVC (C = 1) trained on ``copies`` noisy copies of each training row: Gaussian σ on the
    continuous fields, uniform replacement at β on the categorical ones (the released code's SVM
    experiment, paper.md §1.4)."""
    from sklearn.svm import LinearSVC
    from hybridrs.kernels import HeteroUniformKernel

    gen = torch.Generator().manual_seed(seed)
    kern = HeteroUniformKernel(beta, tab["arities"])
    cats, conts, ys = [], [], []
    for i in range(len(tab["y_train"])):
        cats.append(kern.sample(torch.as_tensor(tab["cat_train"][i]), copies, generator=gen).numpy())
        conts.append(tab["cont_train"][i] + sigma * torch.randn(copies, tab["cont_train"].shape[1],
                                                                 generator=gen, dtype=torch.float64).numpy())
        ys.append(np.full(copies, tab["y_train"][i]))
    cat, cont, y = np.concatenate(cats), np.concatenate(conts), np.concatenate(ys)
    svm = LinearSVC(C=1.0, random_state=seed, max_iter=20000).fit(
        np.concatenate([_onehot(cat, tab["arities"]), cont], 1), y)
    return TabularSVM(svm, tab["arities"])


def tabular_row(model: TabularSVM, cat: np.ndarray, cont: np.ndarray, label: int, *, beta: float, sigma: float,
                n: int, alpha: float, seed: int, d_max: int = 3) -> dict:
    """Majority-vote (τ = 1/2) hybrid certificate of one record with ``HeteroUniformKernel``:
    the protected class is the base prediction on the clean record; r*(d) for d = 0..d_max over
    the worst case of every field subset of size d."""
    from hybridrs.kernels import HeteroUniformKernel

    kern = HeteroUniformKernel(beta, model.arities)
    clean = int(model.predict(cat[None], cont[None])[0])
    base = TabularSVM(model.svm, model.arities, protect=clean)
    sm = HybridSmooth(base, sigma=sigma, kernel=kern, batch_size=n, progress=False)
    c = sm.certify(torch.as_tensor(cat), torch.as_tensor(cont), n, alpha=alpha, tau=0.5, threat=L0(d_max), seed=seed)
    return {"label": int(label), "prediction": clean, "correct": bool(clean == label), "count": c.count,
            "p_a": float(c.p_a[0]), "radii": [float(r) if np.isfinite(r) else -1.0 for r in c.radii],
            "d_certified": c.d_certified}
