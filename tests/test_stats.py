"""Clopper–Pearson bounds: defining equations, closed forms, coverage."""

import numpy as np
import pytest
from scipy import stats

from hybridrs.stats import clopper_pearson_lower, clopper_pearson_upper


@pytest.mark.parametrize("k, n", [(1, 10), (7, 10), (500, 1000), (9990, 10_000), (37, 100)])
@pytest.mark.parametrize("alpha", [0.001, 0.01, 0.05])
def test_defining_equations(k, n, alpha):
    # The lower bound p_L solves P[Bin(n, p_L) ≥ k] = α; the upper p_U solves P[Bin(n, p_U) ≤ k] = α.
    lo = clopper_pearson_lower(k, n, alpha)
    hi = clopper_pearson_upper(k, n, alpha)
    assert stats.binom.sf(k - 1, n, lo) == pytest.approx(alpha, rel=1e-8)
    if k < n:
        assert stats.binom.cdf(k, n, hi) == pytest.approx(alpha, rel=1e-8)
    assert lo < k / n < hi


def test_edge_counts():
    assert clopper_pearson_lower(10_000, 10_000, 0.01) == pytest.approx(0.01 ** (1 / 10_000), rel=1e-14)
    assert clopper_pearson_lower(0, 50, 0.01) == 0.0
    assert clopper_pearson_upper(50, 50, 0.01) == 1.0
    assert clopper_pearson_upper(0, 50, 0.01) == pytest.approx(1 - 0.01 ** (1 / 50), rel=1e-12)


def test_vectorised():
    k = np.array([0, 5, 10])
    out = clopper_pearson_lower(k, 10, 0.05)
    assert out.shape == (3,)
    assert out[1] == pytest.approx(clopper_pearson_lower(5, 10, 0.05))


@pytest.mark.parametrize("p", [0.05, 0.5, 0.93, 0.999])
def test_coverage_by_simulation(p):
    rng = np.random.default_rng(0)
    n, alpha, reps = 200, 0.05, 20_000
    k = rng.binomial(n, p, size=reps)
    lo = clopper_pearson_lower(k, n, alpha)
    hi = clopper_pearson_upper(k, n, alpha)
    # exact coverage is ≥ 1 − α; allow 4 standard errors of simulation noise
    se = np.sqrt(alpha * (1 - alpha) / reps)
    assert (lo <= p).mean() >= 1 - alpha - 4 * se
    assert (hi >= p).mean() >= 1 - alpha - 4 * se


@pytest.mark.parametrize("args, name", [
    ((5, 10, 0.0), "alpha"), ((5, 10, 1.0), "alpha"), ((11, 10, 0.01), "k"),
    ((-1, 10, 0.01), "k"), ((5, 0, 0.01), "n"), ((2.5, 10, 0.01), "k"), ((5, 10, float("nan")), "alpha"),
])
def test_bad_input(args, name):
    with pytest.raises(ValueError, match=name):
        clopper_pearson_lower(*args)
