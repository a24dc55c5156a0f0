"""The small multimodal safety filter of the experiments (chapter 8) and its training.

``FusionFilter`` — f(tokens, images) ∈ {0, 1} (1 = unsafe):

* text: a one-layer ``transformers.BertModel`` built from a ``BertConfig`` (hidden 32, 2 heads,
  WordPiece vocabulary of all-MiniLM-L6-v2) and trained here; [CLS] is prepended, [PAD] = 0 is
  masked; the text vector t is the mean of the last hidden states over non-pad positions;
* image: a two-convolution CNN (conv 5×5 stride 2 with 8 channels, conv 3×3 stride 2 with 16,
  ReLU) and a linear map to v (strided convolutions: three times faster than max-pooling on CPU);
* fusion: logit = MLP([t, v, t ⊙ v]), the product term letting the head represent the
  interaction that decides an interaction-only label.

It is trained with the smoothing noise it will be certified under (``train_filter``): uniform
token replacement at rate β on the prompt, random tokens in the appended suffix slots, and Gaussian
noise of a random σ ∈ [0, σ_max] added to the [0, 1] pixels (Cohen et al. 2019, §4).  One noisy
sample costs one small forward pass, so n = 10⁴ draws take seconds on two CPU cores.

Hugging Face vision-language safety filters are wrapped by :mod:`hybridrs.models.vlm`.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn
import torch.nn.functional as F

from hybridrs._paths import model_dir as default_model_dir



@dataclass(frozen=True)
class FilterConfig:
    """Everything that determines a trained ``FusionFilter`` (part of the cache key)."""

    image_shape: tuple[int, int, int] = (1, 28, 28)
    vocab_size: int = 30522
    hidden: int = 32
    channels: int = 8
    fuse: int = 64
    max_len: int = 64
    cls_id: int = 101
    # training
    seed: int = 0
    epochs: int = 8
    batch_size: int = 128
    lr: float = 3e-3
    beta_train: float = 0.25
    l0_share: float = 0.5
    sigma_max: float = 1.0
    suffix_slots: int = 8
    keep_text: float = 0.0
    keep_pixels: float = 0.0
    text_items: int = 0
    image_items: int = 0
    aux_weight: float = 0.5
    noise: str = "mixed"  # or "kernel": the certification kernels (noisy_batch)
    cancel_share: float = 0.0  # "kernel" only: share of suffixed examples given a cancel clause
    version: int = 2


class FusionFilter(nn.Module):
    """Multimodal safety filter; ``forward(tokens, images)`` returns labels (b,) in {0, 1}."""

    def __init__(self, cfg: FilterConfig):
        super().__init__()
        from transformers import BertConfig, BertModel

        self.cfg = cfg
        bcfg = BertConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden, num_hidden_layers=1,
                          num_attention_heads=2, intermediate_size=2 * cfg.hidden,
                          max_position_embeddings=cfg.max_len + 1, pad_token_id=0,
                          hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        self.text = BertModel(bcfg, add_pooling_layer=False)
        c, H, W = cfg.image_shape
        k = cfg.channels
        self.cnn = nn.Sequential(nn.Conv2d(c, k, 5, stride=2, padding=2), nn.ReLU(),
                                 nn.Conv2d(k, 2 * k, 3, stride=2, padding=1), nn.ReLU(),
                                 nn.Flatten(), nn.Linear(2 * k * ((H + 3) // 4) * ((W + 3) // 4), cfg.hidden))
        h = cfg.hidden
        self.head = nn.Sequential(nn.Linear(3 * h, cfg.fuse), nn.ReLU(), nn.Linear(cfg.fuse, 1))
        # Auxiliary heads (training only): an interaction-only label gives no gradient signal to
        # either encoder alone at initialisation (an XOR-like problem), so the encoders are also
        # taught what each modality shows (template / digit class or phrase).
        self.aux_t = nn.Linear(h, cfg.text_items) if cfg.text_items else None
        self.aux_v = nn.Linear(h, cfg.image_items) if cfg.image_items else None

    def _check(self, tokens, images) -> tuple[torch.Tensor, torch.Tensor]:
        if tokens is None or images is None:
            raise ValueError("FusionFilter needs both tokens and images")
        if not isinstance(tokens, torch.Tensor):  # as_tensor would move a tensor to the default device
            tokens = torch.as_tensor(tokens, device=images.device if isinstance(images, torch.Tensor) else None)
        if tokens.ndim != 2 or tokens.dtype.is_floating_point:
            raise ValueError(f"tokens must be a (b, L) LongTensor, got {tuple(tokens.shape)} {tokens.dtype}")
        if tokens.shape[1] > self.cfg.max_len:
            raise ValueError(f"tokens has length {tokens.shape[1]} > max_len {self.cfg.max_len}")
        if images.ndim != 4 or tuple(images.shape[1:]) != tuple(self.cfg.image_shape):
            raise ValueError(f"images must have shape (b, {', '.join(map(str, self.cfg.image_shape))}), "
                             f"got {tuple(images.shape)}")
        if images.shape[0] != tokens.shape[0]:
            raise ValueError("tokens and images must hold the same number of rows")
        if tokens.device != images.device:
            raise ValueError(f"tokens are on {tokens.device} but images on {images.device}")
        # The NaN check reads the data back to the host: free on the CPU, a synchronisation per
        # batch on an accelerator, where a NaN image is left to the caller (HybridSmooth checks
        # the clean image once).
        if images.device.type == "cpu" and torch.isnan(images).any():
            raise ValueError("images contains NaN")
        return tokens.long(), images

    def logits(self, tokens: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """Unsafe logit (b,): MLP([t, v, t ⊙ v])."""
        return self.features(tokens, images)[0]

    def features(self, tokens: torch.Tensor, images: torch.Tensor):
        """(unsafe logit, text vector t, image vector v)."""
        tokens, images = self._check(tokens, images)
        b = tokens.shape[0]
        cls = torch.full((b, 1), self.cfg.cls_id, dtype=torch.long, device=tokens.device)
        ids = torch.cat([cls, tokens], dim=1)
        att = (ids != 0).long()
        hs = self.text(input_ids=ids, attention_mask=att).last_hidden_state
        m = att.unsqueeze(-1).to(hs.dtype)
        t = (hs * m).sum(1) / m.sum(1)
        vv = self.cnn(images)
        return self.head(torch.cat([t, vv, t * vv], dim=1)).squeeze(-1), t, vv

    @torch.inference_mode()
    def forward(self, tokens: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        return (self.logits(tokens, images) > 0).long()


# ------------------------------------------------------------------------------------------------
# Training with the smoothing noise
# ------------------------------------------------------------------------------------------------


@lru_cache(maxsize=4)
def _train_kernel(beta: float, alphabet: tuple[int, ...]):
    from hybridrs.kernels import UniformKernel
    return UniformKernel(beta, alphabet=alphabet)


def noisy_batch(tokens: list[torch.Tensor], images: torch.Tensor, cfg: FilterConfig, alphabet: torch.Tensor,
                filler: int, gen: torch.Generator, labels: torch.Tensor | None = None):
    """One training batch under the smoothing noise: (tokens, images), plus the labels when
    ``labels`` is given (cancel clauses relabel their examples safe).

    ``noise="kernel"`` (chapter 8): per example, with equal probability, a clean prompt; ℓ0
    (``UniformKernel(beta_train).sample`` on every prompt token); a per-d suffix stage (m filler
    slots, the kernel on the first d, d uniform in 1..m); or shared-D (the kernel on all m slots).
    Where slots are appended, with probability ``cancel_share`` they first receive a clause of
    ``CANCEL_CLAUSES`` (label safe), so appended tokens carry meaning.  ``noise="mixed"``
    (version 2): prompt tokens replaced at ``beta_train`` with probability ``l0_share``; with
    probability 1/2 m slots appended, each random with a per-example rate u ~ U(0, 1).  Either
    way the image gets N(0, s²I), s ~ U(0, σ_max).  ``keep_text`` > 0: MMCert's sub-sampling
    (``hybridrs.baselines.mmcert.ablate``) instead, no other noise.
    """
    from hybridrs.data.tokens import pad

    b = len(tokens)
    y = None if labels is None else labels.clone()
    def out(toks, imgs):
        return (toks, imgs) if y is None else (toks, imgs, y)

    if cfg.keep_text > 0:
        from hybridrs.baselines.mmcert import ablate

        seqs, imgs = [], []
        P = images[0].numel()
        for i, s in enumerate(tokens):
            t, im = ablate(s, images[i], math.ceil(cfg.keep_text * len(s)), math.ceil(cfg.keep_pixels * P), 1, gen)
            seqs.append(t[0])
            imgs.append(im[0])
        return out(pad(seqs), torch.stack(imgs))
    seqs = []
    m = cfg.suffix_slots
    if cfg.noise == "kernel":
        from hybridrs.data.pairs import CANCEL_CLAUSES, encode
        kern = _train_kernel(cfg.beta_train, tuple(alphabet.tolist()))
        clauses = [encode(c)[:m] for c in CANCEL_CLAUSES]
        mode = torch.randint(4, (b,), generator=gen)
        u = torch.rand(b, generator=gen)
        for i, s in enumerate(tokens):
            mo = int(mode[i])
            if mo == 1:
                s = kern.sample(s, 1, generator=gen)[0]
            elif mo >= 2:
                suf = torch.full((m,), filler, dtype=torch.long)
                if y is not None and u[i] < cfg.cancel_share:
                    c = clauses[int(torch.randint(len(clauses), (1,), generator=gen))]
                    suf[: len(c)] = c
                    y[i] = 0
                L = len(s)
                s = torch.cat([s, suf])
                mask = torch.zeros(len(s), dtype=torch.bool)
                d = m if mo == 3 else int(torch.randint(1, m + 1, (1,), generator=gen))
                mask[L: L + d] = True
                s = kern.sample(s, 1, generator=gen, mask=mask)[0]
            seqs.append(s)
    elif cfg.noise == "mixed":
        u = torch.rand(b, 3, generator=gen)
        for i, s in enumerate(tokens):
            s = s.clone()
            if u[i, 0] < cfg.l0_share:
                hit = torch.rand(len(s), generator=gen) < cfg.beta_train
                s[hit] = alphabet[torch.randint(len(alphabet), (int(hit.sum()),), generator=gen)]
            if u[i, 1] < 0.5:
                suf = torch.full((m,), filler, dtype=torch.long)
                hit = torch.rand(m, generator=gen) >= u[i, 2]
                suf[hit] = alphabet[torch.randint(len(alphabet), (int(hit.sum()),), generator=gen)]
                s = torch.cat([s, suf])
            seqs.append(s)
    else:
        raise ValueError(f"noise must be 'kernel' or 'mixed', got {cfg.noise!r}")
    sig = torch.rand(b, 1, 1, 1, generator=gen) * cfg.sigma_max
    return out(pad(seqs), images + sig * torch.randn(images.shape, generator=gen))


def train_filter(train_set, cfg: FilterConfig, progress: bool = False) -> tuple[FusionFilter, list[float]]:
    """Train a ``FusionFilter`` on a ``PairSet`` with Adam on the logistic loss under the smoothing
    noise (:func:`noisy_batch`) plus ``aux_weight`` × the auxiliary heads' cross-entropies; returns
    (model in eval mode, per-epoch mean losses).  Deterministic on CPU for a given seed and thread
    count; the weights are rounded to float16 at the end, as the cached file stores them."""
    from hybridrs.data.tokens import filler_id, usable_ids

    if len(train_set) < 2:
        raise ValueError("train_set must hold at least two pairs")
    torch.manual_seed(cfg.seed)
    model = FusionFilter(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(cfg.seed)
    alphabet = torch.tensor(usable_ids(), dtype=torch.long)
    filler = filler_id()
    y = torch.tensor(train_set.labels, dtype=torch.float32)
    yt = torch.as_tensor(train_set.text_item, dtype=torch.long)
    yv = torch.as_tensor(train_set.image_item, dtype=torch.long)
    n = len(train_set)
    losses = []
    it = range(cfg.epochs)
    if progress:
        from tqdm.auto import tqdm
        it = tqdm(it, desc="training epochs")
    model.train()
    for _ in it:
        order = torch.randperm(n, generator=gen)
        tot, cnt = 0.0, 0
        for st in range(0, n, cfg.batch_size):
            idx = order[st: st + cfg.batch_size]
            toks, imgs, yb = noisy_batch([train_set.tokens[i] for i in idx], train_set.images[idx], cfg,
                                         alphabet, filler, gen, labels=y[idx])
            logit, t, vv = model.features(toks, imgs)
            loss = F.binary_cross_entropy_with_logits(logit, yb)
            if model.aux_t is not None:
                loss = loss + cfg.aux_weight * F.cross_entropy(model.aux_t(t), yt[idx])
            if model.aux_v is not None:
                loss = loss + cfg.aux_weight * F.cross_entropy(model.aux_v(vv), yv[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            tot += float(loss.detach()) * len(idx)
            cnt += len(idx)
        losses.append(tot / cnt)
    model.eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.half().float())
    return model, losses


def _state_bytes(model: FusionFilter) -> bytes:
    buf = io.BytesIO()  # float16 on disk
    torch.save({k: t.half() for k, t in model.state_dict().items()}, buf)
    return buf.getvalue()


def load_or_train(name: str, train_set_fn, cfg: FilterConfig, model_dir: Path | str | None = None,
                  progress: bool = False) -> tuple[FusionFilter, dict]:
    """The cached filter ``<model_dir>/<name>.pt`` if its SHA-256 and config match, else train it on
    ``train_set_fn()`` and cache it.  Returns (model, info: checksum, config, retrained)."""
    model_dir = Path(model_dir) if model_dir is not None else default_model_dir()
    model_dir.mkdir(parents=True, exist_ok=True)
    wpath, mpath = model_dir / f"{name}.pt", model_dir / f"{name}.json"
    want = asdict(cfg)
    want["image_shape"] = list(cfg.image_shape)
    if wpath.exists() and mpath.exists():
        meta = json.loads(mpath.read_text())
        data = wpath.read_bytes()
        have = meta.get("config", {})
        if have == want and meta.get("sha256") == hashlib.sha256(data).hexdigest():
            model = FusionFilter(cfg)
            state = torch.load(io.BytesIO(data), weights_only=True)
            model.load_state_dict({k: t.float() for k, t in state.items()})
            model.eval()
            return model, {**meta, "retrained": False}
    model, losses = train_filter(train_set_fn(), cfg, progress=progress)
    data = _state_bytes(model)
    meta = {"config": want, "sha256": hashlib.sha256(data).hexdigest(), "losses": losses}
    wpath.write_bytes(data)
    mpath.write_text(json.dumps(meta, indent=1))
    return model, {**meta, "retrained": True}


@torch.inference_mode()
def clean_accuracy(model: FusionFilter, ps, batch_size: int = 512) -> float:
    """Accuracy of the base filter on clean pairs (suffix of fillers appended, as certified)."""
    from hybridrs.data.tokens import pad, with_suffix

    pred = []
    for st in range(0, len(ps), batch_size):
        toks = pad([with_suffix(t)[0] for t in ps.tokens[st: st + batch_size]])
        pred.append(model(toks, ps.images[st: st + batch_size]))
    return float((torch.cat(pred).numpy() == ps.labels).mean())


def throughput(model, tokens: torch.Tensor, image: torch.Tensor, batch: int = 1000, reps: int = 3) -> float:
    """Samples per second of ``model`` at batch size ``batch`` (best of ``reps``), clean text and
    noisy images."""
    import time
    toks = tokens.expand(batch, -1)
    best = math.inf
    for _ in range(reps):
        imgs = image.expand(batch, *image.shape) + torch.randn(batch, *image.shape)
        t0 = time.perf_counter()
        model(toks, imgs)
        best = min(best, time.perf_counter() - t0)
    return batch / best
