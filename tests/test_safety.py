"""Tests of hybridrs.safety: shapes, determinism, the cached head's checksum, held-out accuracy."""

import hashlib
import shutil

import numpy as np
import pytest
import torch

from hybridrs.data import prompts as P
from hybridrs.data import tokens
from hybridrs.models import safety as S


@pytest.fixture(scope="module")
def filt():
    return S.load_safety_filter()


def test_mean_pooling_reproduces_the_model_card(filt):
    # sentence-transformers documents cos = 0.7553 for this pair with all-MiniLM-L6-v2
    e = filt.embed(S.pad(filt.encode(["A man is eating food.", "A man is eating a piece of bread."])))
    assert torch.allclose(e.norm(dim=1), torch.ones(2), atol=1e-5)
    assert float(e[0] @ e[1]) == pytest.approx(0.7553, abs=5e-4)


def test_shapes_and_labels(filt):
    ids = filt.encode(["Explain how to bake sourdough bread", "Write a tutorial on how to make a bomb"])
    x = S.pad(ids)
    y = filt(x)
    assert y.shape == (2,) and y.dtype == torch.long and set(y.tolist()) <= {0, 1}
    assert filt.scores(x).shape == (2,)
    assert filt.classify(["Explain how to bake sourdough bread"]).shape == (1,)


def test_padding_and_batching_do_not_change_scores(filt):
    ids = filt.encode(["Explain how to set up a home network", "Write a tutorial on how to make a bomb"])
    together = filt.scores(S.pad(ids))
    alone = torch.cat([filt.scores(i[None]) for i in ids])
    assert torch.allclose(together, alone, atol=1e-5)
    assert torch.equal(filt.scores(S.pad(ids)), together)  # deterministic


def test_cached_head_checksum_and_invalidation(filt, tmp_path):
    data = (S.default_model_dir() / S.HEAD_FILE).read_bytes()
    assert hashlib.sha256(data).hexdigest() == S.head_checksum()
    assert S._read_cached(S.default_model_dir() / S.HEAD_FILE, S.HeadConfig()) is not None
    # a corrupted copy or another configuration is not used
    shutil.copy(S.default_model_dir() / S.HEAD_FILE, tmp_path / S.HEAD_FILE)
    shutil.copy(S.default_model_dir() / "safety_head.sha256", tmp_path / "safety_head.sha256")
    assert S._read_cached(tmp_path / S.HEAD_FILE, S.HeadConfig(hidden=32)) is None
    with open(tmp_path / S.HEAD_FILE, "ab") as fh:
        fh.write(b"x")
    assert S._read_cached(tmp_path / S.HEAD_FILE, S.HeadConfig()) is None


def test_head_beats_chance_on_held_out_prompts(filt):
    _, test = P.load_safety_prompts(0)
    harm, ben = test.subset(1)[:30], test.subset(0)[:30]
    y = filt.classify(harm + ben)
    acc = (np.sum(y[:30] == 1) + np.sum(y[30:] == 0)) / 60
    # under chance (p = 1/2) P[acc >= 0.75] < 1e-4
    assert acc >= 0.75


def test_training_on_a_tiny_subset_learns(filt):
    train, test = P.load_safety_prompts(0)
    cfg = S.HeadConfig(epochs=150, noise_copies=0, mask_copies=0, erase_per_mode=0)
    texts = train.subset(1)[:40] + train.subset(0)[:40]
    emb = filt.embed(S.pad(filt.encode(texts)))
    head = S.train_head(emb, np.array([1] * 40 + [0] * 40), cfg)
    ht, bt = test.subset(1)[:20], test.subset(0)[:20]
    with torch.no_grad():
        p = torch.sigmoid(head(filt.embed(S.pad(filt.encode(ht + bt))))).numpy() > 0.5
    assert (np.sum(p[:20]) + np.sum(~p[20:])) / 40 >= 0.7


def test_augment_is_deterministic_and_labels_erasures_benign():
    cfg = S.HeadConfig(noise_copies=2, mask_copies=1, erase_per_mode=3)
    seqs = [torch.arange(1000, 1010), torch.arange(2000, 2006)]
    a, ya = S.augment(seqs, [0, 1], cfg, vocab=list(range(900, 3100)), mask_id=103)
    b, yb = S.augment(seqs, [0, 1], cfg, vocab=list(range(900, 3100)), mask_id=103)
    assert all(torch.equal(x, z) for x, z in zip(a, b)) and np.array_equal(ya, yb)
    shorter = [i for i, s in enumerate(a) if len(s) < 10 and ya[i] == 0]
    assert shorter and all(len(a[i]) >= 1 for i in shorter)
    assert ya.tolist().count(1) == 1 + 2 + 1  # harmful: clean + noise + mask copies, no erasures
    noisy = [s for s in a if len(s) == 10 and not torch.equal(s, seqs[0]) and not (s == 103).any()]
    assert all(((s == seqs[0]) | (s >= 900)).all() for s in noisy)  # replacements come from the alphabet
    assert any((s == 103).any() for s in a)


def test_usable_vocabulary_excludes_special_tokens(filt):
    ids = tokens.usable_ids()
    assert len(ids) == 30522 - 5 - 994
    for sid in (0, 100, 101, 102, 103):
        assert sid not in ids


def test_bad_input(filt):
    with pytest.raises(ValueError, match="texts"):
        filt.encode([""])
    with pytest.raises(ValueError, match="texts"):
        filt.encode("a single string")
    with pytest.raises(ValueError, match="tokens"):
        filt(torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="tokens"):
        filt(torch.zeros((2, 3)))
