"""Kernels: likelihood-ratio groups against brute-force enumeration, and the samplers' laws."""

import itertools
import math
from collections import defaultdict

import numpy as np
import pytest
import torch
from scipy import stats

from hybridrs.kernels import AbsorbingKernel, HeteroUniformKernel, UniformKernel


def _brute_groups(p_clean, p_adv, outcomes):
    """Group outcomes by likelihood ratio: {rounded log ratio: (clean mass, adversarial mass)}."""
    acc = defaultdict(lambda: [0.0, 0.0])
    for z in outcomes:
        c, a = p_clean(z), p_adv(z)
        if c == 0 and a == 0:
            continue
        key = round(math.log(a / c), 9) if c > 0 and a > 0 else (math.inf if c == 0 else -math.inf)
        acc[key][0] += c
        acc[key][1] += a
    return acc


def _merge(groups):
    acc = defaultdict(lambda: [0.0, 0.0])
    for c, a, lg in zip(groups.clean, groups.adv, groups.log_ratio):
        key = round(float(lg), 9) if np.isfinite(lg) else float(lg)
        acc[key][0] += c
        acc[key][1] += a
    return acc


def _assert_same(brute, got):
    assert set(brute) == set(got)
    for key in brute:
        np.testing.assert_allclose(got[key], brute[key], rtol=1e-12, atol=1e-300)


@pytest.mark.parametrize("V, d, beta", [(2, 1, 0.3), (3, 2, 0.25), (4, 3, 0.5), (5, 2, 1.0), (3, 3, 1.0), (2, 2, 1.0)])
def test_uniform_groups_match_enumeration(V, d, beta):
    s = tuple(range(d)) if d <= V else tuple(i % V for i in range(d))
    s = tuple(i % V for i in range(d))
    s_adv = tuple((x + 1) % V for x in s)  # every position changed
    a = beta / (V - 1)

    def prob(z, x):
        return math.prod((1 - beta) if zi == xi else a for zi, xi in zip(z, x))

    outcomes = itertools.product(range(V), repeat=d)
    brute = _brute_groups(lambda z: prob(z, s), lambda z: prob(z, s_adv), outcomes)
    g = UniformKernel(beta, V).groups(d)
    _assert_same(brute, _merge(g))
    assert g.clean.sum() == pytest.approx(1.0, abs=1e-14)
    assert g.adv.sum() == pytest.approx(1.0, abs=1e-14)


@pytest.mark.parametrize("d, beta", [(1, 0.25), (2, 0.5), (3, 0.9)])
def test_absorbing_groups_match_enumeration(d, beta):
    MASK = 9
    s, s_adv = tuple(range(d)), tuple(range(10, 10 + d))

    def prob(z, x):
        return math.prod(beta if zi == MASK else ((1 - beta) if zi == xi else 0.0) for zi, xi in zip(z, x))

    alphabet = list(range(d)) + list(range(10, 10 + d)) + [MASK]
    brute = _brute_groups(lambda z: prob(z, s), lambda z: prob(z, s_adv), itertools.product(alphabet, repeat=d))
    _assert_same(brute, _merge(AbsorbingKernel(beta, MASK).groups(d)))


def test_hetero_groups_match_enumeration():
    arities, beta = (2, 3, 5), 0.3
    k = HeteroUniformKernel(beta, arities)
    s, s_adv = (0, 0, 0), (1, 2, 4)

    def prob(z, x):
        return math.prod((1 - beta) if zi == xi else beta / (V - 1) for zi, xi, V in zip(z, x, arities))

    brute = _brute_groups(lambda z: prob(z, s), lambda z: prob(z, s_adv),
                          itertools.product(*(range(V) for V in arities)))
    _assert_same(brute, _merge(k.groups(3, fields=[0, 1, 2])))
    # adversaries: one per distinct multiset of changed arities
    assert len(k.adversaries(2)) == 3
    with pytest.raises(ValueError, match="d"):
        k.adversaries(4)


def test_uniform_groups_large_vocabulary_in_log_space():
    g = UniformKernel(0.25, 30522).groups(8)
    assert len(g) == 45
    assert np.all(np.isfinite(g.log_ratio))
    assert g.clean.sum() == pytest.approx(1.0, abs=1e-13)
    assert np.all(np.diff(g.log_ratio) >= 0)  # sorted by ratio
    assert g.clean.min() < 1e-30  # masses span many orders of magnitude without underflow to 0


def test_uniform_sampler_law():
    V, beta, n = 7, 0.35, 200_000
    k = UniformKernel(beta, V)
    tokens = torch.tensor([0, 3, 6])
    z = k.sample(tokens, n, generator=torch.Generator().manual_seed(1))
    assert z.shape == (n, 3) and z.dtype == torch.long
    changed = z != tokens
    rate = changed.double().mean().item()
    assert abs(rate - beta) < 5 * math.sqrt(beta * (1 - beta) / (3 * n))
    # replacements are uniform over the V − 1 other tokens (never the token itself)
    for pos in range(3):
        repl = z[changed[:, pos], pos]
        assert not (repl == tokens[pos]).any()
        counts = torch.bincount(repl, minlength=V).numpy()
        counts = np.delete(counts, tokens[pos].item())
        assert stats.chisquare(counts).pvalue > 1e-4


def test_uniform_sampler_with_alphabet_and_mask():
    alphabet = [5, 11, 17, 23]
    k = UniformKernel(0.5, alphabet=alphabet)
    assert k.vocab_size == 4
    tokens = torch.tensor([5, 23, 11])
    z = k.sample(tokens, 5000, generator=torch.Generator().manual_seed(2), mask=torch.tensor([True, False, True]))
    assert set(z.unique().tolist()) <= set(alphabet)
    assert (z[:, 1] == 23).all()
    with pytest.raises(ValueError, match="alphabet"):
        k.sample(torch.tensor([5, 6]), 10)


def test_sampler_is_reproducible_and_seed_sensitive():
    k = UniformKernel(0.25, 1000)
    t = torch.arange(20)
    a = k.sample(t, 100, generator=torch.Generator().manual_seed(3))
    b = k.sample(t, 100, generator=torch.Generator().manual_seed(3))
    c = k.sample(t, 100, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_absorbing_sampler_law():
    k = AbsorbingKernel(0.3, mask_id=99)
    z = k.sample(torch.tensor([1, 2, 3, 4]), 100_000, generator=torch.Generator().manual_seed(5))
    masked = z == 99
    assert abs(masked.double().mean().item() - 0.3) < 0.005
    assert ((z == torch.tensor([1, 2, 3, 4])) | masked).all()


def test_hetero_sampler_law():
    k = HeteroUniformKernel(0.4, [2, 3, 10])
    z = k.sample(torch.tensor([1, 0, 9]), 100_000, generator=torch.Generator().manual_seed(6))
    assert (z[:, 0] <= 1).all() and (z[:, 1] <= 2).all() and (z[:, 2] <= 9).all()
    assert abs((z[:, 0] != 1).double().mean().item() - 0.4) < 0.006
    counts = torch.bincount(z[z[:, 2] != 9, 2], minlength=10).numpy()[:9]
    assert stats.chisquare(counts).pvalue > 1e-4


@pytest.mark.parametrize("make, name", [
    (lambda: UniformKernel(0.0, 10), "beta"),
    (lambda: UniformKernel(1.5, 10), "beta"),
    (lambda: UniformKernel(float("nan"), 10), "beta"),
    (lambda: UniformKernel(0.2, 1), "vocab_size"),
    (lambda: UniformKernel(0.2), "vocab_size"),
    (lambda: AbsorbingKernel(-0.1, 0), "beta"),
    (lambda: HeteroUniformKernel(0.2, [2, 1]), "arities"),
    (lambda: UniformKernel(0.2, 10).groups(-1), "d"),
    (lambda: UniformKernel(0.2, 10).sample(torch.tensor([], dtype=torch.long), 5), "empty"),
    (lambda: UniformKernel(0.2, 10).sample(torch.tensor([1.0, 2.0]), 5), "tokens"),
    (lambda: UniformKernel(0.2, 10).sample(torch.tensor([1, 12]), 5), "tokens"),
    (lambda: UniformKernel(0.2, 10).sample(torch.tensor([1, 2]), 0), "n"),
])
def test_bad_input(make, name):
    with pytest.raises(ValueError, match=name):
        make()
