import math

import pytest
import torch
from torch import nn

from hybridrs.baselines import attacks


def _linear(d=20, c=4, seed=0):
    torch.manual_seed(seed)
    model = nn.Linear(d, c).double()
    return model


def _interior_points(n=40, d=20, seed=1):
    g = torch.Generator().manual_seed(seed)
    return 0.3 + 0.4 * torch.rand(n, d, generator=g, dtype=torch.float64)


def test_linear_radius_matches_brute_force_2d():
    # 2-D, 3 classes: distance to the nearest point of another class on a fine polar grid
    torch.manual_seed(3)
    model = nn.Linear(2, 3).double()
    x = torch.rand(5, 2, dtype=torch.float64)
    with torch.no_grad():
        y = model(x).argmax(1)
        r = attacks.linear_radius(model.weight, model.bias, x, y)
        angles = torch.linspace(0, 2 * math.pi, 4001, dtype=torch.float64)
        dirs = torch.stack([angles.cos(), angles.sin()], 1)
        radii = torch.linspace(0, 3, 1501, dtype=torch.float64)
        for i in range(5):
            pts = x[i] + radii[:, None, None] * dirs[None]
            wrong = model(pts).argmax(-1) != y[i]
            first = torch.where(wrong.any(1), radii, torch.tensor(math.inf, dtype=torch.float64))
            brute = float(first.min())
            assert brute >= float(r[i]) - 1e-9
            assert brute <= float(r[i]) + 2e-3


def test_linear_radius_zero_when_misclassified():
    model = _linear()
    x = _interior_points()
    with torch.no_grad():
        y = (model(x).argmax(1) + 1) % 4
        assert torch.all(attacks.linear_radius(model.weight, model.bias, x, y) == 0)


def test_pgd_stays_in_ball_and_box():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 5))
    x = torch.rand(30, 1, 8, 8)
    x[:, :, :2] = 0.0
    x[:, :, -2:] = 1.0
    y = torch.randint(0, 5, (30,))
    for eps in (0.1, 1.0, 5.0):
        adv = attacks.pgd_l2(model, x, y, eps, steps=10, seed=2)
        assert adv.shape == x.shape
        assert float((adv - x).flatten(1).norm(dim=1).max()) <= eps * (1 + 1e-5)
        assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0


def test_fgsm_linf_and_box():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 5))
    x = torch.rand(10, 1, 8, 8)
    y = torch.randint(0, 5, (10,))
    adv = attacks.fgsm(model, x, y, 0.1)
    assert float((adv - x).abs().max()) <= 0.1 + 1e-6
    assert float(adv.min()) >= 0 and float(adv.max()) <= 1
    # FGSM increases the loss of a linear model (to first order it is exact)
    ce = nn.functional.cross_entropy
    with torch.no_grad():
        assert ce(model(adv), y) > ce(model(x), y)


def test_pgd_finds_adversarial_just_beyond_exact_radius_and_not_below():
    model = _linear()
    x = _interior_points()
    with torch.no_grad():
        y = model(x).argmax(1)
        r = attacks.linear_radius(model.weight, model.bias, x, y)
    assert float(r.max()) < 0.3  # the box [0, 1] is inactive: every x_i is 0.3 inside it
    above = attacks.pgd_l2(model, x, y, r * 1.02 + 1e-9, steps=100, seed=0, loss="targeted",
                           random_start=False)
    assert attacks.is_adversarial(model, above, y).all()
    for loss in ("ce", "margin", "targeted"):
        below = attacks.pgd_l2(model, x, y, r * 0.98, steps=100, seed=0, loss=loss)
        assert not attacks.is_adversarial(model, below, y).any()


def test_empirical_radius_brackets_exact_radius():
    model = _linear(seed=4)
    x = _interior_points(n=12, seed=5)
    with torch.no_grad():
        y = model(x).argmax(1)
        r = attacks.linear_radius(model.weight, model.bias, x, y)
    emp = attacks.empirical_radius(model, x, y, eps_max=1.0, bisections=11, steps=50, loss="targeted",
                                   random_start=False)
    assert torch.all(emp >= r - 1e-9)
    assert torch.all(emp <= r * 1.01 + 1e-3)
    weak = attacks.empirical_radius(model, x, y, eps_max=1.0, bisections=4, steps=10, loss="ce")
    assert torch.all(weak >= r - 1e-9)


@pytest.mark.parametrize("eps", [-0.1, float("nan")])
def test_bad_eps(eps):
    model = _linear()
    x = _interior_points(4)
    y = torch.zeros(4, dtype=torch.long)
    with pytest.raises(ValueError, match="eps"):
        attacks.pgd_l2(model, x, y, eps)
    with pytest.raises(ValueError, match="eps"):
        attacks.fgsm(model, x, y, eps)
    with pytest.raises(ValueError, match="eps"):
        attacks.pgd_l2(model, x, y, torch.full((4,), eps, dtype=torch.float64))


def test_bad_x():
    model = _linear()
    x = _interior_points(4)
    x[0, 0] = float("nan")
    y = torch.zeros(4, dtype=torch.long)
    with pytest.raises(ValueError, match="x"):
        attacks.pgd_l2(model, x, y, 0.1)
    with pytest.raises(ValueError, match="x"):
        attacks.linear_radius(model.weight, model.bias, x, y)
    with pytest.raises(ValueError, match="loss"):
        attacks.pgd_l2(model, _interior_points(4), y, 0.1, loss="hinge")
    with pytest.raises(ValueError, match="steps"):
        attacks.pgd_l2(model, _interior_points(4), y, 0.1, steps=0)
