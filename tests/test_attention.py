"""Tests of hybridrs.attention against independent computations: a hand-written loop version of
each attention map, finite differences, power iteration, the analytic bound and a closed-form
growth law."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hybridrs.baselines import attention as A


def _loop_dot(X, Wq, Wk, Wv):
    X, Wq, Wk, Wv = (np.asarray(t, dtype=np.float64) for t in (X, Wq, Wk, Wv))
    N, k = X.shape[0], Wq.shape[1]
    out = np.zeros((N, Wv.shape[1]))
    for i in range(N):
        s = np.array([X[i] @ Wq @ (X[j] @ Wk) / math.sqrt(k) for j in range(N)])
        w = np.exp(s - s.max())
        w /= w.sum()
        out[i] = sum(w[j] * (X[j] @ Wv) for j in range(N))
    return out


def _loop_l2(X, Wq, Wv):
    X, Wq, Wv = (np.asarray(t, dtype=np.float64) for t in (X, Wq, Wv))
    N, k = X.shape[0], Wq.shape[1]
    Amat = Wq @ Wq.T / math.sqrt(k)
    out = np.zeros((N, Wv.shape[1]))
    for i in range(N):
        s = np.array([-np.sum((X[i] @ Wq - X[j] @ Wq) ** 2) / math.sqrt(k) for j in range(N)])
        w = np.exp(s - s.max())
        w /= w.sum()
        out[i] = sum(w[j] * (X[j] @ Amat @ Wv) for j in range(N))
    return out


def _setup(N=5, D=4, k=3, seed=0):
    Wq, Wk, Wv = A.random_weights(D, k, seed=seed)
    X = torch.randn((N, D), generator=torch.Generator().manual_seed(seed + 100), dtype=torch.float64)
    return X, Wq, Wk, Wv


def test_maps_match_loops():
    X, Wq, Wk, Wv = _setup()
    assert np.allclose(A.dot_product_attention(X, Wq, Wk, Wv).numpy(), _loop_dot(X, Wq, Wk, Wv), atol=1e-12)
    assert np.allclose(A.l2_attention(X, Wq, Wv).numpy(), _loop_l2(X, Wq, Wv), atol=1e-12)


@pytest.mark.parametrize("which", ["dot", "l2"])
def test_jacobian_norm_matches_power_iteration_and_finite_differences(which):
    X, Wq, Wk, Wv = _setup(N=6, D=3, k=2, seed=3)
    f = (lambda Y: A.dot_product_attention(Y, Wq, Wk, Wv)) if which == "dot" else (lambda Y: A.l2_attention(Y, Wq, Wv))
    exact = A.local_lipschitz(f, 2.0 * X)
    assert abs(A.power_iteration_norm(f, 2.0 * X, iters=300) - exact) < 1e-8 * exact
    # Central finite differences build the Jacobian column by column, independently of autograd.
    x0 = (2.0 * X).reshape(-1)
    h = 1e-6
    cols = []
    for m in range(x0.numel()):
        e = torch.zeros_like(x0)
        e[m] = h
        cols.append(((f((x0 + e).reshape(X.shape)) - f((x0 - e).reshape(X.shape))) / (2 * h)).reshape(-1))
    J_fd = torch.stack(cols, dim=1)
    assert abs(float(torch.linalg.matrix_norm(J_fd, ord=2)) - exact) < 1e-6 * exact


def test_l2_local_constant_below_kim_bound_on_random_inputs():
    gen = torch.Generator().manual_seed(7)
    for trial in range(40):
        N = int(torch.randint(2, 9, (1,), generator=gen))
        D = int(torch.randint(1, 5, (1,), generator=gen))
        k = int(torch.randint(1, D + 1, (1,), generator=gen))
        wscale = float(torch.rand(1, generator=gen)) * 3 + 0.05
        Wq, _, Wv = A.random_weights(D, k, seed=trial, scale=wscale)
        xscale = 10 ** (float(torch.rand(1, generator=gen)) * 4 - 2)
        X = torch.randn((N, D), generator=gen, dtype=torch.float64) * xscale
        if trial % 2:  # clustered inputs: where the softmax is most sensitive
            X[1:] = X[0] + 0.1 * xscale * torch.randn((N - 1, D), generator=gen, dtype=torch.float64)
        lip = A.local_lipschitz(lambda Y: A.l2_attention(Y, Wq, Wv), X)
        assert lip <= A.kim_l2_bound(N, Wq, Wv)


def test_kim_bound_formula():
    # φ(x) = x e^{x+1}: φ(φ⁻¹(N − 1)) = N − 1, and for orthonormal weights the bound is √N(4φ⁻¹+1)/√k.
    N, D = 17, 4
    Wq = torch.eye(D, dtype=torch.float64)
    b = A.kim_l2_bound(N, Wq, Wq)
    x = (b * math.sqrt(D) / math.sqrt(N) - 1) / 4
    assert abs(x * math.exp(x + 1) - (N - 1)) < 1e-9
    # Degree-two homogeneity in W_Q, degree one in W_V.
    assert abs(A.kim_l2_bound(N, 3 * Wq, 2 * Wq) - 18 * b) < 1e-9 * b


def test_dot_product_local_constant_grows_quadratically_with_scale():
    # Kim et al. (2021, Thm. 3.1): with x_1 = 0 the first softmax row is uniform at every scale and
    # ∂Attn_1/∂x_1 contains the covariance of the x_j W_Q-projected rows, which grows like s².
    X, Wq, Wk, Wv = _setup(N=4, D=2, k=2, seed=5)
    X[0] = 0
    f = lambda Y: A.dot_product_attention(Y, Wq, Wk, Wv)
    lips = [A.local_lipschitz(f, s * X) for s in (10.0, 20.0, 40.0)]
    assert lips[1] > 3 * lips[0] and lips[2] > 3 * lips[1]
    ratio = lips[2] / lips[1]
    assert 3.5 < ratio < 4.5
    # The ℓ2 map at the same inputs stays bounded.
    l2 = [A.local_lipschitz(lambda Y: A.l2_attention(Y, Wq, Wv), s * X) for s in (10.0, 40.0)]
    assert max(l2) <= A.kim_l2_bound(4, Wq, Wv)


def test_bad_input():
    X, Wq, Wk, Wv = _setup()
    with pytest.raises(ValueError, match="X"):
        A.dot_product_attention(X[0], Wq, Wk, Wv)
    with pytest.raises(ValueError, match="W_k"):
        A.dot_product_attention(X, Wq, Wk[:, :1], Wv)
    with pytest.raises(ValueError, match="W_v"):
        A.l2_attention(X, Wq, Wv[:2])
    with pytest.raises(ValueError, match="N"):
        A.kim_l2_bound(0, Wq, Wv)
    with pytest.raises(ValueError, match="iters"):
        A.power_iteration_norm(lambda Y: Y, X, iters=0)
    with pytest.raises(ValueError, match="X"):
        A.local_lipschitz(lambda Y: Y, torch.full((2, 2), float("nan"), dtype=torch.float64))
