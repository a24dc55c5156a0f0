"""Tests of the offline interaction-only data sets (hybridrs.data.pairs)."""

import numpy as np
import pytest
import torch

from hybridrs.data import pairs as data
from hybridrs.data import tokens


@pytest.fixture(scope="module")
def main_pairs():
    return data.dose_pairs(400, "train", seed=3)


def test_dose_label_rule():
    assert data.dose_label("excess", 3, 4) == 1 and data.dose_label("excess", 3, 3) == 0
    assert data.dose_label("deficit", 3, 3) == 1 and data.dose_label("deficit", 3, 4) == 0
    with pytest.raises(ValueError, match="direction"):
        data.dose_label("more", 3, 4)


def test_labels_follow_the_rule(main_pairs):
    for ti, k, y in zip(main_pairs.text_item, main_pairs.image_item, main_pairs.labels):
        direction, t, _ = data.DOSE_TEMPLATES[ti]
        assert y == data.dose_label(direction, t, k)


def test_every_template_and_digit_occurs_with_both_labels(main_pairs):
    for items, n_items in ((main_pairs.text_item, len(data.DOSE_TEMPLATES)), (main_pairs.image_item, 10)):
        m = data.item_marginals(items, main_pairs.labels)
        assert len(m) == n_items
        assert all(0 < p < 1 for p in m.values())
    # Templates are exactly balanced (stratified); digits are balanced in expectation.
    assert all(p == 0.5 for p in data.item_marginals(main_pairs.text_item, main_pairs.labels).values())


def test_interaction_only_in_expectation():
    """Exact P(unsafe | digit) under the sampling law is 1/2 for every digit class."""
    T = len(data.DOSE_TEMPLATES)
    p_unsafe = np.zeros(10)
    p_digit = np.zeros(10)
    for direction, t, _ in data.DOSE_TEMPLATES:
        for lab in (0, 1):
            digits = [k for k in range(10) if data.dose_label(direction, t, k) == lab]
            for k in digits:
                w = 1 / T / 2 / len(digits)
                p_digit[k] += w
                p_unsafe[k] += w * lab
    np.testing.assert_allclose(p_unsafe / p_digit, 0.5, atol=1e-15)


def test_deterministic_and_seeded():
    a, b = data.dose_pairs(40, "test", seed=1), data.dose_pairs(40, "test", seed=1)
    c = data.dose_pairs(40, "test", seed=2)
    assert a.texts == b.texts and torch.equal(a.images, b.images) and (a.labels == b.labels).all()
    assert a.texts != c.texts or not torch.equal(a.images, c.images)


def test_images_are_real_mnist_in_unit_range(main_pairs):
    assert main_pairs.images.shape == (400, 1, 28, 28)
    assert main_pairs.images.min() >= 0 and main_pairs.images.max() <= 1


def test_tokens_are_in_the_usable_alphabet(main_pairs):
    usable = set(tokens.usable_ids())
    assert 20000 < len(usable) < 30522
    for t in main_pairs.tokens[:50]:
        assert set(t.tolist()) <= usable


def test_suffix_padding():
    s = tokens.encode("is it safe?")
    padded, mask = tokens.with_suffix(s, 8)
    assert padded.numel() == s.numel() + 8 and mask.sum() == 8 and not mask[: s.numel()].any()
    assert (padded[s.numel():] == tokens.filler_id()).all()


def test_bad_input_raises():
    with pytest.raises(ValueError, match="text"):
        tokens.encode("   ")
    with pytest.raises(ValueError, match="split"):
        data.dose_pairs(10, "valid")
    with pytest.raises(ValueError, match="phrase"):
        data.render_phrase("")


def test_typographic_set():
    ps = data.typographic_pairs(60, "test", seed=0)
    assert ps.images.shape == (60, *data.TYPO_SHAPE)
    assert abs(ps.labels.mean() - 0.5) < 0.05
    P = len(data.PHRASES)
    harmful = ps.image_item < P
    executing = ps.text_item < len(data.EXEC_REQUESTS)
    assert (ps.labels == (harmful & executing)).all()
    assert all(data.advbench_phrases_found())
    a = data.typographic_pairs(10, "test", seed=0)
    assert torch.equal(data.typographic_pairs(10, "test", seed=0).images, a.images)


def test_rendering_depends_on_the_phrase():
    x = data.render_phrase("make a bomb", np.random.default_rng(0))
    y = data.render_phrase("make a cake", np.random.default_rng(0))
    assert x.shape == (1, 28, 112) and (x - y).abs().sum() > 1


def test_unimodal_oracle_is_at_chance_on_main():
    tr = data.dose_pairs(800, "train", seed=0)
    te = data.dose_pairs(400, "test", seed=0)
    acc = data.unimodal_bayes_accuracy(tr.image_item, tr.labels, te.image_item, te.labels)
    assert abs(acc - 0.5) < 0.1
    acc_t = data.unimodal_bayes_accuracy(tr.text_item, tr.labels, te.text_item, te.labels)
    assert abs(acc_t - 0.5) < 0.1
