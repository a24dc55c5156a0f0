"""The adaptive attack of chapter 8 against a classifier whose smoothed score is known in closed
form, and the Neyman–Pearson reference that attains the bound."""

import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

import hybridrs.smoothing  # noqa: E402

pytestmark = pytest.mark.skipif(not hasattr(hybridrs.smoothing, "input_seed"),
                                reason="needs the certification pipeline (hybridrs.threats, input_seed)")

from hybridrs.experiments import attack as A  # noqa: E402
from hybridrs.kernels import UniformKernel  # noqa: E402


class Linear(torch.nn.Module):
    """Unsafe iff w·x > b (‖w‖ = 1): under x + σZ, P[unsafe] = Φ((w·x − b)/σ), and the best ℓ2
    attack of size ε lowers it to Φ((w·x − b − ε)/σ).  The text is ignored."""

    def __init__(self, dim=16, b=0.0):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        w = torch.randn(dim, generator=g)
        self.w = w / w.norm()
        self.b = b

    def logits(self, tokens, images):
        return 40.0 * (images.flatten(1) @ self.w - self.b)

    def forward(self, tokens, images):
        return (self.logits(tokens, images) > 0).long()


@pytest.fixture(scope="module")
def setting():
    f = Linear()
    sigma, margin = 1.0, 2.0
    image = (margin * f.w).reshape(1, 4, 4)  # w·x − b = 2σ: P[unsafe] = Φ(2)
    tokens = torch.tensor([5, 6, 7] + [0] * 8)
    return f, image, tokens, sigma, margin


def test_attack_reaches_the_optimal_image_attack(setting):
    f, image, tokens, sigma, margin = setting
    kern = UniformKernel(0.25, vocab_size=100)
    eps = 1.0
    adv_t, adv_v = A.attack_smoothed(f, tokens, image, d=1, eps=eps, sigma=sigma, kernel=kern, m=8, eot=256,
                                     pgd_steps=20, rounds=1, candidates=4, seed=0)
    assert float((adv_v - image).norm()) <= eps + 1e-5
    assert int((adv_t != tokens).sum()) <= 1 and torch.equal(adv_t[:-8], tokens[:-8])
    # the optimal ℓ2 attack moves straight against w: w·δ = −ε
    assert float((adv_v - image).flatten() @ f.w) == pytest.approx(-eps, abs=0.05)


def test_attack_row_against_the_closed_form(setting):
    f, image, tokens, sigma, margin = setting
    kern = UniformKernel(0.25, vocab_size=100)
    p_true = float(norm.cdf(margin / sigma))
    p_a = p_true - 0.01  # a valid lower bound
    row = A.attack_row(f, tokens, image, p_a=p_a, d=1, eps=1.0, sigma=sigma, kernel=kern, m=8, n_attack=20_000,
                       alpha=0.01, tau=4.6e-5, seed=0, np_draws=20_000)
    best = float(norm.cdf((margin - 1.0) / sigma))
    assert row["p_attacked"] == pytest.approx(best, abs=0.015)
    assert row["p_clean"] == pytest.approx(p_true, abs=0.01)
    # the bound holds and is below the best attack on this classifier (which ignores the text)
    assert row["bound_respected"] and row["p_adv"] <= best and row["ratio"] >= 1
    # the Neyman–Pearson worst case attains p_adv: exact value equal, Monte Carlo within 4 s.e.
    assert row["np_ratio"] == pytest.approx(1.0, abs=1e-9)
    assert abs(row["np_adv_mc"] - row["p_adv"]) <= 4 * row["np_adv_se"] + 1e-3
    assert row["np_clean_mc"] == pytest.approx(p_a, abs=0.02)
