"""The Hugging Face VLM adapter on tiny random models of the three LLaVA families (no download):
prompt from the chat template, the image processor as torch ops, prefix key/value caching,
last-position logits, the logit-mass rule, and a run through HybridSmooth."""

import numpy as np
import pytest
import torch

import tiny_vlm
from hybridrs.models import vlm

FAMILIES = ["llava", "next", "onevision"]


def hf_forward(ad, tokens, images):
    """The reference: the full prompt (prefix included) and every position's logits, plainly."""
    ids = ad.input_ids(tokens, *images.shape[-2:], with_prefix=True)
    pv, sizes = ad.pixel_values(images)
    kw = {} if sizes is None else {"image_sizes": sizes}
    with torch.no_grad():
        last = ad.model(input_ids=ids, pixel_values=pv, **kw).logits[:, -1].float()
    return torch.logsumexp(last[:, ad.unsafe_ids], 1) - torch.logsumexp(last[:, ad.safe_ids], 1)


def test_answer_spellings_with_a_real_tokenizer():
    from hybridrs.data import tokens

    tok = tokens.tokenizer()
    uns, saf = vlm.answer_spellings(tok, "unsafe"), vlm.answer_spellings(tok, "safe")
    assert saf and tok.convert_ids_to_tokens(saf[0]).lower().strip("ġ▁ ") in {"safe"}
    assert not set(uns) & set(saf)
    # a word-level tokenizer reads unknown spellings ("safe.") as <unk>: never an answer id
    small = tiny_vlm.tokenizer()
    assert vlm.answer_spellings(small, "safe") == sorted({tiny_vlm.WORDS.index("safe"), tiny_vlm.WORDS.index("Safe")})


def test_prompt_layout_from_the_chat_template():
    tok = tiny_vlm.tokenizer()
    ids = {w: i for i, w in enumerate(tiny_vlm.WORDS)}
    lay = vlm.prompt_layout(tok, policy="policy is no harm")
    # LLaVA-1.5's template: system text, "USER:", image, user text, "ASSISTANT:"; BOS prepended
    assert lay.prefix == (ids["<s>"], ids["policy"], ids["is"], ids["no"], ids["harm"], ids["USER:"])
    assert lay.between == () and lay.suffix == (ids["ASSISTANT:"],) and not lay.text_first
    # text before the image in an order-keeping template
    msgs = [{"role": "user", "content": [{"type": "text", "text": vlm.TEXT_SLOT}, {"type": "image"}]}]
    lay2 = vlm.prompt_layout(tok, messages=msgs, chat_template=tiny_vlm.ORDERED_TEMPLATE, add_bos=False)
    assert lay2.text_first and lay2.prefix == (ids["<unk>"],)  # "user:" is not in the toy vocabulary
    with pytest.raises(ValueError, match="text slot"):
        vlm.prompt_layout(tok, messages=[{"role": "user", "content": [{"type": "image"}]}])


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("shape", [(3, 20, 28), (3, 40, 30), (3, 12, 10)])
def test_pixel_pipeline_matches_the_hf_processor(family, shape):
    """The torch re-implementation against the Hugging Face (Pillow) processor on a clean 8-bit
    image.  Pillow rounds to 8 bits after each of its two resampling passes, so values may differ
    by about one grey level: tolerance 1.2/255 in pixel units, i.e. 1.2/(255·std) normalised."""
    proc = tiny_vlm.processor(family)
    pipe = vlm.PixelPipeline.from_image_processor(proc)
    img8 = torch.randint(0, 256, shape, generator=torch.Generator().manual_seed(sum(shape)), dtype=torch.uint8)
    ref = proc(images=[img8.numpy().transpose(1, 2, 0)], return_tensors="pt")
    ours, sizes = pipe(img8[None].float() / 255)
    assert ours.shape == ref["pixel_values"].shape
    assert ours.ndim == (4 if family == "llava" else 5)
    if family == "llava":
        assert sizes is None
    else:
        assert torch.equal(sizes, ref["image_sizes"]) and sizes.device.type == "cpu"
    err = (ours - ref["pixel_values"]).abs()
    assert err.max() <= 1.2 / 255 / min(pipe.std)
    assert err.mean() <= 0.5 / 255 / min(pipe.std)


def test_resample_matrix_rows_are_weights():
    for n_in, n_out in [(10, 16), (30, 16), (16, 16), (7, 3)]:
        w = vlm.resample_matrix(n_in, n_out)
        np.testing.assert_allclose(w.sum(1), 1.0, atol=1e-12)
    # a constant image stays constant; a ramp stays a ramp inside when enlarged
    np.testing.assert_allclose(vlm.resample_matrix(5, 9) @ np.full(5, 0.3), 0.3)


@pytest.mark.parametrize("family", FAMILIES)
def test_adapter_matches_a_plain_forward_cached_or_not(family):
    ad = tiny_vlm.adapter(family)
    plain = tiny_vlm.adapter(family, cache_prefix=False)
    toks = tiny_vlm.user_tokens(5)
    imgs = torch.rand(5, 3, 20, 28, generator=torch.Generator().manual_seed(2))
    expect = hf_forward(ad, toks, imgs)
    with torch.no_grad():
        cached, uncached = ad.margin(toks, imgs), plain.margin(toks, imgs)
    torch.testing.assert_close(cached, expect, atol=1e-4, rtol=0)
    torch.testing.assert_close(uncached, expect, atol=1e-5, rtol=0)
    assert torch.equal(ad(toks, imgs), (cached > 0).long())
    n_img = ad.num_image_tokens(20, 28)
    ids = ad.input_ids(toks, 20, 28)
    assert ids.shape == (5, len(ad.layout.prefix) + n_img + 6 + len(ad.layout.suffix))
    assert int((ids == ad.image_token_id).sum()) == 5 * n_img
    # the prefix's keys and values were computed once, for one row, and no call changes them
    (k, _), *_ = ad._prefix_kv(toks.device)
    assert k.shape[0] == 1 and k.shape[-2] == len(ad.layout.prefix)
    with torch.no_grad():
        torch.testing.assert_close(ad.margin(toks[:2], imgs[:2]), cached[:2])
    assert ad._prefix_kv(toks.device)[0][0] is k and k.shape[-2] == len(ad.layout.prefix)


def test_noise_is_added_in_pixel_units():
    """The adapter sees [0, 1] pixels: the same noisy image gives the same answer as feeding the
    processor's own normalisation of it, and clamping keeps the processor's range."""
    ad = tiny_vlm.adapter("llava")
    toks = tiny_vlm.user_tokens(3)
    img = torch.rand(1, 3, 16, 16).expand(3, -1, -1, -1)
    noisy = img + 0.5 * torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    pv, _ = ad.pixel_values(noisy)
    mean = torch.tensor(ad.pipeline.mean).view(1, 3, 1, 1)
    std = torch.tensor(ad.pipeline.std).view(1, 3, 1, 1)
    torch.testing.assert_close(pv, (noisy.clamp(0, 1) - mean) / std)
    raw = tiny_vlm.adapter("llava", clamp=False)
    torch.testing.assert_close(raw.pixel_values(noisy)[0], (noisy - mean) / std)
    assert not torch.equal(ad.margin(toks, noisy), raw.margin(toks, noisy))


def test_logit_mass_rule_and_checks():
    ad = tiny_vlm.adapter("llava")
    toks = tiny_vlm.user_tokens(4)
    imgs = torch.rand(4, 3, 16, 16)
    bias = torch.zeros(tiny_vlm.V)
    bias[ad.unsafe_ids] = 100.0
    hook = ad.model.get_output_embeddings().register_forward_hook(lambda mod, inp, out: out + bias)
    assert ad(toks, imgs).tolist() == [1] * 4
    hook.remove()
    hook = ad.model.get_output_embeddings().register_forward_hook(lambda mod, inp, out: out - bias)
    assert ad(toks, imgs).tolist() == [0] * 4
    hook.remove()
    m, proc = tiny_vlm.model("llava")
    with pytest.raises(ValueError, match="overlap"):
        vlm.VLMGuardAdapter(m, proc, ad.layout, unsafe_ids=[8], safe_ids=[8])
    with pytest.raises(ValueError, match="tokenizer"):
        vlm.VLMGuardAdapter(m, proc, ad.layout)
    with pytest.raises(ValueError, match="NaN"):
        ad(toks, torch.full((4, 3, 16, 16), float("nan")))
    with pytest.raises(ValueError, match="tokens"):
        ad(torch.zeros(4, 0, dtype=torch.long), imgs)
    assert ad.encode("w1 w2") == [tiny_vlm.FIRST_WORD + 1, tiny_vlm.FIRST_WORD + 2]
    specials = {tiny_vlm.WORDS.index(w) for w in ("<pad>", "<unk>", "<s>", "</s>", "<image>")}
    assert ad.alphabet() == [i for i in range(tiny_vlm.V) if i not in specials]


def test_margin_is_differentiable_in_the_pixels():
    ad = tiny_vlm.adapter("next")
    with torch.inference_mode():  # caches built here must still serve a forward with gradients
        ad(tiny_vlm.user_tokens(2), torch.rand(2, 3, 20, 28))
    imgs = torch.rand(2, 3, 20, 28, requires_grad=True)
    ad.margin(tiny_vlm.user_tokens(2), imgs).sum().backward()
    assert imgs.grad is not None and imgs.grad.abs().sum() > 0


@pytest.mark.parametrize("family", ["llava", "next"])
def test_through_hybrid_smooth(family):
    from hybridrs import HybridSmooth, UniformKernel

    ad = tiny_vlm.adapter(family)
    kernel = UniformKernel(0.25, alphabet=list(range(tiny_vlm.FIRST_WORD, tiny_vlm.V)))
    sm = HybridSmooth(ad, sigma=0.25, kernel=kernel, batch_size=8, progress=False)
    toks, img = tiny_vlm.user_tokens(1)[0], torch.rand(3, 20, 28)
    k1 = sm.count(toks, img, 20, seed=3)
    assert 0 <= k1 <= 20 and k1 == sm.count(toks, img, 20, seed=3)
    assert vlm.max_batch_size(ad, toks, img, start=8) == 8  # on a CPU: the start value


def test_gpu_benchmark_tiny_writes_its_table(tmp_path, monkeypatch):
    """benchmarks/vlm_gpu.py --tiny (a small model on the CPU) runs every method and writes the
    CSV the book's scale page includes."""
    import csv
    import importlib.util
    from pathlib import Path

    monkeypatch.setenv("TRANSFORMERS_DISABLE_TORCH_CHECK", "1")
    path = Path(__file__).resolve().parent.parent / "benchmarks" / "vlm_gpu.py"
    spec = importlib.util.spec_from_file_location("vlm_gpu", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    threads = torch.get_num_threads()
    out = tmp_path / "t.csv"
    try:
        bench.main(["--tiny", "--out", str(out), "--draws", "8", "--batch", "8", "--policy-tokens", "16",
                    "--reps", "1", "--prompts", "short,policy-recomputed"])
    finally:
        torch.set_num_threads(threads)
    rows = list(csv.DictReader(out.open()))
    assert list(rows[0]) == bench.COLUMNS
    assert len(rows) == 10 and {r["method"] for r in rows} == {"image-only", "l0", "suffix-per-d", "suffix-shared",
                                                               "sequential"}
    per_d = [r for r in rows if r["method"] == "suffix-per-d"][0]
    assert int(per_d["draws"]) == 8 * 8 and per_d["extrapolated"] == "True"
    assert all(float(r["samples_per_s"]) > 0 and "tiny" in r["device"] for r in rows)
    # the FLOP count of a sample is the same model work whether or not a prefix is cached
    cfg = bench.build(True, torch.device("cpu"))[0].config
    full = bench.forward_flops(cfg, 1, 100, 0)
    assert bench.forward_flops(cfg, 1, 60, 40) < full


@pytest.mark.parametrize("family", ["llava", "onevision"])
def test_bf16_model(family):
    """The GPU path's dtype: pixel values are cast to the model's bf16, margins come back in
    float32 and close to the float32 model's (bf16 keeps about 3 significant digits)."""
    ad = tiny_vlm.adapter(family)
    toks, imgs = tiny_vlm.user_tokens(4), torch.rand(4, 3, 20, 28)
    with torch.no_grad():
        want = ad.margin(toks, imgs)
        ad.model.to(torch.bfloat16)
        got = ad.margin(toks, imgs)
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    assert ad.pixel_values(imgs)[0].dtype == torch.bfloat16
    torch.testing.assert_close(got, want, atol=0.05, rtol=0)
