"""Tests of hybridrs.erase: candidate counts against enumeration, the certificate by brute force."""

import itertools
import math

import numpy as np
import pytest
import torch

from hybridrs.baselines import erase as E


@pytest.mark.parametrize("L", [1, 2, 5, 7])
@pytest.mark.parametrize("d", [0, 1, 2, 3, 8])
def test_counts_match_enumeration(L, d):
    for mode in ("suffix", "infusion"):
        pats = E.erasure_patterns(mode, L, d)
        assert len(pats) == len(set(pats)) == E.num_candidates(mode, L, d)
    for k in (1, 2, 3):
        pats = E.erasure_patterns("insertion", L, d, num_blocks=k)
        assert len(pats) == len(set(pats)) == E.num_candidates("insertion", L, d, num_blocks=k)
        assert all(len(p) < L for p in pats)


def test_closed_forms():
    L, d = 20, 3
    assert E.num_candidates("suffix", L, d) == d + 1
    assert E.num_candidates("infusion", L, d) == 1 + 20 + 190 + 1140
    assert E.num_candidates("insertion", L, d) == 1 + 20 + 19 + 18
    # infusion explodes: all proper subsets at d >= L - 1
    assert E.num_candidates("infusion", 10, 20) == 2 ** 10 - 1


def test_insertion_patterns_are_unions_of_short_blocks():
    # k = 2, d = 2 on L = 6: {0, 1, 3, 4} is two blocks of 2; {0, 1, 2} needs two blocks (2 + 1).
    pats = set(E.erasure_patterns("insertion", 6, 2, num_blocks=2))
    assert (0, 1, 3, 4) in pats and (0, 1, 2) in pats and (0, 1, 2, 3) in pats
    assert (0, 2, 4) not in pats and (0, 1, 2, 3, 4) not in pats


def _toy_filter(bad=frozenset({7})):
    """Flags a row iff it contains a token of ``bad`` (a keyword filter)."""
    bad_t = torch.tensor(sorted(bad))

    def f(tokens, images=None):
        return torch.isin(tokens, bad_t).any(dim=1).long()

    return f


def _counting_filter(base):
    calls = {"n": 0}

    def f(tokens, images=None):
        calls["n"] += tokens.shape[0]
        return base(tokens, images)

    return f, calls


def _pattern_filter():
    """Flags exactly the sequences whose first three tokens are (7, 1, 2): order matters, so an
    inserted token in the middle hides the pattern from the filter."""

    def f(tokens, images=None):
        if tokens.shape[1] < 3:
            return torch.zeros(tokens.shape[0], dtype=torch.long)
        return (tokens[:, :3] == torch.tensor([7, 1, 2])).all(dim=1).long()

    return f


def _ends_filter():
    """Flags exactly the sequences that end with (7, 1, 2): fooled by appended or inserted tokens."""

    def f(tokens, images=None):
        if tokens.shape[1] < 3:
            return torch.zeros(tokens.shape[0], dtype=torch.long)
        return (tokens[:, -3:] == torch.tensor([7, 1, 2])).all(dim=1).long()

    return f


@pytest.mark.parametrize("mode,d,k", [("suffix", 2, 1), ("insertion", 2, 1), ("insertion", 1, 2), ("infusion", 2, 1)])
def test_certificate_by_brute_force(mode, d, k):
    """Every adversarial extension of a flagged prompt within the budget is flagged."""
    f = _ends_filter()
    prompt = [7, 1, 2]
    assert f(torch.tensor([prompt])).item() == 1
    alphabet = [0, 3]
    advs = []
    L0 = len(prompt)
    for n_add in range(1, d * k + 1):
        for toks in itertools.product(alphabet, repeat=n_add):
            for pos in itertools.combinations(range(L0 + n_add), n_add):
                adv = [None] * (L0 + n_add)
                for p, t in zip(pos, toks):
                    adv[p] = t
                it = iter(prompt)
                adv = [next(it) if a is None else a for a in adv]
                if mode == "suffix" and pos != tuple(range(L0, L0 + n_add)):
                    continue
                if mode == "infusion" and n_add > d:
                    continue
                if mode == "insertion":
                    runs = []
                    for p in pos:
                        if runs and p == runs[-1][-1] + 1:
                            runs[-1].append(p)
                        else:
                            runs.append([p])
                    if sum(math.ceil(len(r) / d) for r in runs) > k:
                        continue
                advs.append(adv)
    assert advs
    res = E.erase_and_check(f, advs, mode, d, num_blocks=k)
    assert res.harmful.all()
    # the attack does defeat the bare filter on some of them
    assert (E.evaluate_sequences(f, [tuple(a) for a in advs]) == 0).any()


def test_out_of_budget_attack_can_escape():
    f = _pattern_filter()
    adv = [7, 0, 0, 1, 2]  # two inserted tokens in the middle
    assert not E.erase_and_check(f, [adv], "suffix", 5).harmful[0]
    assert not E.erase_and_check(f, [adv], "infusion", 1).harmful[0]
    assert E.erase_and_check(f, [adv], "infusion", 2).harmful[0]
    assert E.erase_and_check(f, [adv], "insertion", 2).harmful[0]


def test_calls_count_distinct_candidates():
    base = _toy_filter()
    f, calls = _counting_filter(base)
    prompts = [[1, 2, 3, 4, 5], [4, 4, 4, 4]]
    res = E.erase_and_check(f, prompts, "infusion", 2)
    assert res.calls[0] == E.num_candidates("infusion", 5, 2)
    assert res.calls[1] == 3  # (4,4,4,4), (4,4,4), (4,4): repeated tokens collapse
    assert calls["n"] == res.calls.sum()
    assert not res.harmful.any()


def test_curve_matches_single_budgets():
    f = _pattern_filter()
    rng = np.random.default_rng(0)
    prompts = [list(rng.integers(0, 9, size=rng.integers(2, 7))) for _ in range(40)]
    prompts += [[7, 1, 2, 5], [7, 3, 1, 2], [7, 1, 0, 0, 2]]
    budgets = [0, 1, 2, 3]
    for mode, k in (("suffix", 1), ("insertion", 1), ("insertion", 2), ("infusion", 1)):
        curve = E.erase_and_check_curve(f, prompts, mode, budgets, num_blocks=k)
        for j, d in enumerate(budgets):
            np.testing.assert_array_equal(curve[:, j], E.erase_and_check(f, prompts, mode, d, num_blocks=k).harmful)
        assert (np.diff(curve.astype(int), axis=1) >= 0).all()


def test_accepts_a_2d_tensor():
    f = _toy_filter()
    x = torch.tensor([[1, 2, 7], [1, 2, 3]])
    res = E.erase_and_check(f, x, "suffix", 1)
    assert res.harmful.tolist() == [True, False]


def test_bad_input():
    f = _toy_filter()
    with pytest.raises(ValueError, match="mode"):
        E.erase_and_check(f, [[1, 2]], "prefix", 1)
    with pytest.raises(ValueError, match="budget"):
        E.erase_and_check(f, [[1, 2]], "suffix", -1)
    with pytest.raises(ValueError, match="prompts"):
        E.erase_and_check(f, [[]], "suffix", 1)
    with pytest.raises(ValueError, match="prompts"):
        E.erase_and_check(f, [], "suffix", 1)
    with pytest.raises(ValueError, match="num_blocks"):
        E.erase_and_check(f, [[1, 2]], "insertion", 1, num_blocks=0)
    with pytest.raises(ValueError, match="length"):
        E.num_candidates("suffix", 0, 1)
    with pytest.raises(ValueError, match="mode"):
        E.num_candidates("unknown", 3, 1)
