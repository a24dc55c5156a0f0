import math

import numpy as np
import pytest
import torch

from hybridrs.baselines import lipschitz as L


def _exact(M):
    return float(torch.linalg.matrix_norm(M.detach().double(), ord=2))


@pytest.mark.parametrize("shape", [(30, 20), (5, 40), (1, 7), (64, 64)])
def test_power_iteration_dense(shape):
    W = torch.randn(*shape, generator=torch.Generator().manual_seed(sum(shape)))
    sigma, iters = L.power_iteration(W, iters=5000, tol=1e-13)
    assert sigma == pytest.approx(_exact(W), rel=1e-6)
    assert sigma <= _exact(W) * (1 + 1e-12)
    assert 1 <= iters <= 5000


@pytest.mark.parametrize("mode", ["zeros", "circular"])
@pytest.mark.parametrize("stride", [1, 2])
def test_conv_power_iteration_matches_dense_operator(mode, stride):
    K = torch.randn(3, 2, 3, 3, generator=torch.Generator().manual_seed(stride))
    M = L.conv_operator_matrix(K, 6, stride=stride, padding_mode=mode)
    sigma, _ = L.conv_power_iteration(K, 6, stride=stride, padding_mode=mode, iters=5000, tol=1e-13)
    assert sigma == pytest.approx(_exact(M), rel=1e-6)


def test_conv_operator_matrix_matches_conv2d():
    K = torch.randn(2, 3, 3, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = torch.randn(3, 5, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    M = L.conv_operator_matrix(K, 5, padding_mode="zeros")
    ref = torch.nn.functional.conv2d(x[None], K, padding=1)[0].flatten()
    assert torch.allclose(M @ x.flatten(), ref)
    Mc = L.conv_operator_matrix(K, 5, padding_mode="circular")
    refc = torch.nn.functional.conv2d(x[None], K, padding=1)  # differs at borders
    conv = torch.nn.Conv2d(3, 2, 3, padding=1, padding_mode="circular", bias=False).double()
    conv.weight.data = K
    assert torch.allclose(Mc @ x.flatten(), conv(x[None])[0].flatten())
    assert not torch.allclose(Mc @ x.flatten(), refc[0].flatten())


@pytest.mark.parametrize("cout, cin, k, n", [(3, 2, 3, 6), (1, 1, 3, 5), (4, 4, 5, 7), (2, 3, 1, 4)])
def test_fourier_norm_equals_dense_circular_operator(cout, cin, k, n):
    K = torch.randn(cout, cin, k, k, generator=torch.Generator().manual_seed(k + n))
    M = L.conv_operator_matrix(K, n, padding=k // 2, padding_mode="circular")
    assert L.conv_norm_fourier(K, n) == pytest.approx(_exact(M), rel=1e-10)


def test_fourier_norm_all_singular_values():
    # the DFT block-diagonalises the circular operator: every singular value is accounted for
    K = torch.randn(2, 3, 3, 3, generator=torch.Generator().manual_seed(5))
    n = 5
    M = L.conv_operator_matrix(K, n, padding_mode="circular")
    sv_dense = torch.linalg.svdvals(M).sort().values
    blocks = torch.fft.fft2(K.double(), s=(n, n)).permute(2, 3, 0, 1)
    sv_fourier = torch.linalg.svdvals(blocks).flatten().sort().values
    assert torch.allclose(sv_dense, sv_fourier, atol=1e-10)


def _max_ratio(f, d, n=2000, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    x = scale * torch.randn(n, d, generator=g)
    y = x + 0.1 * scale * torch.randn(n, d, generator=g)
    with torch.no_grad():
        return float(((f(x) - f(y)).norm(dim=1) / (x - y).norm(dim=1)).max())


def test_sll_layer_is_1_lipschitz():
    torch.manual_seed(0)
    for d, m in [(16, 16), (8, 32), (32, 4)]:
        layer = L.SLLLinear(d, m)
        with torch.no_grad():  # arbitrary parameters, not only the initialisation
            layer.weight.mul_(5.0)
            layer.bias.normal_()
            layer.log_q.normal_()
        r = _max_ratio(layer, d)
        assert r <= 1 + 1e-5
        assert r > 0.5  # not trivially contractive
        assert float(L.jacobian_norms(layer.requires_grad_(False), torch.randn(50, d)).max()) <= 1 + 1e-5


def test_sll_without_t_is_not_1_lipschitz():
    # removing the normalisation T breaks the guarantee: the test above can fail
    torch.manual_seed(0)
    layer = L.SLLLinear(16, 16)
    with torch.no_grad():
        layer.weight.mul_(5.0)
    def raw(x):
        return x - 2.0 * torch.relu(x @ layer.weight + layer.bias) @ layer.weight.T
    assert _max_ratio(raw, 16) > 1.5


@pytest.mark.parametrize("orth_map", ["cayley", "matrix_exp"])
def test_orthogonal_layer_and_mlp(orth_map):
    torch.manual_seed(0)
    layer = L.orthogonal_linear(12, 12, orthogonal_map=orth_map)
    W = layer.weight.detach().double()
    assert torch.allclose(W.T @ W, torch.eye(12, dtype=torch.float64), atol=1e-5)
    assert _max_ratio(layer, 12) == pytest.approx(1.0, abs=1e-4)  # norm preserving
    net = L.lipschitz_mlp(in_features=20, width=16, depth=2, n_classes=5, orthogonal_map=orth_map)
    assert _max_ratio(net, 20) <= 1 + 1e-4
    assert float(L.jacobian_norms(net, torch.randn(20, 20)).max()) <= 1 + 1e-4


def test_maxmin():
    x = torch.tensor([[3.0, 1.0, -2.0, 5.0]])
    assert torch.equal(L.MaxMin()(x), torch.tensor([[3.0, 5.0, 1.0, -2.0]]))
    assert _max_ratio(L.MaxMin(), 10) <= 1 + 1e-6
    with pytest.raises(ValueError):
        L.MaxMin()(torch.zeros(2, 3))


def test_jacobian_norm_of_linear_map():
    torch.manual_seed(0)
    lin = torch.nn.Linear(7, 4)
    norms = L.jacobian_norms(lin, torch.randn(3, 7))
    assert torch.allclose(norms, torch.full((3,), _exact(lin.weight), dtype=torch.float64), rtol=1e-5)


def test_product_bound():
    assert L.product_bound([2.0, 0.5, 3.0]) == pytest.approx(3.0)
    with pytest.raises(ValueError):
        L.product_bound([])
    with pytest.raises(ValueError):
        L.product_bound([1.0, -1.0])


def test_margin_radius_formula():
    logits = torch.tensor([[3.0, 1.0, 0.5], [0.0, 2.0, 2.5], [1.0, 1.0, 0.0]])
    labels = torch.tensor([0, 1, 1])
    r = L.margin_radius(logits, labels, L=2.0)
    expected = np.array([2.0, -0.5, 0.0]) / (math.sqrt(2) * 2.0)
    assert np.allclose(r, expected)


def test_margin_radius_is_a_valid_certificate():
    # for a 1-Lipschitz linear map, no perturbation inside the margin radius flips the label
    torch.manual_seed(0)
    W = torch.randn(5, 8)
    W = W / torch.linalg.matrix_norm(W, 2)
    x = torch.randn(200, 8)
    f = x @ W.T
    y = f.argmax(1)
    r = torch.tensor(L.margin_radius(f, y, 1.0), dtype=torch.float32)
    for _ in range(20):
        d = torch.randn(200, 8)
        d = d / d.norm(dim=1, keepdim=True) * r[:, None] * 0.999
        assert torch.equal(((x + d) @ W.T).argmax(1), y)


def test_bad_inputs():
    with pytest.raises(ValueError, match="L"):
        L.margin_radius(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), 0.0)
    with pytest.raises(ValueError, match="logits"):
        L.margin_radius(torch.tensor([[float("nan"), 0.0]]), torch.zeros(1, dtype=torch.long), 1.0)
    with pytest.raises(ValueError, match="W"):
        L.power_iteration(torch.tensor([[float("nan")]]))
    with pytest.raises(ValueError, match="n"):
        L.conv_norm_fourier(torch.ones(1, 1, 3, 3), 2)
    with pytest.raises(ValueError, match="padding_mode"):
        L.conv_power_iteration(torch.ones(1, 1, 3, 3), 5, padding_mode="reflect")
