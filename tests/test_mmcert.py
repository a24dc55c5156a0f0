"""MMCert's δ against brute-force enumeration of the sub-sampling law."""

import itertools
from math import comb

import pytest
import torch

from hybridrs.baselines import mmcert


def brute_delta(n1, k1, r1, n2, k2, r2):
    """P(some kept element is attacked), enumerating every pair of kept subsets."""
    hit = total = 0
    for s1 in itertools.combinations(range(n1), k1):
        for s2 in itertools.combinations(range(n2), k2):
            total += 1
            # attacked elements: the first r_i of each modality (any choice gives the same law)
            hit += any(i < r1 for i in s1) or any(j < r2 for j in s2)
    return hit / total


@pytest.mark.parametrize("n1,k1,r1,n2,k2,r2", [(5, 2, 1, 6, 3, 2), (6, 3, 0, 5, 1, 1), (4, 4, 1, 4, 1, 0),
                                               (7, 2, 3, 3, 2, 3), (5, 1, 0, 5, 1, 0)])
def test_delta_matches_brute_force(n1, k1, r1, n2, k2, r2):
    assert mmcert.mmcert_delta(n1, k1, r1, n2, k2, r2) == pytest.approx(brute_delta(n1, k1, r1, n2, k2, r2),
                                                                         abs=1e-15)


def test_delta_is_rounded_up():
    d = mmcert.mmcert_delta(100, 7, 3, 784, 50, 11)
    exact = 1 - comb(97, 7) * comb(773, 50) / (comb(100, 7) * comb(784, 50))
    assert d >= exact - 1e-16


def test_bad_arguments():
    with pytest.raises(ValueError, match="k1"):
        mmcert.mmcert_delta(3, 4, 0, 3, 1, 0)
    with pytest.raises(ValueError, match="r2"):
        mmcert.mmcert_delta(3, 1, 0, 3, 1, 5)


def test_certified_decision():
    assert mmcert.mmcert_certified(1000, 1000, 0.01, 0.0)
    assert not mmcert.mmcert_certified(500, 1000, 0.01, 0.0)
    assert mmcert.max_certified_r(400, 1000, 0.01, 10, 2, 784, 40) == -1
    r = mmcert.max_certified_r(1000, 1000, 0.01, 20, 2, 784, 40)
    assert r >= 0
    assert not mmcert.mmcert_certified(1000, 1000, 0.01, mmcert.mmcert_delta(20, 2, r + 1, 784, 40, 0))


def test_ablation_keeps_exactly_k():
    gen = torch.Generator().manual_seed(0)
    toks = torch.arange(1, 11)
    img = torch.ones(1, 28, 28)
    t, im = mmcert.ablate(toks, img, 4, 30, 5, gen)
    assert t.shape == (5, 4) and ((t[:, 1:] - t[:, :-1]) > 0).all()
    assert (im.flatten(1).sum(1) == 30).all()


def test_tau_criterion():
    """p̲ − δ ≥ τ (protected class keeps probability ≥ τ) versus the majority p̲ − δ > 1/2."""
    from hybridrs.stats import clopper_pearson_lower

    n, count, alpha = 10_000, 6_000, 0.01
    p = float(clopper_pearson_lower(count, n, alpha))
    assert not mmcert.mmcert_certified(count, n, alpha, 0.2)           # 0.59 − 0.2 < 1/2
    assert mmcert.mmcert_certified(count, n, alpha, 0.2, tau=4.6e-5)   # but ≥ τ
    assert mmcert.mmcert_certified(count, n, alpha, p - 1e-3, tau=1e-4)
    assert not mmcert.mmcert_certified(count, n, alpha, p - 1e-5, tau=1e-4)
    r_half = mmcert.max_certified_r(count, n, alpha, 20, 6, 784, 79)
    r_tau = mmcert.max_certified_r(count, n, alpha, 20, 6, 784, 79, tau=4.6e-5)
    assert r_tau >= r_half
