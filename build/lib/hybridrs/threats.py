"""Threat models of the text half: which token positions the kernel noises, and which text budgets
one Monte Carlo estimate certifies.

A threat turns a token sequence into the sequence that is smoothed (``prepare``) and a list of
**stages**: each stage is one Monte Carlo estimate of p = P[f(Z) = 1] with the kernel acting on the
stage's positions only, and its lower bound p_A certifies the stage's text budgets d.

* :class:`L0` — the adversary changes at most d tokens anywhere in ``positions`` (all of them by
  default; Hamming distance on token ids).  The kernel noises those positions, which does not
  depend on d, so **one** estimate certifies every d = 0..d_max (Delattre et al. 2026, released
  code ``certify_multimodal_text_L0_image``).
* :class:`Suffix` — the append-only suffix threat of the released code
  (``certify_multimodal_text_append_suffix_image``): the input is padded to s ∥ cᵐ with a filler
  token c; a suffix of length d ≤ m overwrites the first d filler slots.
  - per-d (``shared=False``, the paper's main protocol): stage d = 1..m noises only the first d
    slots, so p_A is re-estimated for every d (m estimates; stage 1 also certifies d = 0);
  - shared-D (``shared=True``, ``certify_shared_D``): one stage noises all m slots and certifies
    every d ≤ m from one p_A (cheaper; smaller radii since more positions are noised).

Within a threat, only the kernel's positions differ between stages; the certificate for budget d
is computed by :mod:`hybridrs.certify` from the stage's p_A exactly as for the ℓ0 threat, since a
suffix of length d is an ℓ0 change of the d noised slots.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from hybridrs import _validate as v


@dataclass(frozen=True)
class Stage:
    """One Monte Carlo estimate: the kernel noises ``mask`` (None = every position) and the
    estimate's p_A certifies the text budgets ``budgets``."""

    mask: torch.Tensor | None
    budgets: tuple[int, ...]


@dataclass(frozen=True)
class L0:
    """Up to d changed tokens among ``positions`` (indices into the sequence; None = all)."""

    d_max: int = 8
    positions: tuple[int, ...] | None = None
    name = "l0"

    def __post_init__(self):
        object.__setattr__(self, "d_max", v.integer(self.d_max, "d_max"))
        if self.positions is not None:
            pos = tuple(v.integer(p, "positions[i]") for p in self.positions)
            if not pos or len(set(pos)) != len(pos):
                raise ValueError("positions must be a non-empty list of distinct indices")
            object.__setattr__(self, "positions", pos)

    @property
    def stop_early(self) -> bool:
        return False

    def prepare(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens

    def stages(self, length: int, device: torch.device | str | None = None) -> list[Stage]:
        if self.positions is None:
            return [Stage(None, tuple(range(self.d_max + 1)))]
        if max(self.positions) >= length:
            raise ValueError(f"positions has index {max(self.positions)} but the sequence has {length} tokens")
        if self.d_max > len(self.positions):
            raise ValueError(f"d_max = {self.d_max} exceeds the {len(self.positions)} positions the threat covers")
        mask = torch.zeros(length, dtype=torch.bool, device=device)
        mask[list(self.positions)] = True
        return [Stage(mask, tuple(range(self.d_max + 1)))]


@dataclass(frozen=True)
class Suffix:
    """An appended suffix of up to ``m`` tokens over the filler slots s ∥ cᵐ (module docstring)."""

    m: int = 8
    filler_id: int = 0
    shared: bool = False
    stop_early: bool = True

    def __post_init__(self):
        object.__setattr__(self, "m", v.integer(self.m, "m", minimum=1))
        object.__setattr__(self, "filler_id", v.integer(self.filler_id, "filler_id"))

    @property
    def name(self) -> str:
        return "suffix-shared" if self.shared else "suffix"

    @property
    def d_max(self) -> int:
        return self.m

    def prepare(self, tokens: torch.Tensor) -> torch.Tensor:
        """s ∥ cᵐ, on the device of ``tokens``."""
        filler = torch.full((self.m,), self.filler_id, dtype=tokens.dtype, device=tokens.device)
        return torch.cat([tokens, filler])

    def stages(self, length: int, device: torch.device | str | None = None) -> list[Stage]:
        L = length - self.m
        if L < 1:
            raise ValueError(f"the padded sequence ({length} tokens) holds no prompt before the {self.m} filler slots")

        def slots(d):
            mask = torch.zeros(length, dtype=torch.bool, device=device)
            mask[L:L + d] = True
            return mask

        if self.shared:
            return [Stage(slots(self.m), tuple(range(self.m + 1)))]
        return [Stage(slots(d), (0, 1) if d == 1 else (d,)) for d in range(1, self.m + 1)]
