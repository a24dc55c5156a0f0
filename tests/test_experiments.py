"""Chapter 8's experiment plumbing: the resumable cache and its keys, the protocols through the
certification pipeline (independence of noise across settings, the Bonferroni frontier), the
intervals."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from hybridrs.experiments import cache as C
from hybridrs.experiments import summary as S

import hybridrs.smoothing  # noqa: E402

needs_pipeline = pytest.mark.skipif(not hasattr(hybridrs.smoothing, "input_seed"),
                                    reason="needs the certification pipeline (hybridrs.threats, input_seed)")


class Const(torch.nn.Module):
    """Base classifier that always says 1 (unsafe)."""

    def forward(self, tokens, images):
        return torch.ones(images.shape[0] if images is not None else tokens.shape[0], dtype=torch.long)


class Coin(torch.nn.Module):
    """1 iff the first pixel of the noisy image is positive (P = 1/2 at a zero image): the count
    is a function of the noise draws only."""

    def forward(self, tokens, images):
        return (images.flatten(1)[:, 0] > 0).long()


# ------------------------------------------------------------------------------------------------
# Cache
# ------------------------------------------------------------------------------------------------


def _job(i, calls):
    def f():
        calls.append(i)
        return {"i": i, "radii": [i, i / 2, None], "name": "x"}
    return f


def test_cache_resumes(tmp_path):
    calls = []
    df = C.run_cached("demo", [(f"k{i}", _job(i, calls)) for i in range(3)], folder=tmp_path, progress=False)
    assert calls == [0, 1, 2] and list(df["i"]) == [0, 1, 2]
    assert df["radii"][2] == [2, 1.0, None]

    def boom():
        raise RuntimeError("interrupted")
    with pytest.raises(RuntimeError):
        C.run_cached("demo2", [("a", _job(5, calls)), ("b", boom)], folder=tmp_path, progress=False)
    calls.clear()
    df2 = C.run_cached("demo2", [("a", _job(5, calls)), ("b", _job(6, calls))], folder=tmp_path, progress=False)
    assert calls == [6] and list(df2["i"]) == [5, 6]


def test_cache_invalidated_by_a_changed_parameter_or_model(tmp_path):
    calls = []
    key = C.cache_key(i=0, sigma=1.0, n=100, alpha=0.01, tau=4.6e-5)
    ctx = {"model": "a" * 64}
    C.run_cached("inv", [(key, _job(0, calls))], folder=tmp_path, progress=False, context=ctx)
    C.run_cached("inv", [(key, _job(0, calls))], folder=tmp_path, progress=False, context=ctx)
    assert calls == [0]  # resumed
    # another tau, another alpha, another n: new keys
    for changed in (dict(tau=0.5), dict(alpha=0.001), dict(n=200)):
        k2 = C.cache_key(**{**dict(i=0, sigma=1.0, n=100, alpha=0.01, tau=4.6e-5), **changed})
        assert k2 != key
        C.run_cached("inv", [(k2, _job(1, calls))], folder=tmp_path, progress=False, context=ctx)
    assert calls == [0, 1, 1, 1]
    # a retrained model (another checksum): recomputed under the same key
    C.run_cached("inv", [(key, _job(2, calls))], folder=tmp_path, progress=False, context={"model": "b" * 64})
    assert calls[-1] == 2
    # a new code version: recomputed too
    old = C.CODE_VERSION
    try:
        C.CODE_VERSION = old + "-next"
        C.run_cached("inv", [(key, _job(3, calls))], folder=tmp_path, progress=False, context=ctx)
    finally:
        C.CODE_VERSION = old
    assert calls[-1] == 3


def test_cache_key_spells_every_parameter():
    assert C.cache_key(b=1, a=0.1) == "a=0.1|b=1"
    with pytest.raises(ValueError):
        C.cache_key()


# ------------------------------------------------------------------------------------------------
# Protocols through the pipeline
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def P():
    from hybridrs.experiments import protocols
    return protocols


def _certify(P, f, **kw):
    args = dict(protocol="suffix", sigma=1.0, beta=0.25, n=2000, alpha=0.01, tau=4.6e-5, familywise=False, seed=0,
                keys=("set", 0))
    args.update(kw)
    return P.certify(f, torch.tensor([2000, 2001, 2002]), torch.zeros(1, 4, 4), **args)


@needs_pipeline
def test_noise_independent_across_settings(P):
    """Same settings ⇒ same counts; any changed setting ⇒ fresh draws."""
    base = _certify(P, Coin(), protocol="l0").counts
    assert _certify(P, Coin(), protocol="l0").counts == base
    others = [_certify(P, Coin(), protocol="l0", sigma=0.5).counts, _certify(P, Coin(), protocol="l0", beta=0.5).counts,
              _certify(P, Coin(), protocol="l0", tau=0.01).counts, _certify(P, Coin(), protocol="l0", keys=("set", 1)).counts,
              _certify(P, Coin(), protocol="l0", familywise=True).counts]
    assert all(o != base for o in others)


@needs_pipeline
def test_per_d_rows_on_a_constant_classifier(P):
    """f ≡ 1: p_A = α^{1/n}; the per-d frontier is the released code's (paper notes §3 values)."""
    c = _certify(P, Const(), n=10_000)
    row = P.certificate_row(c)
    assert row["counts"][0] == 10_000
    np.testing.assert_allclose(row["radii"][1:6], [6.4695, 5.6249, 4.6494, 3.4557, 1.7504], atol=2e-3)
    assert row["d_max"] == 5 and row["draws"] == 10_000 * row["stages"]


@needs_pipeline
def test_bonferroni_frontier(P):
    """familywise=True spends α/m per estimate: smaller p_A, radii ≤ the per-estimate ones."""
    a = P.certificate_row(_certify(P, Const(), n=10_000, familywise=False))
    b = P.certificate_row(_certify(P, Const(), n=10_000, familywise=True))
    assert a["alpha_stage"] == 0.01 and b["alpha_stage"] == pytest.approx(0.01 / 8)
    assert b["p_a"][1] == pytest.approx((0.01 / 8) ** 1e-4, abs=1e-9)
    ra, rb = np.array(a["radii"][1:6], float), np.array(b["radii"][1:6], float)
    assert (rb < ra).all()


@needs_pipeline
def test_flip_protects_the_safe_class(P):
    c = _certify(P, P.Flip(Const()), n=500, tau=0.5)
    assert c.counts[0] == 0 and P.certificate_row(c)["d_max"] == -1


# ------------------------------------------------------------------------------------------------
# Intervals and estimands
# ------------------------------------------------------------------------------------------------


def test_share_ci_exact():
    m, lo, hi = S.share_ci(0, 10)
    assert m == 0 and lo == 0 and hi == pytest.approx(1 - 0.025 ** 0.1)
    m, lo, hi = S.share_ci(10, 10)
    assert hi == 1 and lo == pytest.approx(0.025 ** 0.1)
    # coverage of the exact interval ≥ 95 % at p = 0.3, n = 40
    from scipy.stats import binom
    cover = sum(binom.pmf(k, 40, 0.3) for k in range(41) if S.share_ci(k, 40)[1] <= 0.3 <= S.share_ci(k, 40)[2])
    assert cover >= 0.95


def test_mean_ci_and_estimands():
    x = np.array([0.0, 0.0, 2.0, 4.0])
    m, lo, hi = S.mean_ci(x)
    assert m == 1.5 and lo <= m <= hi and S.mean_ci(x) == (m, lo, hi)  # fixed seed
    e = S.estimands(x, x > 0)
    assert e["mean (all)"] == 1.5 and e["mean (certified)"] == 3.0 and e["certified share"] == 0.5
    r = S.ratio_ci(np.array([1.0, 2.0, 3.0]), np.array([2.0, 4.0, 6.0]))
    assert r[0] == pytest.approx(0.5) and r[1] == pytest.approx(0.5) and r[2] == pytest.approx(0.5)
