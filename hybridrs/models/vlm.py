"""Hugging Face vision-language safety filters as base classifiers f(tokens, images) ∈ {0, 1}.

``VLMGuardAdapter`` wraps a LLaVA-style model (LLaVA-1.5: 4-D pixel values; LLaVA-NeXT /
OneVision: 5-D pixel values with ``image_sizes``) for ``HybridSmooth``:

* **images** arrive as float tensors (b, C, H, W) in [0, 1] pixels with the smoothing noise already
  added, so σ is in the pixel units the certificate speaks of; the processor's resize, crop, pad
  and normalisation are then applied as differentiable torch ops on the images' device
  (``PixelPipeline``, :mod:`hybridrs.models.pixels`);
* **tokens** (b, L) are the ids of the user text; each row fills the text slot of a prompt built
  once from the model's chat template (``prompt_layout``), the image slot holding as many image
  tokens as the model's vision tower produces for an (H, W) image;
* **one forward pass per batch**, label 1 (Unsafe) iff logsumexp of the last position's logits over
  the single-token spellings of "Unsafe" exceeds that over "Safe" (the ``logit_mass`` rule of
  Delattre et al.'s released code).  Only the last position's logits are computed
  (``logits_to_keep=1``), and the key/value cache of the prompt part before the first noised
  element (the policy, typically) is computed once and shared by every noisy sample.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from transformers.cache_utils import Cache, DynamicLayer

from hybridrs import _validate as v
from hybridrs.models.pixels import PixelPipeline, resample_matrix

__all__ = ["PixelPipeline", "PromptLayout", "TEXT_SLOT", "VLMGuardAdapter", "answer_spellings", "max_batch_size",
           "prompt_layout", "resample_matrix"]

TEXT_SLOT = "<<hybridrs:text>>"  # marks where the user text goes in a rendered chat template


def answer_spellings(tokenizer, word: str) -> list[int]:
    """Ids of the single-token spellings of ``word``: case variants (word, Word, WORD), optionally
    preceded by a space, newline or tab and followed by one of . ! , : (the released code's
    ``logit_mass`` set).  Multi-token spellings, and spellings read as the unknown token, are skipped."""
    unk = getattr(tokenizer, "unk_token_id", None)
    out = set()
    for w in {word.lower(), word.capitalize(), word.upper()}:
        for pre in ("", " ", "\n", "\t"):
            for post in ("", ".", "!", ",", ":"):
                ids = tokenizer(pre + w + post, add_special_tokens=False)["input_ids"]
                if len(ids) == 1 and ids[0] != unk:
                    out.add(int(ids[0]))
    return sorted(out)


# ------------------------------------------------------------------------------------------------
# The prompt
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PromptLayout:
    """Token ids of a prompt with one image slot and one text slot:
    ``prefix ∥ (image | text) ∥ between ∥ (text | image) ∥ suffix`` (image first unless
    ``text_first``).  The prefix holds no noised element, so its key/value cache is shared."""

    prefix: tuple[int, ...]
    between: tuple[int, ...] = ()
    suffix: tuple[int, ...] = ()
    text_first: bool = False


def prompt_layout(tokenizer, *, policy: str = "", messages: list | None = None, chat_template: str | None = None,
                  image_token: str = "<image>", answer_prefix: str = "", add_bos: bool | None = None) -> PromptLayout:
    """Build the prompt from the chat template with its image slot.

    By default ``messages`` = [system: ``policy``] (when given) + [user: image, text], the user
    text marked by ``TEXT_SLOT``; pass ``messages`` to lay the conversation out otherwise (one
    image entry, one text entry equal to ``TEXT_SLOT``).  The template is rendered with the
    generation prompt, ``answer_prefix`` is appended, and the pieces around the two slots are
    tokenised separately (no special tokens; the tokenizer's BOS is prepended when it has one the
    template did not write, unless ``add_bos`` says otherwise).  A system message puts a policy
    before the image in LLaVA-1.5's template, which renders a user turn's images before its text.
    """
    if messages is None:
        messages = [{"role": "system", "content": [{"type": "text", "text": policy}]}] if policy else []
        messages.append({"role": "user", "content": [{"type": "image"}, {"type": "text", "text": TEXT_SLOT}]})
    text = tokenizer.apply_chat_template(messages, chat_template=chat_template, add_generation_prompt=True,
                                         tokenize=False) + answer_prefix
    if text.count(image_token) != 1 or text.count(TEXT_SLOT) != 1:
        raise ValueError(f"the rendered template must hold the image token {image_token!r} and the text slot "
                         f"once each; got {text!r}")
    i, t = text.index(image_token), text.index(TEXT_SLOT)
    first, second = (image_token, TEXT_SLOT) if i < t else (TEXT_SLOT, image_token)
    head, rest = text.split(first)
    mid, tail = rest.split(second)

    def enc(s: str) -> list[int]:
        return list(tokenizer(s, add_special_tokens=False)["input_ids"]) if s else []

    prefix = enc(head)
    bos = getattr(tokenizer, "bos_token", None)
    if add_bos is None:
        add_bos = bos is not None and not text.startswith(bos)
    if add_bos:
        prefix = [int(tokenizer.bos_token_id)] + prefix
    return PromptLayout(tuple(prefix), tuple(enc(mid)), tuple(enc(tail)), text_first=t < i)


# ------------------------------------------------------------------------------------------------
# The adapter
# ------------------------------------------------------------------------------------------------


def _param(model) -> torch.Tensor:
    return next(model.parameters())


class _SharedPrefixLayer(DynamicLayer):
    """One layer's keys and values of the prefix, (1, heads, P, dim), shared by every row.

    ``update`` returns prefix ∥ new keys (the prefix broadcast to the batch) without storing the
    new ones: the cache is never modified, so one object serves every batch, and each layer's
    concatenation lives only while that layer runs (a growing cache would hold every layer's
    b × (P + R) keys and values at once)."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor):
        super().__init__()
        self.keys, self.values = keys, values
        self.dtype, self.device = keys.dtype, keys.device
        self.is_initialized = True

    def update(self, key_states, value_states, *args, **kwargs):
        b = key_states.shape[0]
        return (torch.cat([self.keys.expand(b, -1, -1, -1), key_states], dim=-2),
                torch.cat([self.values.expand(b, -1, -1, -1), value_states], dim=-2))


class VLMGuardAdapter:
    """A Hugging Face vision-language model as a binary safety filter f(tokens, images).

    Parameters
    ----------
    model: a LLaVA / LLaVA-NeXT / LLaVA-OneVision ``...ForConditionalGeneration`` (any dtype and
        device; bf16 on a GPU).
    pipeline: the image processor's steps (``PixelPipeline``, or a Hugging Face image processor,
        read with ``PixelPipeline.from_image_processor``).
    layout: the prompt (``PromptLayout``; see ``prompt_layout``).
    unsafe_ids, safe_ids: answer token ids (default: ``answer_spellings(tokenizer, ...)``).
    tokenizer: needed only for the default answer ids and ``encode``.
    cache_prefix: share the key/value cache of ``layout.prefix`` between samples (results agree
        with recomputing it up to floating-point rounding).
    clamp: clip noisy pixels to [0, 1] before the processor (as the released code does); a
        deterministic post-processing of the noisy image, so the certificate is unchanged.

    ``adapter(tokens, images)`` returns (b,) labels on the tokens' device without any host
    synchronisation of its own.
    """

    def __init__(self, model, pipeline, layout: PromptLayout, *, unsafe_ids: Sequence[int] | None = None,
                 safe_ids: Sequence[int] | None = None, tokenizer=None, cache_prefix: bool = True,
                 clamp: bool = True):
        self.model = model.eval()
        cfg = model.config
        token = getattr(cfg, "image_token_id", None)
        self.image_token_id = v.integer(token if token is not None else cfg.image_token_index, "image_token_id")
        if not isinstance(pipeline, PixelPipeline):
            pipeline = PixelPipeline.from_image_processor(pipeline)
        self.pipeline = pipeline
        if not isinstance(layout, PromptLayout):
            raise ValueError("layout must be a PromptLayout (see prompt_layout)")
        self.layout = layout
        self.tokenizer = tokenizer
        if unsafe_ids is None or safe_ids is None:
            if tokenizer is None:
                raise ValueError("give unsafe_ids and safe_ids, or a tokenizer to find their spellings")
        self.unsafe_ids = list(unsafe_ids) if unsafe_ids is not None else answer_spellings(tokenizer, "unsafe")
        self.safe_ids = list(safe_ids) if safe_ids is not None else answer_spellings(tokenizer, "safe")
        if not self.unsafe_ids or not self.safe_ids:
            raise ValueError("unsafe_ids and safe_ids must be non-empty")
        if set(self.unsafe_ids) & set(self.safe_ids):
            raise ValueError("unsafe_ids and safe_ids overlap")
        self.cache_prefix = bool(cache_prefix)
        self.clamp = bool(clamp)
        self._cache: dict = {}  # per-device constants, resampling matrices, prefix key/values, token counts

    def encode(self, text: str) -> list[int]:
        """Token ids of a user text (no special tokens), for the text slot."""
        if self.tokenizer is None:
            raise ValueError("encode needs the adapter's tokenizer")
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def alphabet(self) -> list[int]:
        """The ids a uniform text kernel may draw: the tokenizer's ids but its special tokens and
        the image token (``UniformKernel(beta, alphabet=adapter.alphabet())``)."""
        if self.tokenizer is None:
            raise ValueError("alphabet needs the adapter's tokenizer")
        special = set(self.tokenizer.all_special_ids) | {self.image_token_id}
        return [i for i in range(len(self.tokenizer)) if i not in special]

    # -- cached pieces ---------------------------------------------------------------------------
    def _ids(self, name: str, device: torch.device) -> torch.Tensor:
        key = ("ids", name, device)
        if key not in self._cache:  # one host-to-device copy per device, not one per batch
            vals = {"prefix": self.layout.prefix, "between": self.layout.between, "suffix": self.layout.suffix,
                    "unsafe": self.unsafe_ids, "safe": self.safe_ids}[name]
            with torch.inference_mode(False):  # see _prefix_kv
                self._cache[key] = torch.tensor(list(vals), dtype=torch.long, device=device)
        return self._cache[key]

    def _prefix_kv(self, device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
        key = ("kv", device, _param(self.model).dtype)  # recomputed if the model is cast after a call
        if key not in self._cache:
            # Cached tensors may later enter a forward that records gradients (attacks), which
            # inference tensors forbid: build them outside inference mode, without a graph.
            with torch.inference_mode(False), torch.no_grad():
                out = self.model(input_ids=self._ids("prefix", device)[None], use_cache=True, logits_to_keep=1)
            self._cache[key] = [(k, val) for k, val, *_ in out.past_key_values]
        return self._cache[key]

    def _prefix_cache(self, device: torch.device):
        """A read-only cache of the prefix for any batch size (``_SharedPrefixLayer``)."""
        key = ("cache", device, _param(self.model).dtype)
        if key not in self._cache:
            self._cache[key] = Cache(layers=[_SharedPrefixLayer(k, val) for k, val in self._prefix_kv(device)])
        return self._cache[key]

    def pixel_values(self, images: torch.Tensor):
        """(pixel_values in the vision tower's dtype, image_sizes or None) of [0, 1] images."""
        x = images.float()
        if self.clamp:
            x = x.clamp(0.0, 1.0)
        pv, sizes = self.pipeline(x, self._cache)
        return pv.to(_param(self.model).dtype), sizes

    @torch.no_grad()
    def num_image_tokens(self, height: int, width: int, device: torch.device | None = None) -> int:
        """Image tokens the model produces for an (H, W) image: one probe of the vision tower per
        size (for NeXT / OneVision the count depends on the grid and the unpadding)."""
        key = ("n_img", height, width)
        if key not in self._cache:
            device = device if device is not None else _param(self.model).device
            probe = torch.zeros(1, len(self.pipeline.mean), height, width, device=device)
            pv, sizes = self.pixel_values(probe)
            kw = {} if sizes is None else {"image_sizes": sizes}
            feats = self.model.get_image_features(pixel_values=pv, **kw)
            feats = getattr(feats, "pooler_output", feats)
            self._cache[key] = int(sum(f.shape[0] for f in feats) if isinstance(feats, (list, tuple))
                                   else feats.shape[0] * feats.shape[1])
        return self._cache[key]

    def input_ids(self, tokens: torch.Tensor, height: int, width: int, with_prefix: bool = True) -> torch.Tensor:
        """The full prompt ids (b, ·) for user tokens (b, L) and an (H, W) image, on the tokens'
        device; without the prefix when ``with_prefix`` is False (the cached path)."""
        if tokens.ndim != 2 or tokens.shape[1] == 0 or tokens.dtype.is_floating_point:
            raise ValueError(f"tokens must be a non-empty (b, L) integer tensor, got {tuple(tokens.shape)} "
                             f"{tokens.dtype}")
        dev, b = tokens.device, tokens.shape[0]
        img = torch.full((b, self.num_image_tokens(height, width, dev)), self.image_token_id, dtype=torch.long,
                         device=dev)
        a, c = (tokens.long(), img) if self.layout.text_first else (img, tokens.long())
        parts = [a, self._ids("between", dev).expand(b, -1), c, self._ids("suffix", dev).expand(b, -1)]
        if with_prefix:
            parts.insert(0, self._ids("prefix", dev).expand(b, -1))
        return torch.cat(parts, dim=1)

    def margin(self, tokens: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """logsumexp over Unsafe spellings − logsumexp over Safe spellings at the last position
        (b,), float32, on the tokens' device; differentiable in ``images``."""
        if not isinstance(tokens, torch.Tensor):  # as_tensor would move a tensor to the default device
            tokens = torch.as_tensor(tokens, device=images.device)
        if images is None or images.ndim != 4 or images.shape[0] != tokens.shape[0]:
            raise ValueError("images must be a (b, C, H, W) tensor with one row per token row")
        if images.device.type == "cpu" and torch.isnan(images).any():  # free on the host only
            raise ValueError("images contains NaN")
        dev = tokens.device
        cached = self.cache_prefix and len(self.layout.prefix) > 0
        ids = self.input_ids(tokens, images.shape[-2], images.shape[-1], with_prefix=not cached)
        pv, sizes = self.pixel_values(images)
        kw = {} if sizes is None else {"image_sizes": sizes}
        if cached:
            kw["past_key_values"] = self._prefix_cache(dev)
        out = self.model(input_ids=ids, pixel_values=pv, use_cache=cached, logits_to_keep=1, **kw)
        last = out.logits[:, -1, :].float()
        return (torch.logsumexp(last[:, self._ids("unsafe", dev)], 1)
                - torch.logsumexp(last[:, self._ids("safe", dev)], 1))

    @torch.no_grad()
    def __call__(self, tokens: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        return (self.margin(tokens, images) > 0).long()


def max_batch_size(adapter: VLMGuardAdapter, tokens: torch.Tensor, image: torch.Tensor, *, start: int = 8,
                   limit: int = 512) -> int:
    """Largest batch (start·2^k ≤ limit) that runs one forward pass without running out of
    accelerator memory.  On a CPU there is no limit to find and ``start`` is returned."""
    start = v.integer(start, "start", minimum=1)
    limit = v.integer(limit, "limit", minimum=start)
    if image.device.type == "cpu":
        return start
    best, b = 0, start
    while b <= limit:
        try:
            adapter(tokens.expand(b, -1), image.expand(b, *image.shape))
        except torch.OutOfMemoryError:
            break
        finally:
            if image.device.type == "cuda":
                torch.cuda.empty_cache()
        best, b = b, 2 * b
    if best == 0:
        raise RuntimeError(f"even a batch of {start} does not fit on {image.device}")
    return best
