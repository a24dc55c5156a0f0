"""The fusion safety filter (training, caching, call signature); the VLM adapter is tested in test_vlm."""

import pytest
import torch

from hybridrs.data import pairs as data
from hybridrs.data import tokens
from hybridrs.models import fusion as models


def small_cfg(**kw):
    base = dict(hidden=8, channels=4, fuse=16, epochs=3, batch_size=32, lr=1e-2, text_items=8, image_items=10)
    base.update(kw)
    return models.FilterConfig(**base)


@pytest.fixture(scope="module")
def pairs():
    return data.dose_pairs(96, "train", seed=5)


def test_training_decreases_loss_and_is_deterministic(pairs):
    torch.set_num_threads(2)
    m1, l1 = models.train_filter(pairs, small_cfg())
    m2, l2 = models.train_filter(pairs, small_cfg())
    assert l1 == l2
    assert l1[-1] < l1[0]
    for (k, a), (_, b) in zip(m1.state_dict().items(), m2.state_dict().items()):
        assert torch.equal(a, b), k


def test_call_signature_and_input_checks(pairs):
    m = models.FusionFilter(small_cfg())
    toks = tokens.pad(pairs.tokens[:5])
    out = m(toks, pairs.images[:5])
    assert out.shape == (5,) and set(out.tolist()) <= {0, 1}
    with pytest.raises(ValueError, match="images"):
        m(toks, torch.zeros(5, 1, 32, 32))
    with pytest.raises(ValueError, match="images"):
        m(toks, torch.full((5, 1, 28, 28), float("nan")))
    with pytest.raises(ValueError, match="tokens"):
        m(torch.zeros(5, 3), pairs.images[:5])


def test_cache_roundtrip_and_checksum(tmp_path, pairs):
    cfg = small_cfg(epochs=1)
    a, info = models.load_or_train("t", lambda: pairs, cfg, model_dir=tmp_path)
    assert info["retrained"]
    b, info2 = models.load_or_train("t", lambda: pairs, cfg, model_dir=tmp_path)
    assert not info2["retrained"] and info2["sha256"] == info["sha256"]
    toks = tokens.pad(pairs.tokens[:20])
    assert torch.equal(a.logits(toks, pairs.images[:20]), b.logits(toks, pairs.images[:20]))
    # A corrupted file is detected and retrained.
    (tmp_path / "t.pt").write_bytes(b"garbage")
    _, info3 = models.load_or_train("t", lambda: pairs, cfg, model_dir=tmp_path)
    assert info3["retrained"]
