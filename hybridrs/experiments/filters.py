"""Chapter 8's base classifiers and kernels, built from a configuration.

:func:`chapter_filter` returns the trained fusion filter of a set (``"MAIN"`` or ``"EXTERNAL"``),
trained once with :func:`hybridrs.models.fusion.load_or_train` (weights and SHA-256 under
``data/models/``) and wrapped in :class:`FastFusion`; :func:`chapter_kernel` the text kernel.  A
command-line run that rebuilds a chapter-8 row calls these two with the chapter's settings.
"""

from __future__ import annotations

from functools import lru_cache

import torch

#: Training settings of the chapter's filters (part of each model file's checksum metadata).
#: noise = "kernel": the certification kernels on the positions each threat noises, plus trailing
#: cancel clauses (label safe) so that appended tokens can carry meaning.
FILTER_SETTINGS = {
    "MAIN": dict(name="fusion_main_v3", train_pairs=4000, epochs=8, cancel_share=0.5),
    "EXTERNAL": dict(name="fusion_external_v3", train_pairs=4000, epochs=40, cancel_share=0.5, channels=16),
    "MMCERT": dict(name="mmcert_main", train_pairs=2000, epochs=3),
}


def filter_config(set_name: str):
    """The ``FilterConfig`` of the chapter's filter for ``set_name``."""
    from hybridrs.data import pairs as data, typographic as typo
    from hybridrs.models.fusion import FilterConfig

    s = FILTER_SETTINGS[set_name]
    if set_name == "MAIN":
        return FilterConfig(epochs=s["epochs"], noise="kernel", cancel_share=s["cancel_share"],
                            text_items=len(data.DOSE_TEMPLATES), image_items=10)
    if set_name == "EXTERNAL":
        return FilterConfig(epochs=s["epochs"], noise="kernel", cancel_share=s["cancel_share"],
                            image_shape=typo.TYPO_SHAPE, channels=s["channels"],
                            text_items=len(typo.EXEC_REQUESTS) + len(typo.OBSTRUCT_REQUESTS),
                            image_items=2 * len(typo.PHRASES))
    if set_name == "MMCERT":
        return FilterConfig(epochs=s["epochs"], keep_text=0.3, keep_pixels=0.1,
                            text_items=len(data.DOSE_TEMPLATES), image_items=10)
    raise ValueError(f"unknown set {set_name!r}")


def training_pairs(set_name: str, seed: int = 0):
    from hybridrs.data import pairs as data, typographic as typo

    n = FILTER_SETTINGS[set_name]["train_pairs"]
    if set_name == "EXTERNAL":
        return typo.typographic_pairs(n, "train", seed=seed)
    return data.dose_pairs(4000 if set_name == "MMCERT" else n, "train", seed=seed).subset(range(n))


def chapter_filter(set_name: str, seed: int = 0, progress: bool = False):
    """(FastFusion filter, info with ``sha256``) of the chapter's filter for ``set_name``."""
    from hybridrs.models.fusion import load_or_train

    model, info = load_or_train(FILTER_SETTINGS[set_name]["name"], lambda: training_pairs(set_name, seed),
                                filter_config(set_name), progress=progress)
    return FastFusion(model), info


@lru_cache(maxsize=8)
def chapter_kernel(beta: float = 0.25):
    """Uniform replacement kernel at rate β over the usable WordPiece ids."""
    from hybridrs.data.pairs import usable_ids
    from hybridrs.kernels import UniformKernel

    return UniformKernel(beta, alphabet=usable_ids())


class FastFusion(torch.nn.Module):
    """The same decisions as a ``FusionFilter``, computed with less work per noisy batch.

    * the text encoder runs once per *distinct* token row (``torch.unique``): a kernel that noises
      d of L positions at rate β leaves most rows identical (at d = 1, β = 1/4: three in four);
    * an image batch that is one image broadcast (stride 0 along the batch, as
      ``HybridSmooth`` passes the clean image of a text-only estimate) goes through the CNN once.

    The head is the model's.  Results equal the plain forward pass up to float rounding in batched
    matrix products (checked in the tests on whole counts).
    """

    def __init__(self, model):
        super().__init__()
        self.model = model.eval()
        self.cfg = model.cfg

    def logits(self, tokens, images):
        return self.model.logits(tokens, images)

    #: Rows per forward chunk: the CNN's activations of a 48×144 image take ~1.7 MB, so large
    #: batches leave the CPU caches (measured 3× slower per sample at 2 500 than at 100).
    TEXT_CHUNK, IMAGE_CHUNK = 256, 128

    @torch.inference_mode()
    def fast_logits(self, tokens: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        m = self.model
        tokens, images = m._check(tokens, images)
        b = tokens.shape[0]
        uniq, inv = torch.unique(tokens, dim=0, return_inverse=True)
        ts = []
        for st in range(0, uniq.shape[0], self.TEXT_CHUNK):
            u = uniq[st: st + self.TEXT_CHUNK]
            ids = torch.cat([torch.full((u.shape[0], 1), m.cfg.cls_id, dtype=torch.long, device=u.device), u], dim=1)
            att = (ids != 0).long()
            hs = m.text(input_ids=ids, attention_mask=att).last_hidden_state
            w = att.unsqueeze(-1).to(hs.dtype)
            ts.append((hs * w).sum(1) / w.sum(1))
        t = torch.cat(ts)[inv]
        if b > 1 and images.stride(0) == 0:
            vv = m.cnn(images[:1]).expand(b, -1)
        else:
            vv = torch.cat([m.cnn(images[st: st + self.IMAGE_CHUNK]) for st in range(0, b, self.IMAGE_CHUNK)])
        return m.head(torch.cat([t, vv, t * vv], dim=1)).squeeze(-1)

    def forward(self, tokens, images):
        return (self.fast_logits(tokens, images) > 0).long()
