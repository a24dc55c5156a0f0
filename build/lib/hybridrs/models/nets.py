"""Small MNIST classifiers and a deterministic CPU training loop.

The chapters train their own models in seconds on two CPU cores, so that every number in the book
can be regenerated from scratch.  ``train`` optionally adds Gaussian noise N(0, σ²I) to the
[0, 1]-pixel inputs at every step: the training recipe of Cohen et al. (2019, §4) for base
classifiers of randomized smoothing.
"""

from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from hybridrs import _validate


def mnist_cnn(width: int = 32) -> nn.Module:
    """A small convolutional classifier for (N, 1, 28, 28) inputs in [0, 1], returning 10 logits.

    conv3x3(1→w) – ReLU – maxpool2 – conv3x3(w→2w) – ReLU – maxpool2 – linear(2w·7·7→128) – ReLU –
    linear(128→10).  ``width`` = w.
    """
    w = _validate.integer(width, "width", minimum=1)
    return nn.Sequential(
        nn.Conv2d(1, w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(2 * w * 7 * 7, 128), nn.ReLU(),
        nn.Linear(128, 10),
    )


def _check_data(x: torch.Tensor, y: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise ValueError("x and y must be torch tensors")
    if x.ndim < 1 or x.shape[0] != y.shape[0] or y.ndim != 1:
        raise ValueError(f"x and y must share their first dimension; got x {tuple(x.shape)}, "
                         f"y {tuple(y.shape)}")
    if x.shape[0] == 0:
        raise ValueError("x must hold at least one example")
    if torch.isnan(x).any():
        raise ValueError("x contains NaN")


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int, batch_size: int = 128,
          lr: float = 1e-3, noise_sigma: float = 0.0, seed: int = 0,
          progress: bool = False) -> nn.Module:
    """Train ``model`` in place with Adam on the cross-entropy and return it (in eval mode).

    Each epoch visits the training set in an order drawn from a generator seeded with
    ``seed + epoch``; with ``noise_sigma`` = σ > 0 each batch is replaced by x + N(0, σ²I) (not
    clipped), as in Cohen et al. (2019), "Certified adversarial robustness via randomized
    smoothing", §4.  Deterministic on CPU for a given seed and thread count.
    """
    _check_data(x, y)
    epochs = _validate.integer(epochs, "epochs", minimum=1)
    batch_size = _validate.integer(batch_size, "batch_size", minimum=1)
    lr = _validate.positive(lr, "lr")
    sigma = _validate.nonnegative(noise_sigma, "noise_sigma")
    seed = _validate.integer(seed, "seed", minimum=0)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    n = x.shape[0]
    epoch_iter = range(epochs)
    if progress:
        from tqdm.auto import tqdm
        epoch_iter = tqdm(epoch_iter, desc="epochs")
    model.train()
    for epoch in epoch_iter:
        gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        order = torch.randperm(n, generator=gen)
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            xb, yb = x[idx], y[idx]
            if sigma > 0:
                xb = xb + sigma * torch.randn(xb.shape, generator=gen, dtype=xb.dtype)
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    model.eval()
    return model


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """argmax_j f_j(x) for every row of ``x``, computed in batches."""
    batch_size = _validate.integer(batch_size, "batch_size", minimum=1)
    was_training = model.training
    model.eval()
    out = torch.cat([model(x[i:i + batch_size]).argmax(dim=1) for i in range(0, x.shape[0], batch_size)])
    model.train(was_training)
    return out


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> float:
    """Fraction of examples with argmax_j f_j(x) = y (clean accuracy)."""
    _check_data(x, y)
    return float((predict(model, x, batch_size) == y).float().mean())
