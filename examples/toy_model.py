"""A tiny text + image classifier used by the documentation and the tests of ``hybridrs certify``.

It follows the model protocol of ``hybridrs.run.cli`` (see ``book/scale.md``):

* ``make_model(device="cpu")`` is the factory named on the command line as
  ``examples.toy_model:make_model``;
* the returned object is callable as ``model(tokens, images) -> labels`` on batches;
* ``model.encode(text)`` maps a string to token ids; ``vocab_size``, ``mask_id`` and ``filler_id``
  tell the command line which alphabet the uniform kernel draws from, which id the absorbing
  kernel masks with, and which token pads the suffix threats.

The "classifier" flags an input (label 1) when the number of trigger words in the text, plus the
mean brightness of the image, is large enough: a smooth enough rule that the smoothed score varies
from input to input, and cheap enough to run thousands of noisy copies per second on one CPU core.
It is not a trained model and its decisions mean nothing.
"""

from __future__ import annotations

import zlib

import torch

VOCAB_SIZE = 512
MASK_ID = 0
FILLER_ID = 1  # the token "," appended by the suffix threats
TRIGGERS = ("attack", "weapon", "poison", "steal", "bomb", "hack")
_FIXED = {",": FILLER_ID, **{w: 2 + i for i, w in enumerate(TRIGGERS)}}


class ToyModel:
    vocab_size = VOCAB_SIZE
    mask_id = MASK_ID
    filler_id = FILLER_ID

    def __init__(self, device: str = "cpu"):
        self.device = torch.device(device)
        self.trigger_ids = torch.tensor([_FIXED[w] for w in TRIGGERS], device=self.device)

    def encode(self, text: str) -> list[int]:
        """Lower-cased whitespace words; unknown words hash to ids 8..VOCAB_SIZE−1 (CRC-32)."""
        ids = []
        for word in text.lower().split():
            ids.append(_FIXED.get(word, 8 + zlib.crc32(word.encode()) % (VOCAB_SIZE - 8)))
        return ids

    @torch.no_grad()
    def __call__(self, tokens: torch.Tensor | None, images: torch.Tensor | None) -> torch.Tensor:
        score = torch.zeros(len(tokens if tokens is not None else images), device=self.device)
        if tokens is not None:
            score = score + torch.isin(tokens, self.trigger_ids).sum(dim=1).float()
        if images is not None:
            score = score + 2.0 * images.flatten(1).mean(dim=1)
        return (score >= 1.5).long()


def make_model(device: str = "cpu") -> ToyModel:
    """Factory named on the command line: ``--model examples.toy_model:make_model``."""
    return ToyModel(device)
