"""Discrete smoothing kernels for token sequences and categorical fields.

A kernel K(· | s) perturbs every position independently.  Two things are needed from it:

* ``sample(tokens, n)``: n noisy copies, drawn in one batched torch call on the tokens' device;
* ``groups(d)``: the likelihood-ratio groups of a *canonical* adversary that changes d positions.
  Under the uniform and absorbing kernels the multiset of (clean mass, adversarial mass, ratio)
  depends only on d, not on which positions or which tokens change, so one adversary per d covers
  the whole ℓ0 ball (Chen et al. 2025; Delattre et al. 2026, "kernel symmetry").

Masses are computed from exact integer counts and in log space: for d = 8 and V = 30 522 they span
forty orders of magnitude and V^d overflows.
"""

from __future__ import annotations

import itertools
import math
import weakref
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from hybridrs import _validate as v


@dataclass(frozen=True)
class Groups:
    """Likelihood-ratio groups (c_k, a_k, g_k) of a discrete adversary.

    ``clean[k]`` = P[Z ∈ group k] under the clean input, ``adv[k]`` the same under the adversarial
    input, ``log_ratio[k]`` = log(adv/clean) (−inf where adv = 0, +inf where clean = 0).  Groups of
    zero mass under both laws are dropped.  Both mass vectors sum to one.  A group of ratio +inf
    (adversarial mass only) never enters a Neyman–Pearson region, and a group of ratio 0 (clean
    mass only) is always inside it.
    """

    clean: np.ndarray
    adv: np.ndarray
    log_ratio: np.ndarray

    @classmethod
    def from_log_masses(cls, log_clean: np.ndarray, log_adv: np.ndarray) -> "Groups":
        log_clean = np.asarray(log_clean, dtype=np.float64)
        log_adv = np.asarray(log_adv, dtype=np.float64)
        keep = np.isfinite(log_clean) | np.isfinite(log_adv)
        log_clean, log_adv = log_clean[keep], log_adv[keep]
        with np.errstate(invalid="ignore"):
            log_ratio = np.where(np.isfinite(log_clean) & np.isfinite(log_adv), log_adv - log_clean,
                                 np.where(np.isfinite(log_adv), np.inf, -np.inf))
        order = np.argsort(log_ratio, kind="stable")
        return cls(np.exp(log_clean[order]), np.exp(log_adv[order]), log_ratio[order])

    def __len__(self) -> int:
        return len(self.clean)


def _log_int(x: int) -> float:
    return math.log(x) if x > 0 else -math.inf


def _times(k: int, log_p: float) -> float:
    """k·log p with the convention 0·log 0 = 0 (β = 1 makes log(1 − β) = −inf)."""
    return 0.0 if k == 0 else k * log_p


class _TokenKernel:
    """Shared plumbing: position masks, generators, argument checks, per-device constants.

    Device rules: every tensor is created on the tokens' device; constants (alphabet, index,
    arities) live on the CPU and are copied once per device, not once per batch; the checks that
    read token values back to the host run once per tokens tensor (the engine passes the same
    tensor for every batch), since a read per batch would stall an accelerator each time.
    """

    beta: float

    def _on(self, name: str, device: torch.device) -> torch.Tensor:
        cache = self.__dict__.setdefault("_device_cache", {})
        key = (name, device)
        if key not in cache:
            cache[key] = getattr(self, name).to(device)
        return cache[key]

    def _check_once(self, tokens: torch.Tensor, check) -> None:
        """Run ``check()`` unless it already passed for this very tensor, unmodified since.
        Inference-mode tensors keep no version counter, so they are checked every time."""
        if tokens.is_inference():
            check()
            return
        stamp = (tokens.data_ptr(), tokens._version, tuple(tokens.shape), tokens.device)
        seen = self.__dict__.get("_checked")
        if seen is not None and seen[0]() is tokens and seen[1] == stamp:
            return
        check()
        self.__dict__["_checked"] = (weakref.ref(tokens), stamp)

    @staticmethod
    def _check_tokens(tokens, generator=None) -> torch.Tensor:
        if not isinstance(tokens, torch.Tensor):  # a list goes where the noise is drawn
            tokens = torch.as_tensor(tokens, device=generator.device if generator is not None else "cpu")
        if tokens.dtype.is_floating_point or tokens.dtype == torch.bool:
            raise ValueError(f"tokens must be an integer tensor of ids, got dtype {tokens.dtype}")
        if tokens.ndim != 1:
            raise ValueError(f"tokens must be 1-D (one sequence), got shape {tuple(tokens.shape)}")
        if tokens.numel() == 0:
            raise ValueError("tokens is empty: there is nothing to smooth")
        return tokens.long()

    def _replace_mask(self, tokens: torch.Tensor, n: int, generator, mask) -> torch.Tensor:
        n = v.integer(n, "n", minimum=1)
        u = torch.rand((n, tokens.numel()), generator=generator, device=tokens.device)
        hit = u < self.beta
        if mask is not None:
            mask = torch.as_tensor(mask, dtype=torch.bool, device=tokens.device)
            if mask.shape != tokens.shape:
                raise ValueError(f"mask must have the tokens' shape {tuple(tokens.shape)}, "
                                 f"got {tuple(mask.shape)}")
            hit &= mask
        return hit

    def adversaries(self, d: int) -> list[Groups]:
        """All canonical d-change adversaries; one suffices for a symmetric kernel."""
        return [self.groups(d)]

    def groups(self, d: int) -> Groups:  # pragma: no cover - abstract
        raise NotImplementedError


class UniformKernel(_TokenKernel):
    """Uniform replacement kernel over an alphabet of V tokens.

    Each position independently keeps its token with probability 1 − β and otherwise takes one
    of the V − 1 *other* alphabet tokens uniformly, so each specific other token has probability
    a = β/(V − 1) (the parametrisation of Delattre et al. 2026 and their released code).

    Parameters
    ----------
    beta: replacement probability, in (0, 1].
    vocab_size: V, the alphabet size (≥ 2).  By default the alphabet is the ids 0..V−1.
    alphabet: optional explicit list of allowed ids (then V = len(alphabet)); use it for a real
        tokenizer, whose usable ids exclude special tokens.  A token outside the alphabet cannot be
        smoothed by this kernel (its certificate would not hold), so ``sample`` rejects it.
    """

    def __init__(self, beta: float, vocab_size: int | None = None, alphabet: Sequence[int] | None = None):
        self.beta = v.beta(beta)
        if alphabet is not None:
            ids = torch.as_tensor(list(alphabet), dtype=torch.long, device="cpu")
            if ids.ndim != 1 or len(torch.unique(ids)) != len(ids) or (ids < 0).any():
                raise ValueError("alphabet must be a list of distinct non-negative token ids")
            if vocab_size is not None and int(vocab_size) != len(ids):
                raise ValueError(f"vocab_size ({vocab_size}) disagrees with len(alphabet) ({len(ids)})")
            vocab_size = len(ids)
            self.alphabet = ids
            self._index = torch.full((int(ids.max()) + 1,), -1, dtype=torch.long, device="cpu")
            self._index[ids] = torch.arange(len(ids), device="cpu")
        else:
            if vocab_size is None:
                raise ValueError("vocab_size is required when no alphabet is given")
            self.alphabet = None
            self._index = None
        self.vocab_size = v.integer(vocab_size, "vocab_size", minimum=2)

    def __repr__(self) -> str:
        return f"UniformKernel(beta={self.beta}, vocab_size={self.vocab_size})"

    def sample(self, tokens, n: int, generator: torch.Generator | None = None, mask=None) -> torch.Tensor:
        """n noisy copies of ``tokens`` (shape (L,)) as an (n, L) tensor on the tokens' device.

        ``mask`` (bool, shape (L,)) restricts the noise to the marked positions (append-only
        suffix threat); the others stay clean.
        """
        tokens = self._check_tokens(tokens, generator)
        if self.alphabet is None:
            def check():
                if (tokens < 0).any() or (tokens >= self.vocab_size).any():
                    raise ValueError(f"tokens must be ids in [0, {self.vocab_size}) for this kernel")
            pos = tokens
        else:
            index = self._on("_index", tokens.device)
            inside = (tokens >= 0) & (tokens < len(index))
            pos = torch.where(inside, index[tokens.clamp(0, len(index) - 1)], torch.full_like(tokens, -1))

            def check():
                if (pos < 0).any():
                    bad = tokens[pos < 0][0].item()
                    raise ValueError(f"token id {bad} is not in the kernel's alphabet")
        self._check_once(tokens, check)
        hit = self._replace_mask(tokens, n, generator, mask)
        # Draw among the V − 1 others: an index r in [0, V − 2], shifted past the current token.
        r = torch.randint(0, self.vocab_size - 1, hit.shape, generator=generator, device=tokens.device)
        other = r + (r >= pos).long()
        if self.alphabet is not None:
            other = self._on("alphabet", tokens.device)[other]
        return torch.where(hit, other, tokens.expand_as(hit))

    def groups(self, d: int) -> Groups:
        """Groups of a canonical adversary changing d positions (Delattre et al. 2026, §1.2 notes).

        With i = #positions where z ≠ s and j = #positions where z ≠ s' (i + j ≥ d):
        N(i, j) = C(d, i)·C(i, d − j)·(V − 2)^(i + j − d), c = N·a^i(1 − β)^(d − i),
        a = N·a^j(1 − β)^(d − j), with a = β/(V − 1).
        """
        d = v.integer(d, "d")
        V = self.vocab_size
        log_a, log_keep = math.log(self.beta / (V - 1)), (math.log1p(-self.beta) if self.beta < 1 else -math.inf)
        lc, la = [], []
        for i in range(d + 1):
            for j in range(d - i, d + 1):
                log_n = _log_int(math.comb(d, i) * math.comb(i, d - j) * (V - 2) ** (i + j - d))
                lc.append(log_n + i * log_a + _times(d - i, log_keep))
                la.append(log_n + j * log_a + _times(d - j, log_keep))
        return Groups.from_log_masses(np.array(lc), np.array(la))


class AbsorbingKernel(_TokenKernel):
    """Absorbing (masking) kernel: each position becomes ``mask_id`` with probability β.

    Under a d-change adversary three likelihood ratios occur: 0 (some changed position shows the
    clean token: clean mass 1 − β^d), +∞ (it shows the adversarial token: adversarial mass
    1 − β^d) and 1 (all d changed positions masked, mass β^d under both).  Its ε = 0 certificate
    is p_adv = max(0, p_A − (1 − β^d)) (Chen et al. 2025), which collapses like β^d.
    """

    def __init__(self, beta: float, mask_id: int):
        self.beta = v.beta(beta)
        self.mask_id = v.integer(mask_id, "mask_id")

    def __repr__(self) -> str:
        return f"AbsorbingKernel(beta={self.beta}, mask_id={self.mask_id})"

    def sample(self, tokens, n: int, generator: torch.Generator | None = None, mask=None) -> torch.Tensor:
        """n masked copies of ``tokens`` (shape (L,)) as an (n, L) tensor on the tokens' device."""
        tokens = self._check_tokens(tokens, generator)
        hit = self._replace_mask(tokens, n, generator, mask)
        return torch.where(hit, torch.full_like(hit, self.mask_id, dtype=torch.long), tokens.expand_as(hit))

    def groups(self, d: int) -> Groups:
        d = v.integer(d, "d")
        log_all = d * math.log(self.beta)
        log_some_kept = math.log(-math.expm1(log_all)) if d > 0 else -math.inf
        # some changed position kept: s-token (clean only), s'-token (adversarial only); all masked
        return Groups.from_log_masses(np.array([log_some_kept, -math.inf, log_all]),
                                      np.array([-math.inf, log_some_kept, log_all]))


class HeteroUniformKernel(_TokenKernel):
    """Uniform replacement over fields of different arities (tabular data).

    Field f takes one of ``arities[f]`` values; with probability β it is replaced by one of its
    V_f − 1 other values uniformly.  The groups of a d-field change depend on which fields change
    (through their arities), so the certificate takes the worst case over every multiset of d
    arities that occurs among the fields (``adversaries``).
    """

    def __init__(self, beta: float, arities: Sequence[int]):
        self.beta = v.beta(beta)
        ar = [v.integer(a, "arities", minimum=2) for a in arities]
        if not ar:
            raise ValueError("arities must list at least one field")
        self.arities = torch.tensor(ar, dtype=torch.long, device="cpu")

    def __repr__(self) -> str:
        return f"HeteroUniformKernel(beta={self.beta}, arities={self.arities.tolist()})"

    def sample(self, tokens, n: int, generator: torch.Generator | None = None, mask=None) -> torch.Tensor:
        """n noisy copies of a record of category indices (shape (m,), field f in [0, V_f))."""
        tokens = self._check_tokens(tokens, generator)
        ar = self._on("arities", tokens.device)
        if tokens.shape != ar.shape:
            raise ValueError(f"tokens must have one entry per field ({len(ar)}), got {tuple(tokens.shape)}")

        def check():
            if (tokens < 0).any() or (tokens >= ar).any():
                raise ValueError("tokens must be category indices in [0, arity) for each field")
        self._check_once(tokens, check)
        hit = self._replace_mask(tokens, n, generator, mask)
        u = torch.rand(hit.shape, generator=generator, device=tokens.device, dtype=torch.float64)
        r = torch.minimum((u * (ar - 1)).long(), ar - 2)
        other = r + (r >= tokens).long()
        return torch.where(hit, other, tokens.expand_as(hit))

    def groups(self, d: int, fields: Sequence[int] | None = None) -> Groups:
        """Groups when the given fields change (default: the first d fields)."""
        d = v.integer(d, "d")
        fields = list(range(d)) if fields is None else list(fields)
        if len(fields) != d:
            raise ValueError(f"fields must name exactly d = {d} fields")
        return self._groups_for(tuple(int(self.arities[f]) for f in fields))

    def _groups_for(self, arities: tuple[int, ...]) -> Groups:
        b = self.beta
        log_keep = math.log1p(-b) if b < 1 else -math.inf
        per_field = []
        for V in arities:
            log_a = math.log(b / (V - 1))
            log_other = math.log(b * (V - 2) / (V - 1)) if V > 2 else -math.inf
            # (log clean, log adv) of: z = s_f, z = s'_f, z = a third value
            per_field.append([(log_keep, log_a), (log_a, log_keep), (log_other, log_other)])
        lc, la = [], []
        for combo in itertools.product(*per_field):
            lc.append(sum(c for c, _ in combo))
            la.append(sum(a for _, a in combo))
        return Groups.from_log_masses(np.array(lc), np.array(la))

    def adversaries(self, d: int) -> list[Groups]:
        d = v.integer(d, "d")
        if d > len(self.arities):
            raise ValueError(f"d = {d} exceeds the number of fields ({len(self.arities)})")
        multisets = {tuple(sorted(c)) for c in itertools.combinations(self.arities.tolist(), d)}
        return [self._groups_for(m) for m in sorted(multisets)]
