"""Sequential certification: the confidence sequence, its validity under optional stopping, and
the inverse certificate required_p_a it relies on."""

from __future__ import annotations

import math

import mpmath as mp
import numpy as np
import pytest
import torch

from hybridrs.certify import frontier, required_p_a, worst_case
from hybridrs.kernels import AbsorbingKernel, UniformKernel
from hybridrs.sequential import (CERTIFIED, REFUTED, UNDECIDED, batch_schedule,
                                 confidence_sequence, sequential_test)
from hybridrs.estimators import Sequential
from hybridrs.seeds import input_seed
from hybridrs.smoothing import HybridSmooth
from hybridrs.threats import L0, Suffix
from hybridrs.stats import clopper_pearson_lower


def _log_m_mp(k, t, p0, a=1, b=1):
    """log M_t(p0) of the beta-binomial mixture in 50-digit arithmetic (independent path)."""
    mp.mp.dps = 50
    k, t, p0 = mp.mpf(k), mp.mpf(t), mp.mpf(p0)
    mix = mp.log(mp.beta(a + k, b + t - k)) - mp.log(mp.beta(a, b))
    return mix - k * mp.log(p0) - (t - k) * mp.log(1 - p0)


@pytest.mark.parametrize("k,t,alpha,prior", [(7, 10, 0.05, (1, 1)), (95, 100, 0.01, (1, 1)),
                                             (3, 400, 0.1, (2, 5)), (9990, 10000, 0.01, (1, 1)),
                                             (1, 1, 0.2, (0.5, 0.5))])
def test_bounds_are_the_level_crossings(k, t, alpha, prior):
    lo, hi = confidence_sequence(k, t, alpha, prior)
    level = math.log(1 / alpha)
    # outside the interval the mixture is >= 1/alpha (rejected), just inside it is below
    assert _log_m_mp(k, t, lo, *prior) >= level
    assert _log_m_mp(k, t, lo * (1 + 1e-8) + 1e-15, *prior) < level
    if hi < 1:
        assert _log_m_mp(k, t, hi, *prior) >= level
        assert _log_m_mp(k, t, hi * (1 - 1e-8), *prior) < level
    assert lo < k / t < hi or (k == t and hi == 1)


def test_all_successes_closed_form():
    # With a Beta(1, 1) prior and k = t: M_t(p) = 1 / ((t + 1) p^t), so L_t = (α / (t + 1))^(1/t).
    for t in (1, 10, 1000, 10_000):
        lo, hi = confidence_sequence(t, t, 0.01)
        exact = (0.01 / (t + 1)) ** (1 / t)
        assert hi == 1.0
        assert lo <= exact and lo == pytest.approx(exact, rel=1e-12)
    assert confidence_sequence(0, 0, 0.05) == (0.0, 1.0)
    assert confidence_sequence(0, 5, 0.05)[0] == 0.0


def test_vectorised_matches_scalar():
    k = np.array([0, 3, 50, 99, 100])
    lo, hi = confidence_sequence(k, 100, 0.05)
    for i, kk in enumerate(k):
        assert (lo[i], hi[i]) == confidence_sequence(int(kk), 100, 0.05)


def test_time_uniform_coverage_by_simulation():
    """P[p leaves (L_t, U_t) at ANY checked t] <= α; a Clopper–Pearson bound re-checked after every
    batch (peeking) does not have this property, which shows that the simulation can see a breach."""
    rng = np.random.default_rng(1)
    alpha, p, reps = 0.1, 0.8, 2500
    sizes = batch_schedule(10, 1.5, 20_000)
    k = np.zeros(reps, dtype=np.int64)
    t = 0
    cs_miss = np.zeros(reps, dtype=bool)
    cp_miss = np.zeros(reps, dtype=bool)
    for s in sizes:
        k += rng.binomial(s, p, size=reps)
        t += s
        lo, hi = confidence_sequence(k, t, alpha)
        cs_miss |= (p <= lo) | (p >= hi)
        cp_miss |= clopper_pearson_lower(k, t, alpha / 2) >= p  # one side at α/2, peeked
    se = math.sqrt(alpha * (1 - alpha) / reps)
    assert cs_miss.mean() <= alpha + 3 * se
    assert (cp_miss.mean()) > alpha / 2 + 3 * math.sqrt(alpha / 2 / reps)


def _simulate_decisions(p_true, p_req, alpha, rng, reps, max_n=50_000, first=50, growth=2.0):
    """Vectorised sequential_test for many inputs with known p (same rule, same schedule)."""
    sizes = batch_schedule(first, growth, max_n)
    k = np.zeros(reps, dtype=np.int64)
    t = 0
    decision = np.full(reps, UNDECIDED, dtype=object)
    for s in sizes:
        active = decision == UNDECIDED
        if not active.any():
            break
        k[active] += rng.binomial(s, p_true[active])
        t += s
        lo, hi = confidence_sequence(k, t, alpha)
        decision[active & (lo >= p_req)] = CERTIFIED
        decision[active & (hi < p_req)] = REFUTED
    return decision


def test_sequential_error_rate_at_most_alpha():
    """Inputs with p just below and exactly at the required score: the hardest cases."""
    rng = np.random.default_rng(2)
    kernel = UniformKernel(0.25, 30522)
    p_req = required_p_a(kernel, 1, 0.5, 0.5, 4.6e-5)
    alpha, reps = 0.1, 2000
    se = math.sqrt(alpha * (1 - alpha) / reps)
    below = _simulate_decisions(np.full(reps, p_req - 0.01), p_req, alpha, rng, reps)
    at = _simulate_decisions(np.full(reps, p_req), p_req, alpha, rng, reps)
    assert np.mean(below == CERTIFIED) <= alpha + 3 * se
    assert np.mean(at == REFUTED) <= alpha + 3 * se
    # and the test decides easy inputs: far from p_req it almost never stays undecided
    easy = _simulate_decisions(np.full(500, min(1.0, p_req + 0.1)), p_req, alpha, rng, 500)
    assert np.mean(easy == CERTIFIED) > 0.95


def test_sequential_test_function_matches_rule():
    rng = np.random.default_rng(3)
    draws = []

    def draw(size, j):
        draws.append((size, j))
        return int(rng.binomial(size, 0.99))

    res = sequential_test(draw, 0.7, 0.01, max_n=10_000, first_batch=20, growth=2.0)
    assert res.decision == CERTIFIED and res.lower >= 0.7
    assert [s for s, _ in draws] == batch_schedule(20, 2.0, 10_000)[: len(draws)]
    assert res.n == sum(s for s, _ in draws)
    lo, hi = confidence_sequence(res.count, res.n, 0.01)
    assert (lo, hi) == (res.lower, res.upper)
    res = sequential_test(lambda s, j: 0, 0.7, 0.01)
    assert res.decision == REFUTED and res.n == 100
    res = sequential_test(lambda s, j: s // 2, 0.5, 0.01, max_n=1000)
    assert res.decision == UNDECIDED and res.n == 1000
    assert sequential_test(lambda s, j: s, math.inf, 0.01).n == 0


def test_batch_schedule_and_bad_arguments():
    assert batch_schedule(100, 2, 1000) == [100, 200, 400, 300]
    assert sum(batch_schedule(7, 1.3, 12345)) == 12345
    with pytest.raises(ValueError, match="growth"):
        batch_schedule(10, 0.5, 100)
    with pytest.raises(ValueError, match="alpha"):
        confidence_sequence(1, 2, 1.5)
    with pytest.raises(ValueError, match="prior"):
        confidence_sequence(1, 2, 0.1, prior=(0, 1))
    with pytest.raises(ValueError, match="k <= t"):
        confidence_sequence(3, 2, 0.1)
    with pytest.raises(ValueError, match="draw"):
        sequential_test(lambda s, j: s + 1, 0.5, 0.1)


# ---------------------------------------------------------------------------------------------
# required_p_a (the lead's inverse certificate) against worst_case
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kernel,d,eps,sigma,tau", [
    (UniformKernel(0.25, 30522), 1, 0.5, 0.5, 4.6e-5),
    (UniformKernel(0.25, 30522), 3, 0.5, 1.0, 4.6e-5),
    (UniformKernel(0.1, 512), 2, 0.0, 1.0, 4.6e-5),
    (UniformKernel(0.3, 50), 1, 0.2, 0.5, 0.5),
    (UniformKernel(0.25, 30522), 0, 0.3, 1.0, 0.5),
    (AbsorbingKernel(0.3, 0), 2, 0.0, 1.0, 0.05),
    (AbsorbingKernel(0.3, 0), 2, 0.3, 1.0, 0.05),
])
def test_required_p_a_inverts_worst_case(kernel, d, eps, sigma, tau):
    p = required_p_a(kernel, d, eps, sigma, tau)
    assert 0 < p <= 1
    assert worst_case(p, kernel, d, eps, sigma) >= tau  # sound: p certifies
    assert worst_case(p * (1 - 1e-8), kernel, d, eps, sigma) < tau  # tight to 1e-8
    if eps > 0:  # and it agrees with the frontier: r*(d) at p reaches eps, just below it does not
        assert frontier(p, kernel, d, sigma, tau)[d] >= eps * (1 - 1e-9)
        assert frontier(p * (1 - 1e-6), kernel, d, sigma, tau)[d] < eps


def test_required_p_a_impossible_is_inf():
    assert required_p_a(AbsorbingKernel(0.3, 0), 2, 0.0, 1.0, 0.5) == math.inf  # needs p_A ≥ 1.41


# ---------------------------------------------------------------------------------------------
# The Sequential estimator through HybridSmooth.certify, on a real (toy) smoother
# ---------------------------------------------------------------------------------------------

def _toy(tokens, images):
    return ((tokens == 3).any(dim=1).float() + images.flatten(1).mean(dim=1) > 0.8).long()


def _seq(d, eps, **kw):
    return Sequential(alpha=0.01, target_d=d, target_eps=eps, max_n=20_000, first_batch=100, **kw)


def test_sequential_certify_end_to_end():
    kernel = UniformKernel(0.1, 64)
    sm = HybridSmooth(_toy, sigma=0.25, kernel=kernel, batch_size=256, progress=False)
    tokens = torch.tensor([3, 5, 7, 9])
    image = torch.full((1, 4, 4), 0.2)
    cert = sm.certify(tokens, image, threat=L0(3), estimator=_seq(1, 0.1), tau=4.6e-5, seed=5)
    again = sm.certify(tokens, image, threat=L0(3), estimator=_seq(1, 0.1), tau=4.6e-5, seed=5)
    assert cert.extra["decision"] == CERTIFIED and cert.n < 20_000
    assert (cert.count, cert.p_a[0]) == (again.count, again.p_a[0])
    lo, _ = confidence_sequence(cert.count, cert.n, 0.01)
    assert cert.p_a[0] == lo and lo >= cert.extra["p_required"]
    np.testing.assert_array_equal(cert.radii, frontier(lo, kernel, 3, 0.25, 4.6e-5))
    assert cert.certified(1, 0.1)
    # an image far below the threshold: refuted quickly
    dark = sm.certify(torch.tensor([5, 7, 9, 11]), image, threat=L0(3), estimator=_seq(1, 0.1), tau=4.6e-5, seed=5)
    assert dark.extra["decision"] == REFUTED and dark.n < 1000
    with pytest.raises(ValueError, match="d_max"):
        sm.certify(tokens, image, threat=L0(3), estimator=_seq(4, 0.1), tau=4.6e-5)
    with pytest.raises(ValueError, match="one estimate per d"):
        sm.certify(tokens, image, threat=Suffix(3, filler_id=0), estimator=_seq(1, 0.1), tau=4.6e-5)


def test_sequential_batches_are_seeded_by_input_seed():
    """Batch j of an input draws from input_seed(seed, "batch", j): the counts can be replayed."""
    sm = HybridSmooth(_toy, sigma=0.25, kernel=UniformKernel(0.1, 64), batch_size=64, progress=False)
    tokens, image = torch.tensor([3, 5, 7, 9]), torch.full((1, 4, 4), 0.2)
    cert = sm.certify(tokens, image, threat=L0(2), estimator=_seq(1, 0.1), tau=4.6e-5, seed=11)
    sizes = batch_schedule(100, 2.0, 20_000)[: cert.extra["batches"]]
    replay = sum(sm.count(tokens, image, s, seed=input_seed(11, "batch", j)) for j, s in enumerate(sizes))
    assert replay == cert.count and sum(sizes) == cert.n


def test_sequential_image_only_matches_cohen():
    from hybridrs.certify import cohen_radius

    sm = HybridSmooth(lambda t, v: (v.flatten(1).mean(dim=1) > 0.0).long(), sigma=0.5, progress=False)
    image = torch.full((1, 2, 2), 0.4)
    cert = sm.certify(None, image, estimator=_seq(0, 0.3), tau=0.5)
    p_req = cert.extra["p_required"]
    assert cohen_radius(p_req, 0.5, 0.5) >= 0.3 > cohen_radius(p_req * (1 - 1e-9), 0.5, 0.5)
    assert cert.extra["decision"] == CERTIFIED
    assert cert.radii[0] == cohen_radius(cert.p_a[0], 0.5, 0.5) >= 0.3
