"""Tests of hybridrs.reference: the mpmath reference path, the released-code re-implementation, the
product-of-thresholds regions (Prop. 4.1) and the Monte Carlo of the worst-case classifier.

References are computed here independently: closed forms (Cohen, absorbing kernel), brute-force
enumeration of token sequences, numerical quadrature of the region masses, and Monte Carlo.
"""

from __future__ import annotations

import itertools
import math

import mpmath
import numpy as np
import pytest
from scipy.special import ndtr, ndtri

from hybridrs import reference as T
from hybridrs.certify import knapsack_bound, worst_case
from hybridrs.kernels import AbsorbingKernel, Groups, UniformKernel

TAU = 4.6e-5
mpmath.mp.dps = 40  # the references below are computed at 40 digits


# ---------------------------------------------------------------- exact groups

def _key(x):
    return mpmath.nstr(x if abs(x) > 1e-30 else mpmath.mpf(0), 20)


def _brute_groups(s, s2, V, beta):
    """Enumerate every noisy sequence z of the uniform kernel and group (clean, adv) by ratio."""
    a = mpmath.mpf(beta) / (V - 1)
    keep = 1 - mpmath.mpf(beta)
    groups = {}
    for z in itertools.product(range(V), repeat=len(s)):
        pc = mpmath.fprod(keep if zi == si else a for zi, si in zip(z, s))
        pa = mpmath.fprod(keep if zi == si else a for zi, si in zip(z, s2))
        key = _key(mpmath.log(pa / pc))
        c0, a0 = groups.get(key, (0, 0))
        groups[key] = (c0 + pc, a0 + pa)
    return groups


@pytest.mark.parametrize("d,V", [(1, 4), (2, 3), (2, 5), (3, 4)])
def test_mp_uniform_groups_match_enumeration(d, V):
    s = [0] * 3
    s2 = [1] * d + [0] * (3 - d)
    brute = _brute_groups(s, s2, V, 0.3)
    g = T.mp_uniform_groups(d, V, 0.3)
    mine = {}
    for c, a, lr in zip(g.clean, g.adv, g.log_ratio):
        key = _key(lr)
        c0, a0 = mine.get(key, (0, 0))
        mine[key] = (c0 + c, a0 + a)
    assert set(mine) == set(brute)
    for key in brute:
        assert abs(mine[key][0] - brute[key][0]) < mpmath.mpf(10) ** -30
        assert abs(mine[key][1] - brute[key][1]) < mpmath.mpf(10) ** -30


def test_mp_groups_sum_to_one():
    g = T.mp_uniform_groups(4, 30522, 0.25)
    assert abs(mpmath.fsum(g.clean) - 1) < mpmath.mpf(10) ** -35
    assert abs(mpmath.fsum(g.adv) - 1) < mpmath.mpf(10) ** -35


# ---------------------------------------------------------------- mp certificate

@pytest.mark.parametrize("p_a,rho", [(0.9, 0.7), (0.999, 2.0), (0.6, 0.1)])
def test_mp_d0_is_cohen_value(p_a, rho):
    g = T.mp_uniform_groups(0, 100, 0.25)
    want = mpmath.ncdf(mpmath.sqrt(2) * mpmath.erfinv(2 * mpmath.mpf(p_a) - 1) - rho)
    assert abs(T.mp_worst_case(p_a, rho, g) - want) < mpmath.mpf(10) ** -25


def test_mp_radius_d0_is_cohen_radius():
    g = T.mp_uniform_groups(0, 100, 0.25)
    for p_a in (0.7, 0.99, 0.01 ** 1e-4):
        want = mpmath.sqrt(2) * (mpmath.erfinv(2 * mpmath.mpf(p_a) - 1) - mpmath.erfinv(2 * mpmath.mpf(TAU) - 1))
        assert abs(T.mp_radius(p_a, g, TAU) - want) < 1e-15


def test_mp_absorbing_closed_form():
    # Only the all-masked group (ratio 1) is split by the Gaussian: V = β^d Φ(Φ⁻¹(q) − ρ) with
    # β^d Φ(Φ⁻¹(q)) = p_A − (1 − β^d), i.e. q = (p_A − 1 + β^d)/β^d.
    for d, p_a, rho in [(1, 0.9, 1.0), (2, 0.99, 0.3), (1, 0.999, 2.5)]:
        m = mpmath.mpf(0.25) ** d
        q = (mpmath.mpf(p_a) - 1 + m) / m
        want = m * mpmath.ncdf(mpmath.sqrt(2) * mpmath.erfinv(2 * q - 1) - rho)
        got = T.mp_worst_case(p_a, rho, T.mp_absorbing_groups(d, 0.25))
        assert abs(got - want) < mpmath.mpf(10) ** -25


def test_mp_small_rho_tends_to_knapsack():
    g = T.mp_uniform_groups(3, 1000, 0.25)
    for p_a in (0.5, 0.9, 0.995):
        k = T.mp_knapsack(p_a, g)
        assert abs(T.mp_worst_case(p_a, 1e-9, g) - k) < 1e-7 * max(k, 1e-30) + 1e-12


def test_mp_worst_case_monotone():
    g = T.mp_uniform_groups(2, 500, 0.25)
    vals = [T.mp_worst_case(0.95, r, g) for r in (0.0, 0.1, 0.5, 1.0, 2.0, 4.0)]
    assert all(b <= a for a, b in zip(vals, vals[1:]))


def test_mp_radius_is_the_crossing():
    g = T.mp_uniform_groups(2, 30522, 0.25)
    r = T.mp_radius(0.99, g, TAU)
    assert T.mp_worst_case(0.99, r * (1 - 1e-9), g) >= TAU
    assert T.mp_worst_case(0.99, r * (1 + 1e-9), g) < TAU


def test_package_never_above_mp_and_close():
    rng = np.random.default_rng(1)
    k = UniformKernel(0.25, 30522)
    for _ in range(12):
        d = int(rng.integers(1, 5))
        p_a = float(rng.uniform(0.5, 0.9999))
        rho = float(rng.choice([0.0, rng.uniform(0.01, 4.0)]))
        ref = T.mp_worst_case(p_a, rho, T.mp_uniform_groups(d, 30522, 0.25))
        pkg = worst_case(p_a, k, d, rho, 1.0)
        assert pkg <= ref
        assert pkg >= ref * (1 - 1e-9) - 1e-300


# ---------------------------------------------------------------- released code

def test_released_groups_match_mp():
    c, a, g = T.released_groups_uniform(3, 30522, 0.25)
    ref = T.mp_uniform_groups(3, 30522, 0.25)
    assert np.isclose(sorted(c), sorted(float(x) for x in ref.clean), rtol=1e-12).all()


def test_released_method_close_to_mp_in_ordinary_cases():
    grp = T.released_groups_uniform(2, 30522, 0.25)
    ref_g = T.mp_uniform_groups(2, 30522, 0.25)
    for p_a, r in [(0.99, 1.0), (0.999, 3.0)]:
        ref = float(T.mp_worst_case(p_a, r, ref_g))
        assert abs(T.released_worst_case(p_a, grp, r, 1.0) - ref) < 1e-9 * ref
    ref_r = float(T.mp_radius(0.99, ref_g, TAU))
    assert abs(T.released_radius(0.99, grp, TAU, 1.0) - ref_r) < 1e-9


def test_released_floor_on_t_overstates_tiny_values():
    # t* far below the 1e-12 floor of the t bracket: the released method returns a t near the floor,
    # so its V is far larger (relatively) than the exact one, though both are astronomically small.
    grp = T.released_groups_uniform(3, 30522, 0.25)
    ref = float(T.mp_worst_case(0.1, 3.0, T.mp_uniform_groups(3, 30522, 0.25)))
    assert T.released_worst_case(0.1, grp, 3.0, 1.0) > 100 * ref


# ---------------------------------------------------------------- product regions

def _product_mass_quadrature(g: Groups, t1_log: float, c: float, rho: float):
    """Clean and adversarial masses of {ℓ ≤ t1} × {W ≤ c} by numerical integration over W."""
    keep = (g.log_ratio <= t1_log) & np.isfinite(g.log_ratio) | (g.log_ratio == -np.inf)
    C, A = g.clean[keep].sum(), g.adv[keep].sum()
    clean = C * float(mpmath.quad(mpmath.npdf, [-mpmath.inf, c]))
    adv = A * float(mpmath.quad(lambda w: mpmath.npdf(w - rho), [-mpmath.inf, c]))
    return clean, adv


def test_product_region_absorbing_example():
    g = AbsorbingKernel(0.25, mask_id=0).groups(1)
    det = T.product_region(0.9, g, 1.0)
    assert abs(det.adv_mass - 0.25 * ndtr(ndtri(0.9) - 1.0)) < 1e-12
    clean, adv = _product_mass_quadrature(g, det.log_t1, det.w_threshold, 1.0)
    assert abs(clean - 0.9) < 1e-9 and abs(adv - det.adv_mass) < 1e-9
    np_val = 0.25 * ndtr(ndtri(0.6) - 1.0)
    assert abs(worst_case(0.9, AbsorbingKernel(0.25, 0), 1, 1.0, 1.0) - np_val) < 1e-10
    rnd = T.product_region(0.9, g, 1.0, randomized=True)
    assert np_val < rnd.adv_mass <= det.adv_mass


def test_product_region_is_best_by_grid_search():
    g = UniformKernel(0.25, 6).groups(2)
    p_a, rho = 0.8, 0.8
    keys = np.unique(g.log_ratio)
    best = np.inf
    for m, key in enumerate(keys):
        inside = g.log_ratio < key
        at = g.log_ratio == key
        for lam in np.linspace(0, 1, 2001):
            C = g.clean[inside].sum() + lam * g.clean[at].sum()
            A = g.adv[inside].sum() + lam * g.adv[at].sum()
            if C >= p_a:
                best = min(best, A * ndtr(ndtri(min(p_a / C, 1)) - rho))
    got = T.product_region(p_a, g, rho, randomized=True).adv_mass
    assert got <= best + 1e-12
    assert got >= best - 1e-4


@pytest.mark.parametrize("d,p_a,rho", [(1, 0.9, 0.5), (2, 0.95, 1.0), (3, 0.99, 2.0), (2, 0.7, 0.2)])
def test_product_region_never_below_np(d, p_a, rho):
    k = UniformKernel(0.25, 50)
    g = k.groups(d)
    np_val = float(T.mp_worst_case(p_a, rho, T.mp_uniform_groups(d, 50, 0.25)))
    for randomized in (False, True):
        assert T.product_region(p_a, g, rho, randomized=randomized).adv_mass >= np_val * (1 - 1e-9)


def test_product_region_bad_input():
    g = AbsorbingKernel(0.25, 0).groups(1)
    with pytest.raises(ValueError, match="p_a"):
        T.product_region(1.5, g, 1.0)
    with pytest.raises(ValueError, match="rho"):
        T.product_region(0.9, g, -1.0)
    with pytest.raises(ValueError, match="groups"):
        T.product_region(0.9, [1, 2], 1.0)


# ---------------------------------------------------------------- Monte Carlo of h*

@pytest.mark.parametrize("eps", [0.0, 0.8])
def test_np_region_mc_matches_p_a_and_worst_case(eps):
    k = UniformKernel(0.3, 5)
    res = T.np_region_mc(k, [0, 1, 2, 3], [1, 2, 2, 3], p_a=0.8, eps=eps, sigma=1.0, n=60000, seed=3)
    assert res["d"] == 2
    assert abs(res["clean_mean"] - 0.8) < 5 * res["clean_se"]
    want = worst_case(0.8, k, 2, eps, 1.0)
    assert abs(res["adv_mean"] - want) < 5 * res["adv_se"]
    assert abs(res["p_adv_exact"] - want) < 1e-9


def test_np_region_mc_bad_input():
    k = UniformKernel(0.3, 5)
    with pytest.raises(ValueError, match="adv_tokens"):
        T.np_region_mc(k, [0, 1], [0, 1, 2], 0.8, 0.5, 1.0, 10)
    with pytest.raises(ValueError, match="sigma"):
        T.np_region_mc(k, [0, 1], [1, 1], 0.8, 0.5, 0.0, 10)
    with pytest.raises(ValueError, match="kernel"):
        T.np_region_mc(AbsorbingKernel(0.3, 4), [0, 1], [1, 1], 0.8, 0.5, 1.0, 10)


def test_mp_bad_input():
    g = T.mp_uniform_groups(1, 10, 0.25)
    with pytest.raises(ValueError, match="p_a"):
        T.mp_worst_case(-0.1, 1.0, g)
    with pytest.raises(ValueError, match="tau"):
        T.mp_radius(0.9, g, 1.5)
    with pytest.raises(ValueError, match="vocab_size"):
        T.mp_uniform_groups(1, 1, 0.25)


def test_mp_reproduces_certificate_notes_reference_values():
    # 40-digit reference values (uniform, V = 30522, β = 0.25, σ = 1, τ = 4.6e-5), computed elsewhere with
    # 40-digit arithmetic; quoted to six decimals there.
    cases = [(0.99, 1, 5.318313), (0.90, 1, 3.833292), (0.01 ** 1e-4, 3, 4.649287)]
    for p_a, d, want in cases:
        got = float(T.mp_radius(p_a, T.mp_uniform_groups(d, 30522, 0.25), TAU))
        assert abs(got - want) < 1e-6
    assert T.mp_radius(0.99, T.mp_uniform_groups(5, 30522, 0.25), TAU) == -mpmath.inf
