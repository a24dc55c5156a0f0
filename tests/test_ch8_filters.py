"""Chapter 8's filters: the deduplicating forward pass gives the plain forward pass's decisions,
and the kernel-noise training batches."""

import pytest
import torch

from hybridrs.data import pairs as data
from hybridrs.experiments.filters import FastFusion
from hybridrs.models import fusion as models


def small_cfg(**kw):
    base = dict(hidden=8, channels=4, fuse=16, epochs=1, batch_size=32, lr=1e-2, text_items=8, image_items=10,
                noise="kernel", cancel_share=0.5)
    base.update(kw)
    return models.FilterConfig(**base)


def test_fast_forward_matches_plain():
    torch.manual_seed(0)
    m = models.FusionFilter(small_cfg()).eval()
    ps = data.dose_pairs(8, "test", seed=0)
    toks, _ = data.with_suffix(ps.tokens[0])
    kern_toks = toks.expand(300, -1).clone()
    kern_toks[::3, -1] = 2000  # duplicates and distinct rows
    imgs = ps.images[0] + torch.randn(300, 1, 28, 28)
    fast = FastFusion(m)
    torch.testing.assert_close(fast.fast_logits(kern_toks, imgs), m.logits(kern_toks, imgs), atol=1e-5, rtol=1e-5)
    # one image broadcast along the batch (text-only smoothing): the CNN runs once
    bimg = ps.images[0].expand(300, 1, 28, 28)
    assert bimg.stride(0) == 0
    torch.testing.assert_close(fast.fast_logits(kern_toks, bimg), m.logits(kern_toks, bimg), atol=1e-5, rtol=1e-5)
    assert torch.equal(fast(kern_toks, imgs), m(kern_toks, imgs))


def test_kernel_noise_batches():
    ps = data.dose_pairs(64, "train", seed=0)
    cfg = small_cfg()
    gen = torch.Generator().manual_seed(0)
    alphabet = torch.tensor(data.usable_ids())
    y = torch.tensor(ps.labels, dtype=torch.float32)
    toks, imgs, yb = models.noisy_batch(ps.tokens, ps.images, cfg, alphabet, data.filler_id(), gen, labels=y)
    assert imgs.shape == ps.images.shape and toks.shape[0] == 64
    # cancel clauses relabel safe; nothing relabels unsafe
    assert (yb <= y).all() and (yb < y).any()
    with pytest.raises(ValueError, match="noise"):
        models.noisy_batch(ps.tokens, ps.images, small_cfg(noise="other"), alphabet, data.filler_id(), gen)
