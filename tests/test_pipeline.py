"""The one certification pipeline: threats, estimators and the Certificate's definitions.

Each test re-derives what ``HybridSmooth.certify`` must return from the lower-level pieces
(``count``, Clopper–Pearson, ``frontier``/``worst_case``), so a pipeline that mixed up stages,
seeds, masks or levels would fail.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hybridrs.certify import frontier, worst_case
from hybridrs.estimators import FixedN, Sequential
from hybridrs.kernels import UniformKernel
from hybridrs.seeds import input_seed
from hybridrs.smoothing import Certificate, HybridSmooth
from hybridrs.stats import clopper_pearson_lower
from hybridrs.threats import L0, Suffix

KERNEL = UniformKernel(0.25, 40)
SIGMA, TAU, FILLER = 0.5, 4.6e-5, 7


def _base(tokens, images):
    """Flags unless a token 3 appears, with an image-dependent margin: suffix noise matters."""
    score = images.flatten(1).mean(dim=1) + 0.6 - 0.5 * (tokens == 3).any(dim=1).float()
    return (score > 0.5).long()


def _smoother(sigma=SIGMA, batch=128):
    return HybridSmooth(_base, sigma=sigma, kernel=KERNEL, batch_size=batch, progress=False)


TOKENS = torch.tensor([5, 6, 8, 9, 10])
IMAGE = torch.full((1, 3, 3), 0.1)


def test_l0_is_one_estimate_for_every_budget():
    sm = _smoother()
    cert = sm.certify(TOKENS, IMAGE, threat=L0(4), estimator=FixedN(500, 0.01), tau=TAU, seed=3)
    k = sm.count(TOKENS, IMAGE, 500, seed=3)
    p = float(clopper_pearson_lower(k, 500, 0.01))
    assert cert.counts == [k] and cert.draws == [500] and cert.n == 500
    np.testing.assert_array_equal(cert.p_a, np.full(5, p))
    np.testing.assert_array_equal(cert.radii, frontier(p, KERNEL, 4, SIGMA, TAU))
    assert cert.alpha_per_stage == 0.01 and cert.threat == "l0"


def test_l0_positions_noise_only_those_positions():
    sm = _smoother()
    cert = sm.certify(TOKENS, IMAGE, threat=L0(2, positions=(1, 3)), estimator=FixedN(300, 0.01), tau=TAU, seed=1)
    mask = torch.zeros(5, dtype=torch.bool)
    mask[[1, 3]] = True
    assert cert.counts == [sm.count(TOKENS, IMAGE, 300, seed=1, mask=mask)]
    with pytest.raises(ValueError, match="exceeds"):
        sm.certify(TOKENS, IMAGE, threat=L0(3, positions=(1, 3)), n=10, tau=TAU)


@pytest.mark.parametrize("familywise", [True, False])
def test_suffix_per_d_replays_stage_by_stage(familywise):
    """Stage d noises the first d filler slots, draws from input_seed(seed, "stage", d - 1), and its
    p_A (at α/m with familywise, else α) certifies budget d; stage 1 also certifies d = 0."""
    sm, m, n, alpha = _smoother(), 3, 400, 0.03
    threat = Suffix(m, filler_id=FILLER, stop_early=False)
    cert = sm.certify(TOKENS, IMAGE, threat=threat, estimator=FixedN(n, alpha, familywise=familywise), tau=TAU,
                      seed=9)
    padded = torch.cat([TOKENS, torch.full((m,), FILLER)])
    level = alpha / m if familywise else alpha
    assert cert.alpha_per_stage == pytest.approx(level)
    for d in range(1, m + 1):
        mask = torch.zeros(len(padded), dtype=torch.bool)
        mask[len(TOKENS):len(TOKENS) + d] = True
        k = sm.count(padded, IMAGE, n, seed=input_seed(9, "stage", d - 1), mask=mask)
        p = float(clopper_pearson_lower(k, n, level))
        assert cert.counts[d - 1] == k and cert.p_a[d] == p
        assert cert.radii[d] == frontier(p, KERNEL, d, SIGMA, TAU)[d]
    assert cert.p_a[0] == cert.p_a[1] and cert.n == m * n


def test_bonferroni_never_certifies_more():
    sm = _smoother()
    both = [sm.certify(TOKENS, IMAGE, threat=Suffix(4, filler_id=FILLER, stop_early=False),
                       estimator=FixedN(600, 0.01, familywise=fw), tau=TAU, seed=2) for fw in (True, False)]
    strict, loose = both
    assert strict.counts == loose.counts  # same draws, only the level differs
    assert np.all(strict.p_a <= loose.p_a)
    assert np.all(np.nan_to_num(strict.radii, nan=-1) <= np.nan_to_num(loose.radii, nan=-1))


def test_suffix_stops_at_the_first_failing_budget():
    def weak(tokens, images):  # flags only when no suffix slot was replaced: p = 0.75^d
        return (tokens[:, -3:] == FILLER).all(dim=1).long()

    sm = HybridSmooth(weak, kernel=KERNEL, batch_size=256, progress=False)
    cert = sm.certify(TOKENS, None, threat=Suffix(3, filler_id=FILLER), n=2000, alpha=0.01, tau=0.5, seed=0)
    # d = 1: p = 0.75 > 1/2 + β certifies nothing beyond d = 0; the run stops after stage 1
    assert len(cert.counts) == 1 and np.isnan(cert.radii[2:]).all()
    assert not cert.certified(2) and cert.budget() == cert.d_certified


def test_shared_suffix_is_one_estimate():
    sm = _smoother()
    cert = sm.certify(TOKENS, IMAGE, threat=Suffix(3, filler_id=FILLER, shared=True), n=500, tau=TAU, seed=4)
    padded = torch.cat([TOKENS, torch.full((3,), FILLER)])
    mask = torch.zeros(8, dtype=torch.bool)
    mask[5:] = True
    assert cert.counts == [sm.count(padded, IMAGE, 500, seed=4, mask=mask)]
    assert cert.threat == "suffix-shared" and cert.radii.shape == (4,)


def test_noise_independent_across_inputs_and_settings():
    """input_seed gives every key its own stream: no two settings share draws by accident."""
    seeds = {input_seed(0, "main", i, beta) for i in range(50) for beta in (0.1, 0.25, 0.5, 1.0)}
    assert len(seeds) == 200
    assert input_seed(0, "x", 1) == input_seed(0, "x", 1) != input_seed(1, "x", 1)
    assert input_seed(0, "stage", 0) != input_seed(0, "stage", 1)


def _cert(radii):
    radii = np.asarray(radii, dtype=float)
    return Certificate(threat="l0", radii=radii, p_a=np.full(radii.size, 0.9), counts=[1], draws=[1],
                       p_a_per_stage=[0.9], sigma=1.0, tau=0.5, alpha=0.01, alpha_per_stage=0.01,
                       seconds_sampling=0.0, seconds_certify=0.0)


def test_certificate_definitions():
    c = _cert([2.0, 1.0, 0.0, -math.inf, 0.5])
    assert c.certified(0, 2.0) and not c.certified(0, 2.1)
    assert c.certified(2, 0.0) and not c.certified(2, 0.1) and not c.certified(3) and not c.certified(9)
    assert c.budget() == 2 and c.d_certified == 2  # d = 4 is cut off by the failure at d = 3
    assert c.budget(strict=True) == 1  # the released code's d_cert: r*(d) > 0 for every d' <= d
    assert c.budget(1.0) == 1 and c.budget(1.5) == 0 and c.budget(3.0) == -1
    assert _cert([np.nan]).budget() == -1 and not _cert([np.nan]).certified(0)
    row = c.as_row()
    assert row["r_3"] == -math.inf and row["d_certified"] == 2 and row["n"] == 1


def test_sequential_refuses_multi_stage_and_image_only_ignores_threat():
    sm = _smoother()
    with pytest.raises(ValueError, match="one estimate per d"):
        sm.certify(TOKENS, IMAGE, threat=Suffix(2, filler_id=FILLER), estimator=Sequential(target_d=1), tau=TAU)
    img = HybridSmooth(_base, sigma=SIGMA, progress=False)
    cert = img.certify(TOKENS, IMAGE, n=300, tau=TAU, threat=L0(5), seed=0)
    assert cert.threat == "image-only" and cert.radii.shape == (1,)
    with pytest.raises(ValueError, match="either n"):
        sm.certify(TOKENS, IMAGE, n=10, estimator=FixedN(10))
    with pytest.raises(ValueError, match="n"):
        sm.certify(TOKENS, IMAGE)


def test_text_only_budget_is_the_knapsack():
    sm = HybridSmooth(_base, kernel=KERNEL, progress=False)
    cert = sm.certify(TOKENS, IMAGE, threat=L0(4), n=400, alpha=0.01, tau=TAU, seed=5)
    p = cert.p_a[0]
    expect = [worst_case(p, KERNEL, d, 0.0, 1.0) >= TAU for d in range(5)]
    assert cert.budget() == int(np.logical_and.accumulate(expect).sum()) - 1
