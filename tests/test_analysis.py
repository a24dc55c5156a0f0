"""Tests of hybridrs.analysis: certified-accuracy curves and their plot."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hybridrs.analysis import certified_accuracy, plot_certified_accuracy


def _brute(radii, correct, eps_grid):
    out = []
    for e in eps_grid:
        hits = 0
        for r, c in zip(radii, correct):
            if c and r >= 0 and r >= e:
                hits += 1
        out.append(hits / len(radii))
    return np.array(out)


def test_small_example_by_hand():
    radii = [0.3, 1.2, -np.inf, 0.0, 0.7]
    correct = [True, True, True, True, False]
    got = certified_accuracy(radii, correct, [0.0, 0.3, 0.5, 1.2, 2.0])
    # ε = 0: inputs 0, 1, 3 (2 abstains, 4 is wrong); ε = 0.3: 0, 1; 0.5: 1; 1.2: 1 (≥ is inclusive).
    np.testing.assert_allclose(got, [3 / 5, 2 / 5, 1 / 5, 1 / 5, 0.0])


def test_abstention_counts_as_wrong_even_if_flagged_correct():
    # An abstention is stored with radius −inf (smoothing.py) or a negative number; it must never
    # count, whatever its `correct` flag says.
    got = certified_accuracy([-np.inf, -1.0, 0.5], [True, True, True], [0.0])
    assert got[0] == pytest.approx(1 / 3)


def test_eps_grid_order_is_respected():
    radii, correct = [0.2, 0.8], [True, True]
    np.testing.assert_allclose(certified_accuracy(radii, correct, [1.0, 0.0, 0.5]), [0.0, 1.0, 0.5])


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.one_of(st.floats(-2, 5), st.just(-np.inf)), st.booleans()), min_size=1, max_size=40),
    st.lists(st.floats(0, 5), min_size=1, max_size=10),
)
def test_matches_brute_force_and_is_monotone(pairs, eps):
    radii = [p[0] for p in pairs]
    correct = [p[1] for p in pairs]
    got = certified_accuracy(radii, correct, eps)
    np.testing.assert_allclose(got, _brute(radii, correct, eps))
    order = np.argsort(eps, kind="stable")
    assert np.all(np.diff(got[order]) <= 1e-15)


def test_accepts_zero_one_correct():
    np.testing.assert_allclose(certified_accuracy([1.0, 1.0], np.array([1, 0]), [0.5]), [0.5])


def test_nan_and_negative_radii_never_count():
    """NaN (a stage not run), −inf and negative radii are "not certified", even at ε = 0; a radius
    of exactly 0 counts at ε = 0 only; correct=None means every input is counted as correct."""
    radii = [np.nan, -np.inf, -0.5, 0.0, 0.7]
    assert certified_accuracy(radii, None, 0.0) == pytest.approx(0.4)
    np.testing.assert_allclose(certified_accuracy(radii, None, [0.0, 0.1, 0.7, 0.8]), [0.4, 0.2, 0.2, 0.0])
    assert isinstance(certified_accuracy(radii, None, 0.5), float)


@pytest.mark.parametrize(
    "radii, correct, eps",
    [
        ([0.1, 0.2], [True], [0.0]),  # shapes differ
        ([0.1], [True], [-0.1]),  # negative ε
        ([0.1], [2], [0.0]),  # not boolean
        ([], [], [0.0]),  # no inputs
        ([[0.1]], [[True]], [0.0]),  # 2-D
        ([0.1], [True], [np.nan]),  # NaN ε
    ],
)
def test_bad_input_raises(radii, correct, eps):
    with pytest.raises(ValueError):
        certified_accuracy(radii, correct, eps)


def test_plot_draws_one_step_line_per_curve():
    eps = np.linspace(0, 2, 9)
    curves = {"σ = 0.25": np.linspace(0.9, 0.0, 9), "σ = 0.5": np.linspace(0.8, 0.1, 9)}
    fig, ax = plt.subplots()
    try:
        out = plot_certified_accuracy(ax, eps, curves, title="t")
        assert out is ax
        lines = ax.get_lines()
        assert len(lines) == 2
        assert [ln.get_label() for ln in lines] == list(curves)
        assert lines[0].get_drawstyle() == "steps-post"
        np.testing.assert_allclose(lines[1].get_ydata(), curves["σ = 0.5"])
        assert "radius" in ax.get_xlabel() and "accuracy" in ax.get_ylabel()
        assert ax.get_legend() is not None
    finally:
        plt.close(fig)


def test_plot_rejects_mismatched_or_empty_curves():
    fig, ax = plt.subplots()
    try:
        with pytest.raises(ValueError):
            plot_certified_accuracy(ax, [0, 1, 2], {"a": [1.0, 0.5]})
        with pytest.raises(ValueError):
            plot_certified_accuracy(ax, [0, 1], {})
    finally:
        plt.close(fig)
