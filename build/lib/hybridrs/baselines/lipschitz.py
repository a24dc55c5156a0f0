"""Lipschitz bounds and 1-Lipschitz layers (chapter 2).

* Spectral norms: power iteration for dense matrices and for convolutions (through ``conv2d`` and
  its adjoint ``conv_transpose2d``), and the exact norm of a circular convolution by the Fourier
  method of Sedghi et al. (2019).
* Bounds on a network: the product of layer norms (upper) and the largest Jacobian norm over a
  set of inputs (lower).
* 1-Lipschitz building blocks: orthogonal dense layers, the SLL layer of Araujo et al. (2023),
  the MaxMin (GroupSort-2) activation of Anil et al. (2019).
* Certificates: the margin radius (f_y − max_{j≠y} f_j)/(√2 L) of Tsuzuku et al. (2018) and the
  certified robust accuracy.

Radii are on the scale of the network's input.  If a network is L-Lipschitz on *normalised* inputs
(x − μ)/s, it is L/s-Lipschitz on [0, 1] pixels: pass that constant to ``margin_radius``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from hybridrs import _validate


# ----------------------------------------------------------------------------- spectral norms

def _check_tensor(t, name: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch tensor")
    if torch.isnan(t).any() or torch.isinf(t).any():
        raise ValueError(f"{name} contains NaN or inf")
    return t


def _power_iteration(apply, apply_t, shape, iters: int, tol: float, seed: int,
                     dtype=torch.float64) -> tuple[float, int]:
    """σ_max of a linear map A given x ↦ Ax and u ↦ Aᵀu: v ← AᵀAv/‖AᵀAv‖, σ ≈ ‖Av‖.

    Stops when the relative change of σ falls below ``tol`` or after ``iters`` iterations;
    returns (σ, iterations used).  ‖Av‖ with ‖v‖ = 1 never exceeds σ_max, so the estimate
    approaches the norm from below.
    """
    gen = torch.Generator().manual_seed(seed)
    v = torch.randn(shape, generator=gen, dtype=dtype)
    v = v / v.norm()
    sigma = 0.0
    for it in range(1, iters + 1):
        u = apply(v)
        new_sigma = float(u.norm())
        w = apply_t(u)
        wn = w.norm()
        if float(wn) == 0.0:
            return 0.0, it
        v = w / wn
        if it > 1 and abs(new_sigma - sigma) <= tol * max(new_sigma, 1e-300):
            sigma = new_sigma
            return float(apply(v).norm()), it
        sigma = new_sigma
    return float(apply(v).norm()), iters


def power_iteration(W: torch.Tensor, iters: int = 500, tol: float = 1e-10,
                    seed: int = 0) -> tuple[float, int]:
    """Largest singular value ‖W‖₂ = σ_max(W) of a dense matrix by power iteration on WᵀW
    (Miyato et al. 2018, Alg. 1): v ← WᵀWv/‖WᵀWv‖, σ ≈ ‖Wv‖.  Returns (σ, iterations)."""
    W = _check_tensor(W, "W")
    if W.ndim != 2:
        raise ValueError(f"W must be a matrix, got shape {tuple(W.shape)}")
    iters = _validate.integer(iters, "iters", minimum=1)
    tol = _validate.nonnegative(tol, "tol")
    Wd = W.detach().double()
    return _power_iteration(lambda v: Wd @ v, lambda u: Wd.T @ u, (W.shape[1],), iters, tol, seed)


def _conv_ops(weight: torch.Tensor, n: int, stride: int, padding: int, padding_mode: str):
    """x ↦ conv(x) and its adjoint for a (C_in, n, n) input, in float64."""
    K = weight.detach().double()
    cin = K.shape[1]
    if padding_mode == "zeros":
        def apply(v):
            return F.conv2d(v[None], K, stride=stride, padding=padding)[0]
        out_n = (n + 2 * padding - K.shape[-1]) // stride + 1
        # output_padding recovers inputs the strided conv never reaches
        op = n - ((out_n - 1) * stride - 2 * padding + K.shape[-1])

        def apply_t(u):
            return F.conv_transpose2d(u[None], K, stride=stride, padding=padding, output_padding=op)[0]
    elif padding_mode == "circular":
        p = padding

        def apply(v):
            return F.conv2d(F.pad(v[None], (p, p, p, p), mode="circular"), K, stride=stride)[0]

        def apply_t(u):
            z = F.conv_transpose2d(u[None], K, stride=stride)[0]
            full = n + 2 * p
            if z.shape[-1] < full:  # stride leaves the last rows/cols untouched
                z = F.pad(z, (0, full - z.shape[-1], 0, full - z.shape[-2]))
            # adjoint of circular padding: fold the padded border back onto the opposite side
            out = z[:, p:p + n, p:p + n].clone()
            if p > 0:
                out[:, -p:, :] += z[:, :p, p:p + n]
                out[:, :p, :] += z[:, p + n:, p:p + n]
                out[:, :, -p:] += z[:, p:p + n, :p]
                out[:, :, :p] += z[:, p:p + n, p + n:]
                out[:, -p:, -p:] += z[:, :p, :p]
                out[:, -p:, :p] += z[:, :p, p + n:]
                out[:, :p, -p:] += z[:, p + n:, :p]
                out[:, :p, :p] += z[:, p + n:, p + n:]
            return out
    else:
        raise ValueError(f"padding_mode must be 'zeros' or 'circular', got {padding_mode!r}")
    return apply, apply_t, (cin, n, n)


def _check_conv(weight, n, stride, padding):
    weight = _check_tensor(weight, "weight")
    if weight.ndim != 4 or weight.shape[-1] != weight.shape[-2]:
        raise ValueError(f"weight must be (C_out, C_in, k, k), got shape {tuple(weight.shape)}")
    n = _validate.integer(n, "n", minimum=1)
    stride = _validate.integer(stride, "stride", minimum=1)
    padding = _validate.integer(padding, "padding", minimum=0)
    if n + 2 * padding < weight.shape[-1]:
        raise ValueError(f"n={n} with padding={padding} is smaller than the kernel")
    return weight, n, stride, padding


def conv_power_iteration(weight: torch.Tensor, n: int, stride: int = 1, padding: int | None = None,
                         padding_mode: str = "zeros", iters: int = 500, tol: float = 1e-10,
                         seed: int = 0) -> tuple[float, int]:
    """Operator norm ‖K‖₂ of the convolution x ↦ K ⋆ x on (C_in, n, n) inputs by power iteration
    through ``conv2d`` and its adjoint ``conv_transpose2d`` (Miyato et al. 2018 applied to the
    convolution operator rather than to the reshaped kernel): v ← K*(K⋆v)/‖·‖, σ ≈ ‖K⋆v‖.

    ``padding`` defaults to k//2; ``padding_mode`` is 'zeros' (as in ``nn.Conv2d``) or
    'circular' (the operator whose norm ``conv_norm_fourier`` computes exactly).
    Returns (σ, iterations).
    """
    if padding is None and isinstance(weight, torch.Tensor) and weight.ndim == 4:
        padding = weight.shape[-1] // 2
    weight, n, stride, padding = _check_conv(weight, n, stride, padding)
    iters = _validate.integer(iters, "iters", minimum=1)
    tol = _validate.nonnegative(tol, "tol")
    apply, apply_t, shape = _conv_ops(weight, n, stride, padding, padding_mode)
    return _power_iteration(apply, apply_t, shape, iters, tol, seed)


def conv_norm_fourier(weight: torch.Tensor, n: int) -> float:
    """Exact operator norm of the stride-1 *circular* convolution with kernel K on n×n inputs,
    Sedghi, Gupta & Long (2019), Thm. 6:

        ‖K‖₂ = max_{u,v ∈ {0..n−1}} σ_max( K̂[:, :, u, v] ),  K̂ = FFT2 of K zero-padded to n×n,

    since the 2-D DFT block-diagonalises every circular convolution into n² matrices of size
    C_out × C_in.  (Cross-correlation instead of convolution conjugates K̂, which leaves the
    singular values unchanged; so does the circular shift that centres the kernel.)
    """
    weight = _check_tensor(weight, "weight")
    if weight.ndim != 4:
        raise ValueError(f"weight must be (C_out, C_in, k1, k2), got shape {tuple(weight.shape)}")
    n = _validate.integer(n, "n", minimum=1)
    if n < max(weight.shape[-2:]):
        raise ValueError(f"n={n} must be at least the kernel size {tuple(weight.shape[-2:])}")
    khat = torch.fft.fft2(weight.detach().double(), s=(n, n))      # (C_out, C_in, n, n)
    blocks = khat.permute(2, 3, 0, 1)                                # (n, n, C_out, C_in)
    return float(torch.linalg.matrix_norm(blocks, ord=2).max())


def conv_operator_matrix(weight: torch.Tensor, n: int, stride: int = 1, padding: int | None = None,
                         padding_mode: str = "zeros") -> torch.Tensor:
    """The dense (C_out·m² × C_in·n²) matrix of the convolution operator, column by column
    (one basis image at a time).  Only for small n: it has (C·n²)² entries."""
    if padding is None and isinstance(weight, torch.Tensor) and weight.ndim == 4:
        padding = weight.shape[-1] // 2
    weight, n, stride, padding = _check_conv(weight, n, stride, padding)
    apply, _, shape = _conv_ops(weight, n, stride, padding, padding_mode)
    basis = torch.eye(int(np.prod(shape)), dtype=torch.float64).reshape(-1, *shape)
    return torch.stack([apply(e).flatten() for e in basis], dim=1)


# ----------------------------------------------------------------------------- network bounds

def product_bound(norms) -> float:
    """Product upper bound PUB = Π_l ‖W_l‖₂ on the Lipschitz constant of x ↦ W_L ρ(⋯ρ(W_1 x))
    with 1-Lipschitz activations ρ (Szegedy et al. 2014, §4.3)."""
    arr = np.asarray([float(v) for v in norms], dtype=np.float64)
    if arr.size == 0 or np.isnan(arr).any() or (arr < 0).any():
        raise ValueError("norms must be a non-empty sequence of numbers >= 0")
    return float(np.prod(arr))


def jacobian_norms(model: nn.Module, x: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """‖J_f(x_i)‖₂ (largest singular value of the Jacobian of the logits) for each row of x.

    For a differentiable-almost-everywhere f, L(f) = sup_x ‖J_f(x)‖₂, so the maximum over any
    set of inputs is a *lower* bound on the Lipschitz constant.
    """
    x = _check_tensor(x, "x")
    batch_size = _validate.integer(batch_size, "batch_size", minimum=1)
    from torch.func import jacrev, vmap

    def f(xi):
        return model(xi[None])[0]

    out = []
    for i in range(0, x.shape[0], batch_size):
        J = vmap(jacrev(f))(x[i:i + batch_size].detach())          # (B, C, *input)
        out.append(torch.linalg.matrix_norm(J.detach().flatten(2).double(), ord=2))
    return torch.cat(out)


# ----------------------------------------------------------------------------- 1-Lipschitz layers

class MaxMin(nn.Module):
    """GroupSort with groups of two (Anil et al. 2019): (a, b) ↦ (max(a, b), min(a, b)) on pairs
    of features.  A permutation of its input on each linear piece, hence 1-Lipschitz and
    gradient-norm preserving.  The last dimension must be even."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % 2:
            raise ValueError(f"MaxMin needs an even number of features, got {x.shape[-1]}")
        a, b = x.unflatten(-1, (-1, 2)).unbind(-1)
        return torch.cat([torch.maximum(a, b), torch.minimum(a, b)], dim=-1)


def orthogonal_linear(in_features: int, out_features: int, bias: bool = True,
                      orthogonal_map: str = "cayley") -> nn.Linear:
    """A dense layer whose weight is kept (semi-)orthogonal by
    ``torch.nn.utils.parametrizations.orthogonal`` (Cayley map (I − A)(I + A)⁻¹ of a skew matrix
    A, or ``matrix_exp`` exp(A), Trockman & Kolter 2021): all its singular values are 1, so the
    layer is 1-Lipschitz and, when in ≤ out, norm-preserving."""
    in_features = _validate.integer(in_features, "in_features", minimum=1)
    out_features = _validate.integer(out_features, "out_features", minimum=1)
    if orthogonal_map not in ("cayley", "matrix_exp", "householder"):
        raise ValueError(f"orthogonal_map must be 'cayley', 'matrix_exp' or 'householder', got {orthogonal_map!r}")
    layer = nn.Linear(in_features, out_features, bias=bias)
    return nn.utils.parametrizations.orthogonal(layer, orthogonal_map=orthogonal_map)


class _ExactSpectralNorm(nn.Module):
    def forward(self, W: torch.Tensor) -> torch.Tensor:
        return W / torch.linalg.matrix_norm(W, ord=2)


def spectral_linear(in_features: int, out_features: int, bias: bool = True) -> nn.Linear:
    """A dense layer with weight W = A/‖A‖₂, the spectral normalisation of Miyato et al. (2018)
    with the exact largest singular value (an SVD at every call) instead of their one-step power
    iteration, so that ‖W‖₂ = 1 holds at every step and not only after the estimate has
    converged.  Cheap when min(in, out) is small; 1-Lipschitz."""
    in_features = _validate.integer(in_features, "in_features", minimum=1)
    out_features = _validate.integer(out_features, "out_features", minimum=1)
    layer = nn.Linear(in_features, out_features, bias=bias)
    nn.utils.parametrize.register_parametrization(layer, "weight", _ExactSpectralNorm())
    return layer


class SLLLinear(nn.Module):
    """The SDP-based Lipschitz layer of Araujo et al. (2023), Thm. 3 (a convex-potential layer):

        f(x) = x − 2 W T⁻¹ σ(Wᵀx + b),  σ = ReLU,
        T = diag(t),  t_i = Σ_j |WᵀW|_{ij} q_j / q_i,  q = exp(q̃) > 0,

    W ∈ ℝ^{d×m}.  T ⪰ WᵀW (a weighted Gershgorin bound), which makes f 1-Lipschitz for any W,
    b, q̃.  ``features`` = d, ``inner`` = m.
    """

    def __init__(self, features: int, inner: int | None = None) -> None:
        super().__init__()
        d = _validate.integer(features, "features", minimum=1)
        m = d if inner is None else _validate.integer(inner, "inner", minimum=1)
        self.weight = nn.Parameter(torch.empty(d, m))
        nn.init.xavier_normal_(self.weight)
        self.bias = nn.Parameter(torch.zeros(m))
        self.log_q = nn.Parameter(torch.zeros(m))

    def t(self) -> torch.Tensor:
        q = self.log_q.exp()
        gram = (self.weight.T @ self.weight).abs()
        # the tiny floor keeps T invertible for a zero column; enlarging T keeps T ⪰ WᵀW
        return (gram * q[None, :]).sum(dim=1) / q + 1e-12

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(x @ self.weight + self.bias) / self.t()
        return x - 2.0 * h @ self.weight.T


def lipschitz_mlp(in_features: int = 784, width: int = 256, depth: int = 2, n_classes: int = 10,
                  orthogonal_map: str = "cayley") -> nn.Sequential:
    """A 1-Lipschitz classifier for flattened images:

        Flatten → spectral_linear(in, width) → MaxMin → [SLLLinear(width) → MaxMin]×depth
        → orthogonal_linear(width, n_classes).

    Every layer is 1-Lipschitz in ℓ2, so the logits are 1-Lipschitz in the input (L = 1).  The
    first layer is spectrally normalised rather than orthogonal because the orthogonal
    parametrisation of a 784×width matrix works with 784×784 matrices at every step, too slow
    on a CPU; the last layer (width×10) is orthogonal, i.e. its rows are orthonormal."""
    width = _validate.integer(width, "width", minimum=2)
    if width % 2:
        raise ValueError(f"width must be even (MaxMin pairs features), got {width}")
    depth = _validate.integer(depth, "depth", minimum=0)
    layers: list[nn.Module] = [nn.Flatten(), spectral_linear(in_features, width), MaxMin()]
    for _ in range(depth):
        layers += [SLLLinear(width), MaxMin()]
    layers.append(orthogonal_linear(width, n_classes, orthogonal_map=orthogonal_map))
    return nn.Sequential(*layers)


def margin_loss(logits: torch.Tensor, y: torch.Tensor, margin: float, temperature: float = 0.25) -> torch.Tensor:
    """Cross-entropy with the true logit lowered by ``margin`` and all logits divided by
    ``temperature``: CE((f − margin·e_y)/τ, y).  Pushes f_y − max_{j≠y} f_j beyond ``margin``,
    i.e. the margin radius beyond margin/(√2 L) (the offset loss of Trockman & Kolter 2021 and
    later 1-Lipschitz work)."""
    margin = _validate.nonnegative(margin, "margin")
    temperature = _validate.positive(temperature, "temperature")
    shifted = logits - margin * F.one_hot(y, logits.shape[1]).to(logits.dtype)
    return F.cross_entropy(shifted / temperature, y)


def train_lipschitz(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int,
                    margin: float = 1.0, temperature: float = 0.25, batch_size: int = 128,
                    lr: float = 1e-3, seed: int = 0) -> nn.Module:
    """Adam on ``margin_loss`` with seeded shuffling (same loop as ``hybridrs.nets.train``);
    returns the model in eval mode."""
    epochs = _validate.integer(epochs, "epochs", minimum=1)
    batch_size = _validate.integer(batch_size, "batch_size", minimum=1)
    lr = _validate.positive(lr, "lr")
    seed = _validate.integer(seed, "seed", minimum=0)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    n = x.shape[0]
    for epoch in range(epochs):
        gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        order = torch.randperm(n, generator=gen)
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            loss = margin_loss(model(x[idx]), y[idx], margin, temperature)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    model.eval()
    return model


# ----------------------------------------------------------------------------- certificates

def margin_radius(logits, labels, L: float) -> np.ndarray:
    """Certified ℓ2 radius of an L-Lipschitz (in ℓ2) logit map, Tsuzuku et al. (2018), Prop. 1:

        R(x) ≥ (f_y(x) − max_{j≠y} f_j(x)) / (√2 · L).

    The √2: moving from x by δ changes the difference f_y − f_j by at most ‖(e_y − e_j)ᵀ J δ‖
    ≤ √2 · L ‖δ‖, because ‖e_y − e_j‖₂ = √2.  Returns the signed value for each row (negative
    when x is misclassified, where it certifies nothing).  ``logits`` is (N, C), ``labels`` (N,).
    """
    f = np.asarray(logits.detach() if isinstance(logits, torch.Tensor) else logits, dtype=np.float64)
    yy = np.asarray(labels.detach() if isinstance(labels, torch.Tensor) else labels)
    L = _validate.positive(L, "L")
    if f.ndim != 2 or f.shape[1] < 2 or yy.shape != (f.shape[0],):
        raise ValueError(f"logits must be (N, C) with C >= 2 and labels (N,); got {f.shape}, {yy.shape}")
    if np.isnan(f).any():
        raise ValueError("logits contains NaN")
    if not np.issubdtype(yy.dtype, np.integer) or (yy < 0).any() or (yy >= f.shape[1]).any():
        raise ValueError("labels must be integers in [0, C)")
    rows = np.arange(f.shape[0])
    fy = f[rows, yy]
    others = f.copy()
    others[rows, yy] = -np.inf
    return (fy - others.max(axis=1)) / (math.sqrt(2.0) * L)
