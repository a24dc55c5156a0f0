"""Self-attention and its local Lipschitz constant (chapter 7: the Lipschitz gap of attention).

Two single-head self-attention maps R^{N×D} → R^{N×D_v}, for a sequence X of N row vectors:

* dot-product attention (Vaswani et al.), Attn(X) = softmax(X W_Q (X W_K)ᵀ / √k) X W_V, with
  W_Q, W_K ∈ R^{D×k}: not Lipschitz on an unbounded domain (Kim, Papamakarios and Mnih 2021,
  Thm. 3.1);
* ℓ2 (distance-based) attention with tied query/key weights (Kim et al. 2021, §3.2):
  P_ij = softmax_j(−‖x_i W_Q − x_j W_Q‖² / √k) and Attn(X) = P X A W_V with A = W_Q W_Qᵀ/√k,
  which is globally Lipschitz with the bound of :func:`kim_l2_bound`.

The local Lipschitz constant at X (in the Frobenius/ℓ2 norm of the flattened sequence) is the
spectral norm of the Jacobian of X ↦ Attn(X), computed exactly from the full Jacobian
(:func:`local_lipschitz`) or estimated by power iteration on JᵀJ (:func:`power_iteration_norm`).
All computations are in float64.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from scipy.special import lambertw

__all__ = [
    "dot_product_attention", "l2_attention", "local_lipschitz", "power_iteration_norm",
    "kim_l2_bound", "random_weights",
]


def _check_x(X, D: int | None = None) -> torch.Tensor:
    if not isinstance(X, torch.Tensor):
        X = torch.as_tensor(X, dtype=torch.float64)
    if X.ndim != 2:
        raise ValueError(f"X must be a 2-D (N, D) tensor, got shape {tuple(X.shape)}")
    if X.shape[0] < 1:
        raise ValueError("X must hold at least one row (token)")
    if D is not None and X.shape[1] != D:
        raise ValueError(f"X must have {D} columns to match the weights, got {X.shape[1]}")
    if not torch.isfinite(X).all():
        raise ValueError("X contains non-finite values")
    return X.to(torch.float64)


def _check_w(W, name: str, rows: int | None = None) -> torch.Tensor:
    if not isinstance(W, torch.Tensor):
        W = torch.as_tensor(W, dtype=torch.float64)
    if W.ndim != 2:
        raise ValueError(f"{name} must be a 2-D matrix, got shape {tuple(W.shape)}")
    if rows is not None and W.shape[0] != rows:
        raise ValueError(f"{name} must have {rows} rows, got {W.shape[0]}")
    return W.to(torch.float64)


def dot_product_attention(X, W_q, W_k, W_v) -> torch.Tensor:
    """softmax(X W_Q (X W_K)ᵀ / √k) X W_V, the row-wise softmax taken over keys j
    (Vaswani et al. 2017; the map Kim et al. 2021 show is not Lipschitz)."""
    W_q = _check_w(W_q, "W_q")
    X = _check_x(X, W_q.shape[0])
    W_k = _check_w(W_k, "W_k", X.shape[1])
    W_v = _check_w(W_v, "W_v", X.shape[1])
    if W_k.shape != W_q.shape:
        raise ValueError(f"W_k must have the shape of W_q {tuple(W_q.shape)}, got {tuple(W_k.shape)}")
    k = W_q.shape[1]
    scores = (X @ W_q) @ (X @ W_k).T / math.sqrt(k)
    return torch.softmax(scores, dim=-1) @ (X @ W_v)


def l2_attention(X, W_q, W_v) -> torch.Tensor:
    """ℓ2 self-attention with tied W_Q = W_K (Kim, Papamakarios and Mnih 2021, eq. for L2-MHA):

        P_ij = exp(−‖x_i W_Q − x_j W_Q‖² / √k) / Σ_l exp(−‖x_i W_Q − x_l W_Q‖² / √k),
        Attn(X) = P X A W_V,   A = W_Q W_Qᵀ / √k.
    """
    W_q = _check_w(W_q, "W_q")
    X = _check_x(X, W_q.shape[0])
    W_v = _check_w(W_v, "W_v", X.shape[1])
    k = W_q.shape[1]
    Q = X @ W_q
    sq = (Q * Q).sum(-1)
    dist2 = sq[:, None] + sq[None, :] - 2 * Q @ Q.T
    P = torch.softmax(-dist2 / math.sqrt(k), dim=-1)
    A = W_q @ W_q.T / math.sqrt(k)
    return P @ (X @ A) @ W_v


def local_lipschitz(fn: Callable[[torch.Tensor], torch.Tensor], X) -> float:
    """‖J_fn(X)‖₂, the spectral norm of the Jacobian of the flattened map vec X ↦ vec fn(X).

    This is the local Lipschitz constant at X in the Frobenius norm: lim sup over ‖Δ‖_F → 0 of
    ‖fn(X + Δ) − fn(X)‖_F / ‖Δ‖_F.  Uses torch.autograd.functional.jacobian and the largest
    singular value (torch.linalg.matrix_norm(ord=2)).
    """
    X = _check_x(X)
    J = torch.autograd.functional.jacobian(fn, X, vectorize=True)
    J = J.reshape(-1, X.numel())
    return float(torch.linalg.matrix_norm(J, ord=2))


def power_iteration_norm(fn: Callable[[torch.Tensor], torch.Tensor], X, iters: int = 200,
                         seed: int = 0, rtol: float = 1e-14) -> float:
    """Estimate ‖J_fn(X)‖₂ by power iteration on JᵀJ with Jacobian–vector products (no full J).

    v ← Jᵀ(J v)/‖Jᵀ(J v)‖; returns ‖J v‖ after ``iters`` steps, a lower bound on ‖J‖₂ that
    converges to it (Golub and Van Loan, §8.2).  Stops early once successive estimates agree to
    ``rtol``.
    """
    X = _check_x(X)
    if isinstance(iters, bool) or not isinstance(iters, int) or iters < 1:
        raise ValueError(f"iters must be an integer >= 1, got {iters!r}")
    gen = torch.Generator().manual_seed(int(seed))
    vec = torch.randn(X.shape, generator=gen, dtype=torch.float64)
    vec /= vec.norm()
    sigma = 0.0
    for _ in range(iters):
        _, jv = torch.func.jvp(fn, (X,), (vec,))
        _, pullback = torch.func.vjp(fn, X)
        (jtjv,) = pullback(jv)
        prev, sigma = sigma, float(jv.norm())
        nrm = jtjv.norm()
        if abs(sigma - prev) <= rtol * sigma:
            break
        if nrm == 0:
            return 0.0
        vec = jtjv / nrm
    return sigma


def kim_l2_bound(N: int, W_q, W_v) -> float:
    """Upper bound on the global ℓ2 Lipschitz constant of single-head ℓ2 attention
    (Kim, Papamakarios and Mnih 2021, Thm. 3.2 with H = 1 and no output projection):

        Lip₂ ≤ (√N / √k) · (4 φ⁻¹(N − 1) + 1) · ‖W_Q‖₂² · ‖W_V‖₂,

    φ(x) = x·e^{x+1}, so φ⁻¹(N − 1) = W₀((N − 1)/e) (Lambert W), which grows like log N.
    The weight factor is written as ‖W_Q‖₂²‖W_V‖₂ because the map is homogeneous of degree two
    in W_Q (through A = W_Q W_Qᵀ/√k and the scores); the book checks the bound numerically.
    """
    if isinstance(N, bool) or not isinstance(N, int) or N < 1:
        raise ValueError(f"N must be an integer >= 1, got {N!r}")
    W_q = _check_w(W_q, "W_q")
    W_v = _check_w(W_v, "W_v", W_q.shape[0])
    k = W_q.shape[1]
    phi_inv = float(lambertw((N - 1) / math.e).real)
    q = float(torch.linalg.matrix_norm(W_q, ord=2))
    vv = float(torch.linalg.matrix_norm(W_v, ord=2))
    return math.sqrt(N) / math.sqrt(k) * (4 * phi_inv + 1) * q * q * vv


def random_weights(D: int, k: int, seed: int = 0, scale: float | None = None):
    """(W_Q, W_K, W_V) with i.i.d. N(0, scale²) entries, scale = 1/√D by default (the usual
    initialisation, which keeps ‖x W‖ of the order of ‖x‖); W_V is D×D."""
    if isinstance(D, bool) or not isinstance(D, int) or D < 1:
        raise ValueError(f"D must be an integer >= 1, got {D!r}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    s = 1 / math.sqrt(D) if scale is None else float(scale)
    if not s > 0:
        raise ValueError(f"scale must be > 0, got {scale!r}")
    gen = torch.Generator().manual_seed(int(seed))
    W_q = torch.randn((D, k), generator=gen, dtype=torch.float64) * s
    W_k = torch.randn((D, k), generator=gen, dtype=torch.float64) * s
    W_v = torch.randn((D, D), generator=gen, dtype=torch.float64) * s
    return W_q, W_k, W_v
