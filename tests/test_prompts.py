"""Tests of hybridrs.prompts: counts, determinism, disjoint splits, no duplicates, bad input."""

import numpy as np
import pytest

from hybridrs.data import prompts as P


def test_advbench_has_520_distinct_behaviours():
    h = P.harmful_prompts()
    assert len(h) == 520
    assert len(set(h)) == 520
    assert all(isinstance(t, str) and t for t in h)


def test_benign_generator_size_and_determinism():
    a, b = P.benign_prompts(0), P.benign_prompts(0)
    assert a == b
    assert len(a) == len(P.TASKS) * 3 + len(P.ARTEFACTS) * 2 >= 520
    texts = [t for t, _ in a]
    assert len(set(texts)) == len(texts)
    assert P.benign_prompts(1) != a  # the seed changes the template choice


def test_benign_prompts_use_the_templates_and_overlap_words():
    texts = " ".join(t for t, _ in P.benign_prompts(0)).lower()
    for word in ("kill", "hack", "exploit", "virus", "bomb", "steal"):
        assert word in texts


@pytest.mark.parametrize("seed", [0, 3])
def test_split_is_balanced_disjoint_and_deterministic(seed):
    tr, te = P.load_safety_prompts(seed)
    tr2, te2 = P.load_safety_prompts(seed)
    assert tr.texts == tr2.texts and te.texts == te2.texts
    assert len(tr) + len(te) == 1040
    assert int(tr.labels.sum()) == int((tr.labels == 0).sum()) == 416
    assert int(te.labels.sum()) == int((te.labels == 0).sum()) == 104
    assert not set(tr.texts) & set(te.texts)
    assert len(set(tr.texts)) == len(tr) and len(set(te.texts)) == len(te)
    # labels agree with the sources
    harm = set(P.harmful_prompts())
    for s in (tr, te):
        assert all((t in harm) == (y == 1) for t, y in zip(s.texts, s.labels))


def test_benign_split_keeps_tasks_on_one_side():
    groups = dict(P.benign_prompts(0))
    tr, te = P.load_safety_prompts(0)
    g_tr = {groups[t] for t in tr.subset(0)}
    g_te = {groups[t] for t in te.subset(0)}
    assert not g_tr & g_te


def test_data_card_reports_sizes():
    card = P.data_card(0)
    assert "520" in card and "416 harmful" in card and "MIT" in card


def test_bad_input():
    with pytest.raises(ValueError, match="seed"):
        P.load_safety_prompts(-1)
    with pytest.raises(ValueError, match="test_fraction"):
        P.load_safety_prompts(0, test_fraction=1.5)
    with pytest.raises(ValueError, match="per_task"):
        P.benign_prompts(0, per_task=0)
