"""Experiment loops: results cached per input and resumed."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from hybridrs.experiments import protocols as ex
from hybridrs.kernels import UniformKernel


class Const:
    """Base classifier that always says 1 (unsafe); counts its calls."""

    def __init__(self):
        self.calls = 0

    def __call__(self, tokens, images):
        self.calls += 1
        return torch.ones(images.shape[0], dtype=torch.long)


def test_cache_resumes(tmp_path):
    calls = []

    def job(i):
        def f():
            calls.append(i)
            return {"i": i, "radii": [i, i / 2], "name": "x"}
        return f

    df = ex.run_cached("demo", [(f"k{i}", job(i)) for i in range(3)], folder=tmp_path, progress=False)
    assert calls == [0, 1, 2] and list(df["i"]) == [0, 1, 2]
    assert df["radii"][2] == [2, 1.0]
    # Interrupted run: a job that fails after two rows keeps those rows on disk.
    def boom():
        raise RuntimeError("interrupted")
    with pytest.raises(RuntimeError):
        ex.run_cached("demo2", [("a", job(5)), ("b", boom)], folder=tmp_path, progress=False)
    calls.clear()
    df2 = ex.run_cached("demo2", [("a", job(5)), ("b", job(6))], folder=tmp_path, progress=False)
    assert calls == [6] and list(df2["i"]) == [5, 6]
    df3 = ex.run_cached("demo", [(f"k{i}", job(i)) for i in range(4)], folder=tmp_path, progress=False)
    assert calls == [6, 3] and len(df3) == 4


def test_suffix_per_d_on_a_constant_classifier():
    """f ≡ 1: p_A = α^{1/n}; text-only d_max and hybrid radii follow from the certificate alone."""
    base = Const()
    kern = UniformKernel(0.25, vocab_size=30000)
    toks = torch.arange(1, 13)
    img = torch.zeros(1, 4, 4)
    out = ex.suffix_per_d(base, toks, img, kernel=kern, sigma=1.0, n=10_000, alpha=0.01, tau=4.6e-5, seed=0)
    assert out["counts"][0] == 10_000
    assert out["p_a"][0] == pytest.approx(0.01 ** 1e-4, abs=1e-9)
    # independent float64 reference: r*(d), β = .25, V = 30 000, σ = 1: 6.4695, 5.6249, 4.6494, 3.4557, 1.7504, 0
    np.testing.assert_allclose(out["radii"][:5], [6.4695, 5.6249, 4.6494, 3.4557, 1.7504], atol=2e-4)
    assert out["d_max"] == 5 and len(out["counts"]) == 6
    txt = ex.suffix_per_d(base, toks, img, kernel=kern, sigma=None, n=10_000, alpha=0.01, tau=4.6e-5, seed=0)
    assert txt["d_max"] == 5
    img_only = ex.image_only(base, toks, img, sigma=0.5, n=10_000, alpha=0.01, tau=4.6e-5, seed=0)
    assert img_only["radius"] == pytest.approx(3.6122, abs=1e-4)


def test_one_shot_matches_frontier():
    base = Const()
    kern = UniformKernel(0.25, vocab_size=30000)
    out = ex.one_shot(base, torch.arange(1, 13), torch.zeros(1, 4, 4), kernel=kern, sigma=0.5, n=10_000,
                      alpha=0.01, tau=4.6e-5, seed=0, mask=None, d_max=8)
    np.testing.assert_allclose(out["radii"][:6], [3.2348, 2.8124, 2.3247, 1.7279, 0.8752, 0.0], atol=2e-4)
    assert out["d_max"] == 5


def test_certified_accuracy_curve():
    r = np.array([0.0, 0.5, 1.0, -math.inf, np.nan])
    np.testing.assert_allclose(ex.certified_accuracy_curve(r, np.array([0.0, 0.5, 1.0, 2.0])), [0.4, 0.4, 0.2, 0.0])
