"""Tabular hybrid smoothing: heterogeneous arities (Auto MPG, linear SVM), the released code's
SVM experiment (categorical fields smoothed by ``HeteroUniformKernel``, continuous ones by a
Gaussian, majority vote τ = 1/2)."""

from __future__ import annotations

import numpy as np
import torch

from hybridrs.smoothing import HybridSmooth

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
    from hybridrs.estimators import FixedN
    from hybridrs.threats import L0

    sm = HybridSmooth(base, sigma=sigma, kernel=kern, batch_size=n, progress=False)
    c = sm.certify(torch.as_tensor(cat), torch.as_tensor(cont), threat=L0(d_max), estimator=FixedN(n, alpha),
                   tau=0.5, seed=seed)
    return {"label": int(label), "prediction": clean, "correct": bool(clean == label), "count": c.count,
            "p_a": float(c.p_a[0]), "radii": [float(r) if np.isfinite(r) else -1.0 for r in c.radii],
            "d_certified": c.d_certified}
