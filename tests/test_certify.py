"""The certificate against independent computations: closed forms, mpmath, brute force, Monte Carlo."""

import math

import mpmath as mp
import numpy as np
import pytest
import torch
from scipy.stats import norm

from hybridrs.reference import mp as M
from hybridrs.certify import (cohen_radius, frontier, knapsack_bound, radius, required_p_a,
                              worst_case)
from hybridrs.kernels import AbsorbingKernel, UniformKernel

TAU = 4.6e-5
PA_ALL = 0.01 ** (1 / 10_000)


# ---------------------------------------------------------------- reference values (independent 40-digit computation)

@pytest.mark.parametrize("p_a, d, expected", [
    (0.99, 1, 5.318313), (0.90, 1, 3.833292), (PA_ALL, 3, 4.649287)])
def test_reference_values(p_a, d, expected):
    r = radius(p_a, UniformKernel(0.25, 30522), d, 1.0, TAU)
    assert r == pytest.approx(expected, abs=1e-6)


def test_reference_not_certified():
    assert radius(0.99, UniformKernel(0.25, 30522), 5, 1.0, TAU) == -math.inf


def test_paper_table_sigma_half():
    # independent float64 reference: r*(d), V = 30000, β = .25, σ = .5, d = 1..5 (d = 6 is not certified at ε = 0).
    r = frontier(PA_ALL, UniformKernel(0.25, 30_000), 6, 0.5, TAU)
    np.testing.assert_allclose(r[1:6], [3.2348, 2.8124, 2.3247, 1.7279, 0.8752], atol=6e-5)
    assert r[6] == -math.inf


# ---------------------------------------------------------------- Cohen reduction

@pytest.mark.parametrize("p_a", [0.6, 0.9, 0.99, PA_ALL, 0.999999])
@pytest.mark.parametrize("tau", [0.5, TAU, 0.1])
def test_cohen_reduction_exact(p_a, tau):
    with mp.workdps(40):
        exact = float(2.0 * (mp.sqrt(2) * mp.erfinv(2 * mp.mpf(p_a) - 1) - mp.sqrt(2) * mp.erfinv(2 * mp.mpf(tau) - 1)))
    closed = cohen_radius(p_a, 2.0, tau)
    hybrid = radius(p_a, UniformKernel(0.25, 100), 0, 2.0, tau)
    for r in (closed, hybrid):
        assert r <= exact * (1 + 1e-12)
        assert r == pytest.approx(exact, rel=1e-10)


def test_cohen_not_certified_and_vectorised():
    r = cohen_radius(np.array([0.3, 0.5, 0.8]), 1.0)
    assert r[0] == -math.inf and r[1] == 0.0 and r[2] == pytest.approx(norm.ppf(0.8), rel=1e-12)


# ---------------------------------------------------------------- knapsack limit and absorbing closed form

@pytest.mark.parametrize("d", [1, 2, 3, 4])
def test_small_eps_tends_to_knapsack(d):
    k = UniformKernel(0.25, 30_000)
    knap = knapsack_bound(PA_ALL, k.groups(d))
    near = worst_case(PA_ALL, k, d, 1e-5, 1.0)
    assert near == pytest.approx(knap, rel=1e-3)
    assert worst_case(PA_ALL, k, d, 0.0, 1.0) == pytest.approx(knap, rel=1e-12)
    # the knapsack bound equals an exact-rational greedy fill
    assert knap == pytest.approx(float(M.mp_knapsack(PA_ALL, M.mp_uniform_groups(d, 30_000, 0.25))), rel=1e-11)


@pytest.mark.parametrize("beta", [0.1, 0.25, 0.5, 0.9])
@pytest.mark.parametrize("d", [1, 2, 3])
@pytest.mark.parametrize("p_a", [0.5, 0.9, 0.999])
def test_absorbing_closed_form(beta, d, p_a):
    expected = max(0.0, p_a - (1 - beta**d))
    got = worst_case(p_a, AbsorbingKernel(beta, mask_id=0), d, 0.0, 1.0)
    assert got <= expected + 1e-15
    assert got == pytest.approx(expected, rel=1e-11, abs=1e-15)


def test_paper_knapsack_values():
    k = UniformKernel(0.25, 30_000)
    got = [worst_case(PA_ALL, k, d, 0.0, 1.0) for d in range(1, 7)]
    np.testing.assert_allclose(got, [0.24955, 0.062056, 0.015176, 0.0034510, 5.1827e-4, 4.648e-8], rtol=2e-4)


# ---------------------------------------------------------------- agreement with mpmath on random points

def _random_points(n, seed):
    rng = np.random.default_rng(seed)
    pts = []
    while len(pts) < n:
        p_a = float(1 - 10 ** rng.uniform(-4.2, -0.4))
        beta = float(rng.uniform(0.05, 0.95))
        V = int(rng.choice([3, 5, 20, 1000, 30522, 50257]))
        d = int(rng.integers(0, 5))
        sigma = float(rng.uniform(0.1, 3.0))
        tau = float(rng.choice([TAU, 0.5, 10 ** rng.uniform(-6, -0.5)]))
        pts.append((p_a, beta, V, d, sigma, tau))
    return pts


@pytest.mark.parametrize("p_a, beta, V, d, sigma, tau", _random_points(60, seed=1))
def test_radius_matches_mpmath(p_a, beta, V, d, sigma, tau):
    """Exact-d radius against a 40-digit solution; never above it beyond 1e-12 relative."""
    k = UniformKernel(beta, V)
    # the uniform kernel's certificate is monotone in d, so "≤ d" equals "exactly d" here
    r = radius(p_a, k, d, sigma, tau)
    groups = M.mp_uniform_groups(d, V, beta)
    cert0 = M.mp_knapsack(p_a, groups) >= tau
    if r == -math.inf:
        assert M.mp_knapsack(p_a, groups) < tau * (1 + 1e-10)
        return
    assert cert0
    if r == 0.0:
        # certified at ε = 0 only: the worst case at a tiny radius is already below τ
        assert M.mp_worst_case(p_a, 1e-6, groups) < tau * (1 + 1e-8)
        return
    rho = M.mp_radius(p_a, groups, tau)
    exact = float(rho) * sigma
    assert r <= exact * (1 + 1e-12)
    assert r == pytest.approx(exact, rel=1e-9)


@pytest.mark.parametrize("p_a, beta, V, d, sigma, tau", _random_points(30, seed=2))
def test_worst_case_matches_mpmath(p_a, beta, V, d, sigma, tau):
    k = UniformKernel(beta, V)
    eps = float(np.random.default_rng(int(p_a * 1e9) % 2**32).uniform(0.0, 3.0))
    # the ≤ d worst case is the minimum over d' ≤ d of the exact-d' values
    exact = min(float(M.mp_worst_case(p_a, eps / sigma, M.mp_uniform_groups(dd, V, beta))) for dd in range(d + 1))
    got = worst_case(p_a, k, d, eps, sigma)
    assert got <= exact * (1 + 1e-12) + 1e-300
    assert got == pytest.approx(exact, rel=1e-9, abs=1e-300)


def test_vectorised_frontier_equals_scalar_calls():
    k = UniformKernel(0.25, 30522)
    ps = np.array([0.6, 0.9, 0.99, PA_ALL])
    batch = frontier(ps, k, 6, 0.5, TAU)
    assert batch.shape == (4, 7)
    for i, p in enumerate(ps):
        np.testing.assert_array_equal(batch[i], frontier(float(p), k, 6, 0.5, TAU))


# ---------------------------------------------------------------- structure: monotonicity, σ scaling

def test_monotone_in_eps_and_d():
    k = UniformKernel(0.25, 40_000)
    eps = np.linspace(0, 6, 25)
    prev_d = None
    for d in range(0, 5):
        vals = np.array([worst_case(0.995, k, d, e, 1.0) for e in eps])
        assert np.all(np.diff(vals) <= 1e-15)
        if prev_d is not None:
            assert np.all(vals <= prev_d + 1e-15)
        prev_d = vals
    r = frontier(np.linspace(0.6, 0.99995, 400), k, 8, 1.0, TAU)
    assert np.all(r[:, 1:] <= r[:, :-1])
    assert np.all(r[1:] >= r[:-1] * (1 - 1e-12))  # larger p_A never certifies less


def test_published_p_adv_curve():
    # independent float64 reference: p_adv(r), d = 3, V = 40 000, σ = 1
    k = UniformKernel(0.25, 40_000)
    got = [worst_case(PA_ALL, k, 3, r, 1.0) for r in (0.01, 0.5, 1, 2, 3, 4, 5)]
    np.testing.assert_allclose(got, [0.015162, 0.014346, 0.012713, 0.007132, 0.002088, 2.73e-4, 1.5e-5], rtol=5e-3)


@pytest.mark.parametrize("d", [0, 1, 2, 4])
def test_radius_scales_linearly_with_sigma(d):
    k = UniformKernel(0.25, 30_000)
    base = radius(0.99954, k, d, 1.0, TAU)
    for s in (0.25, 0.5, 2.0, 3.7):
        assert radius(0.99954, k, d, s, TAU) == pytest.approx(s * base, rel=1e-10)


def test_minus_inf_versus_zero():
    k = AbsorbingKernel(0.25, mask_id=0)
    # knapsack value exactly p_A − (1 − β) = τ-ish boundary: just above → certified, tiny ε fails
    p_just = (1 - 0.25) + TAU * 1.0000001
    r = radius(p_just, k, 1, 1.0, TAU)
    assert r >= 0.0
    assert radius(0.75, k, 1, 1.0, TAU) == -math.inf
    assert radius(0.3, UniformKernel(0.25, 100), 0, 1.0, 0.5) == -math.inf


def test_required_p_a_inverts_the_certificate():
    k = UniformKernel(0.25, 30522)
    for d, eps in [(0, 1.0), (1, 0.0), (2, 1.5), (3, 2.0), (1, 4.0)]:
        need = required_p_a(k, d, eps, 1.0, TAU)
        assert worst_case(min(need, 1.0), k, d, eps, 1.0) >= TAU
        assert worst_case(need - 1e-7, k, d, eps, 1.0) < TAU
    needs = [[required_p_a(k, d, e, 1.0, TAU) for e in (0.0, 1.0, 3.0)] for d in range(4)]
    assert np.all(np.diff(needs, axis=0) > 0) and np.all(np.diff(needs, axis=1) > 0)
    # absorbing kernel: at most β^d of adversarial mass can ever be bought; below τ nothing certifies
    assert required_p_a(AbsorbingKernel(0.25, 0), 8, 0.0, 1.0, TAU) == math.inf
    assert required_p_a(AbsorbingKernel(0.25, 0), 8, 1.0, 1.0, TAU) == math.inf


# ---------------------------------------------------------------- the worst case is attained (Monte Carlo)

def test_worst_case_classifier_monte_carlo():
    """Build the Neyman–Pearson worst-case classifier for a small explicit case and measure it.

    Uniform kernel, V = 4, sequence of length 3 with d = 2 changes, image dimension 2 shifted by ε
    along the first axis.  The worst-case classifier is h(z) = 1{log Λ(z) ≤ u*}; its clean score must
    be p_A and its adversarial score the certificate's p_adv.
    """
    beta, V, sigma, eps, p_a = 0.4, 4, 1.0, 0.8, 0.9
    k = UniformKernel(beta, V)
    s = torch.tensor([0, 1, 2])
    s_adv = torch.tensor([3, 0, 2])  # d = 2 positions changed
    rho = eps / sigma
    u_star = float(M.mp_threshold(p_a, rho, M.mp_uniform_groups(2, V, beta)))
    a = beta / (V - 1)

    def log_ratio_text(z):
        p_clean = torch.where(z == s, 1 - beta, a).log().sum(1)
        p_adv = torch.where(z == s_adv, 1 - beta, a).log().sum(1)
        return p_adv - p_clean

    n = 400_000
    gen = torch.Generator().manual_seed(0)
    scores = {}
    for name, seq, shift in (("clean", s, 0.0), ("adv", s_adv, eps)):
        z = k.sample(seq, n, generator=gen)
        w = torch.randn(n, generator=gen, dtype=torch.float64) * sigma + shift  # first image coordinate
        log_lam = log_ratio_text(z).double() + (rho * w / sigma - rho**2 / 2)
        scores[name] = (log_lam <= u_star).double().mean().item()
    se = 0.5 / math.sqrt(n)
    assert abs(scores["clean"] - p_a) < 5 * se
    assert abs(scores["adv"] - worst_case(p_a, k, 2, eps, sigma)) < 5 * se
    # and it is strictly below the text-only (ε = 0) bound: the image shift helps the adversary
    assert scores["adv"] < worst_case(p_a, k, 2, 0.0, sigma) - 10 * se


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("call, name", [
    (lambda k: radius(1.2, k, 1, 1.0, TAU), "p_a"),
    (lambda k: radius(float("nan"), k, 1, 1.0, TAU), "p_a"),
    (lambda k: radius(-0.1, k, 1, 1.0, TAU), "p_a"),
    (lambda k: radius(0.9, k, 1, 0.0, TAU), "sigma"),
    (lambda k: radius(0.9, k, 1, -1.0, TAU), "sigma"),
    (lambda k: radius(0.9, k, 1, float("nan"), TAU), "sigma"),
    (lambda k: radius(0.9, k, -1, 1.0, TAU), "d"),
    (lambda k: radius(0.9, k, 1.5, 1.0, TAU), "d"),
    (lambda k: radius(0.9, k, 1, 1.0, 0.0), "tau"),
    (lambda k: radius(0.9, k, 1, 1.0, 1.0), "tau"),
    (lambda k: frontier(np.ones((2, 2)) * 0.9, k, 2, 1.0, TAU), "p_a"),
    (lambda k: frontier(0.9, k, -2, 1.0, TAU), "d_max"),
    (lambda k: worst_case(0.9, k, 1, -0.5, 1.0), "eps"),
    (lambda k: worst_case(0.9, "uniform", 1, 0.5, 1.0), "kernel"),
    (lambda k: knapsack_bound(0.9, [1, 2]), "groups"),
    (lambda k: cohen_radius(0.9, 0.0), "sigma"),
    (lambda k: cohen_radius(2.0, 1.0), "p_a"),
])
def test_bad_input_names_the_argument(call, name):
    with pytest.raises(ValueError, match=name):
        call(UniformKernel(0.25, 100))


# ---------------------------------------------------------------- property: radius and worst case agree

from hypothesis import given, settings, strategies as st  # noqa: E402


@settings(max_examples=40, deadline=None)
@given(p_a=st.floats(0.55, 0.99995), beta=st.floats(0.05, 0.95), V=st.integers(3, 60_000),
       d=st.integers(0, 5), sigma=st.floats(0.1, 4.0), tau=st.floats(1e-6, 0.45))
def test_radius_is_the_edge_of_the_worst_case(p_a, beta, V, d, sigma, tau):
    """At the certified radius the worst case is still ≥ τ; a hair beyond it is below τ."""
    k = UniformKernel(beta, V)
    r = radius(p_a, k, d, sigma, tau)
    if r == -math.inf:
        assert worst_case(p_a, k, d, 0.0, sigma) < tau * (1 + 1e-9)
    elif r > 0:
        assert worst_case(p_a, k, d, r, sigma) >= tau * (1 - 1e-9)
        assert worst_case(p_a, k, d, r * (1 + 1e-6) + 1e-12, sigma) < tau
