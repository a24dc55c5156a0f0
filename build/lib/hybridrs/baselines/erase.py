"""Erase-and-check (Kumar et al., 2024) over token sequences, with exact candidate counts.

A prompt P = (p_1, ..., p_L) is declared harmful when a safety filter flags P or any sequence
obtained by erasing from P the tokens an adversary could have added.  The three threat models
and the erasure patterns S ⊆ {1..L} they need, for an erase budget d:

* ``suffix``: an adversarial suffix of at most d tokens.  S = the last i positions, 1 ≤ i ≤ d.
* ``insertion``: at most ``num_blocks`` = k contiguous blocks of at most d tokens each, inserted
  anywhere.  S = a union of at most k intervals of length ≤ d (adjacent blocks merge into a run
  of length up to k·d, which such a union still covers).
* ``infusion``: at most d tokens inserted at arbitrary positions.  S = any set with |S| ≤ d.

Erasing every token is never a candidate (the empty prompt is benign), so the patterns are the
non-empty proper subsets above plus S = ∅ (the prompt itself).

Certificate (Kumar et al., 2024, Thm. 1).  If the filter flags a harmful prompt P, then for every
adversarial prompt P' that adds to P at most what the mode allows, erase-and-check flags P':
the positions of the added tokens form one of P'’s erasure patterns, and erasing them gives back
P exactly.  So the certified accuracy on harmful prompts equals the filter's accuracy on the clean
harmful prompts.  Nothing is certified for benign prompts: erasures can only add false positives.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np
import torch

from hybridrs import _validate as v

MODES = ("suffix", "insertion", "infusion")


def _check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    return mode


def _check_length(length: int) -> int:
    return v.integer(length, "length", minimum=1)


# --------------------------------------------------------------------------------------------
# Counting the erasure patterns
# --------------------------------------------------------------------------------------------

def _intervals_needed(run: int, d: int) -> int:
    return -(-run // d)


def _check_args(mode, length, budget, num_blocks) -> tuple[str, int, int, int, int]:
    """Checked (mode, L, d, k) and m = min(d, L − 1): erasing every token is never a candidate."""
    L = _check_length(length)
    d = v.integer(budget, "budget")
    return _check_mode(mode), L, d, v.integer(num_blocks, "num_blocks", minimum=1), min(d, L - 1)


def num_candidates(mode: str, length: int, budget: int, num_blocks: int = 1) -> int:
    """Number of erasure patterns (the prompt itself included) for a prompt of ``length`` tokens.

    Closed forms, with m = min(d, L − 1) (the full erasure is excluded):

    * suffix:    1 + m
    * infusion:  Σ_{i=0}^{m} C(L, i)
    * insertion, one block: 1 + Σ_{ℓ=1}^{m} (L − ℓ + 1)
    * insertion, k blocks: the number of proper subsets of {1..L} whose maximal runs r_1, r_2, ...
      satisfy Σ ⌈r_j / d⌉ ≤ k (each run of length r needs ⌈r/d⌉ intervals of length ≤ d), counted
      by dynamic programming over positions (O(L²·k)).

    These count position patterns; the filter calls of :func:`erase_and_check` can be fewer, since
    patterns that give the same token sequence (repeated tokens) are evaluated once.
    """
    mode, L, d, k, m = _check_args(mode, length, budget, num_blocks)
    if mode == "suffix":
        return 1 + m
    if mode == "infusion":
        return sum(math.comb(L, i) for i in range(m + 1))
    if d == 0:
        return 1
    if k == 1:
        return 1 + sum(L - ell + 1 for ell in range(1, m + 1))
    # ways[i][c]: patterns on the first i positions, position i kept (or i = 0), using c intervals.
    ways = [[0] * (k + 1) for _ in range(L + 1)]
    ways[0][0] = 1
    total = 0
    for i in range(L + 1):
        for c in range(k + 1):
            w = ways[i][c]
            if not w:
                continue
            if i == L:
                total += w
                continue
            # next: keep position i + 1, or erase a run of length r starting at i + 1.
            ways[i + 1][c] += w
            for r in range(1, L - i + 1):
                c2 = c + _intervals_needed(r, d)
                if c2 > k:
                    break
                if i + r == L:
                    total += w  # the run reaches the end
                else:
                    ways[i + r + 1][c2] += w
    return total - (1 if _full_erasure_allowed(L, d, k) else 0)


def _full_erasure_allowed(L: int, d: int, k: int) -> bool:
    return _intervals_needed(L, d) <= k if d > 0 else False


def erasure_patterns(mode: str, length: int, budget: int, num_blocks: int = 1) -> list[tuple[int, ...]]:
    """All erasure patterns (sorted position tuples, () = the prompt itself), by enumeration.

    Exponential for infusion; meant for tests and short prompts.  Each pattern appears once.
    """
    mode, L, d, k, m = _check_args(mode, length, budget, num_blocks)
    if mode == "suffix":
        return [tuple(range(L - i, L)) for i in range(m + 1)]
    if mode == "infusion":
        return [c for i in range(m + 1) for c in itertools.combinations(range(L), i)]
    if d == 0:
        return [()]
    blocks = [tuple(range(s, s + ell)) for ell in range(1, min(d, L) + 1) for s in range(L - ell + 1)]
    seen = {()}
    for r in range(1, k + 1):
        for combo in itertools.combinations_with_replacement(blocks, r):
            s = tuple(sorted(set().union(*combo)))
            if len(s) < L:
                seen.add(s)
    return sorted(seen, key=lambda s: (len(s), s))


def _pattern_budget(mode: str, pattern: tuple[int, ...], k: int) -> int:
    """The smallest budget d whose candidate set contains ``pattern``."""
    if not pattern:
        return 0
    if mode in ("suffix", "infusion"):
        return len(pattern)
    runs, start = [], pattern[0]
    for a, b in zip(pattern, pattern[1:] + (None,)):
        if b != a + 1:
            runs.append(a - start + 1)
            start = b
    # smallest d with Σ ⌈r/d⌉ ≤ k
    for d in range(1, max(runs) + 1):
        if sum(_intervals_needed(r, d) for r in runs) <= k:
            return d
    return max(runs)  # pragma: no cover - the loop always returns


def _candidates(tokens: tuple[int, ...], mode: str, budget: int, k: int) -> dict[tuple[int, ...], int]:
    """Distinct erased sequences → the smallest budget that produces them."""
    L = len(tokens)
    out: dict[tuple[int, ...], int] = {}
    if mode == "suffix":
        for i in range(min(budget, L - 1) + 1):
            out.setdefault(tokens[: L - i], i)
        return out
    if mode == "infusion":
        for i in range(min(budget, L - 1) + 1):
            for c in itertools.combinations(range(L), i):
                keep = tuple(t for j, t in enumerate(tokens) if j not in c) if c else tokens
                out.setdefault(keep, i)
        return out
    for pat in erasure_patterns(mode, L, budget, k):
        gone = set(pat)
        seq = tuple(t for j, t in enumerate(tokens) if j not in gone)
        need = _pattern_budget(mode, pat, k)
        if seq not in out or need < out[seq]:
            out[seq] = need
    return out


# --------------------------------------------------------------------------------------------
# Erase-and-check
# --------------------------------------------------------------------------------------------

@dataclass
class EraseResult:
    """Decisions of erase-and-check for a batch of prompts.

    ``harmful[i]``: the decision for prompt i; ``calls[i]``: distinct sequences the filter
    evaluated for it (the prompt included); ``seconds``: wall time of the whole batch.
    """

    harmful: np.ndarray
    calls: np.ndarray
    seconds: float


def _as_tuples(prompts) -> list[tuple[int, ...]]:
    if isinstance(prompts, torch.Tensor):
        if prompts.ndim == 1:
            prompts = [prompts]
        else:
            prompts = list(prompts)
    out = []
    for i, p in enumerate(prompts):
        t = tuple(int(x) for x in (p.tolist() if isinstance(p, torch.Tensor) else p))
        if not t:
            raise ValueError(f"prompts[{i}] is empty: erase-and-check needs at least one token")
        out.append(t)
    if not out:
        raise ValueError("prompts is empty")
    return out


def evaluate_sequences(filter: Callable, seqs: Sequence[tuple[int, ...]], batch_size: int = 256) -> np.ndarray:
    """Labels of ``filter`` on variable-length token sequences, batching rows of equal length.

    The filter is called as ``filter(tokens, None)`` on (b, ℓ) LongTensors without padding, the
    interface :class:`hybridrs.smoothing.HybridSmooth` also uses; it returns b labels in {0, 1}.
    """
    batch_size = v.integer(batch_size, "batch_size", minimum=1)
    out = np.zeros(len(seqs), dtype=bool)
    by_len: dict[int, list[int]] = {}
    for i, s in enumerate(seqs):
        by_len.setdefault(len(s), []).append(i)
    for ell in sorted(by_len):
        idx = by_len[ell]
        for j in range(0, len(idx), batch_size):
            part = idx[j: j + batch_size]
            x = torch.tensor([seqs[i] for i in part], dtype=torch.long)
            y = torch.as_tensor(filter(x, None)).reshape(-1)
            if y.numel() != len(part):
                raise ValueError(f"filter returned {y.numel()} labels for {len(part)} sequences")
            out[part] = (y.long() == 1).cpu().numpy()
    return out


def erase_and_check(filter: Callable, prompts, mode: str, budget: int, num_blocks: int = 1,
                    batch_size: int = 256) -> EraseResult:
    """Erase-and-check (Kumar, Agarwal, Srinivas, Li, Feizi and Lakkaraju, 2024, Alg. 1–3).

    harmful(P) = filter(P) ∨ ⋁_{S ∈ patterns(mode, d)} filter(P with S erased).

    ``prompts``: token-id sequences (lists, 1-D tensors, or a 2-D tensor of equal-length rows) of
    *content* tokens (no [CLS]/[SEP]; the filter adds what its model needs).  Distinct erased
    sequences are evaluated once per prompt, in length-grouped batches across all prompts.
    """
    mode = _check_mode(mode)
    budget = v.integer(budget, "budget")
    k = v.integer(num_blocks, "num_blocks", minimum=1)
    toks = _as_tuples(prompts)
    t0 = time.perf_counter()
    cands = [list(_candidates(t, mode, budget, k)) for t in toks]
    flat = [s for c in cands for s in c]
    labels = evaluate_sequences(filter, flat, batch_size)
    harmful, calls, pos = [], [], 0
    for c in cands:
        harmful.append(bool(labels[pos: pos + len(c)].any()))
        calls.append(len(c))
        pos += len(c)
    return EraseResult(np.array(harmful), np.array(calls), time.perf_counter() - t0)


def erase_and_check_curve(filter: Callable, prompts, mode: str, budgets: Iterable[int], num_blocks: int = 1,
                          batch_size: int = 256) -> np.ndarray:
    """Erase-and-check decisions at several budgets from one enumeration at the largest.

    The candidate set grows with the budget, so ``harmful(P, d)`` is true iff some flagged
    candidate needs a budget ≤ d.  Returns a bool array of shape (len(prompts), len(budgets)),
    equal column by column to :func:`erase_and_check` at each budget, at the cost of the largest.
    """
    mode = _check_mode(mode)
    budgets = [v.integer(b, "budgets") for b in budgets]
    if not budgets:
        raise ValueError("budgets is empty")
    k = v.integer(num_blocks, "num_blocks", minimum=1)
    toks = _as_tuples(prompts)
    cands = [_candidates(t, mode, max(budgets), k) for t in toks]
    flat = [s for c in cands for s in c]
    labels = evaluate_sequences(filter, flat, batch_size)
    first = np.full(len(toks), np.inf)  # smallest budget at which each prompt is flagged
    pos = 0
    for i, c in enumerate(cands):
        need = np.array(list(c.values()), dtype=float)
        hit = labels[pos: pos + len(c)]
        if hit.any():
            first[i] = need[hit].min()
        pos += len(c)
    return first[:, None] <= np.array(budgets, dtype=float)[None, :]
