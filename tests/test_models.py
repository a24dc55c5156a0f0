"""The fusion safety filter (training, caching, call signature) and the VLM-guard adapter."""

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


def tiny_llava():
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    vc = CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                          image_size=16, patch_size=8, projection_dim=16)
    tc = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                     num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64)
    cfg = LlavaConfig(vision_config=vc, text_config=tc, image_token_index=63, projector_hidden_act="gelu",
                      vision_feature_layer=-1, vision_feature_select_strategy="default")
    torch.manual_seed(0)
    return LlavaForConditionalGeneration(cfg).eval()


def test_vlm_adapter_logit_mass_rule():
    model = tiny_llava()
    ad = models.VLMGuardAdapter(model, None, image_token_id=63, num_image_tokens=4, prefix_ids=[1, 2],
                                suffix_ids=[3], unsafe_ids=[10, 11], safe_ids=[12, 13])
    toks = torch.randint(20, 60, (5, 6), generator=torch.Generator().manual_seed(1))
    imgs = torch.rand(5, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    margin = ad.margin(toks, imgs)
    ids = ad.input_ids(toks)
    assert ids.shape == (5, 2 + 4 + 6 + 1)
    with torch.no_grad():
        last = model(input_ids=ids, pixel_values=imgs, attention_mask=torch.ones_like(ids)).logits[:, -1]
    expect = torch.logsumexp(last[:, [10, 11]], 1) - torch.logsumexp(last[:, [12, 13]], 1)
    torch.testing.assert_close(margin, expect)
    assert torch.equal(ad(toks, imgs), (expect > 0).long())
    # Pushing the "Unsafe" logits up flips every decision to 1, pushing them down to 0.
    head = model.lm_head if hasattr(model, "lm_head") else model.get_output_embeddings()
    with torch.no_grad():
        bias = torch.zeros(64)
        bias[[10, 11]] = 100.0
        head.weight.data[[10, 11]] *= 0
        model.get_output_embeddings().register_forward_hook(lambda mod, inp, out: out + bias)
    assert ad(toks, imgs).tolist() == [1] * 5
    with pytest.raises(ValueError, match="overlap"):
        models.VLMGuardAdapter(model, None, image_token_id=63, num_image_tokens=4, unsafe_ids=[1], safe_ids=[1])
    with pytest.raises(ValueError, match="images"):
        ad(toks, torch.full((5, 3, 16, 16), float("nan")))


def test_answer_spellings_with_a_real_tokenizer():
    tok = tokens.tokenizer()
    uns, saf = models.answer_spellings(tok, "unsafe"), models.answer_spellings(tok, "safe")
    assert saf and tok.convert_ids_to_tokens(saf[0]).lower().strip("ġ▁ ") in {"safe"}
    assert not set(uns) & set(saf)
