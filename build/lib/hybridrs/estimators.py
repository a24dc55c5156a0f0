"""Estimators: from Monte Carlo draws to a lower confidence bound p_A on p = P[f(Z) = 1].

An estimator is handed ``draw(size, seed) -> positives`` (fresh noisy copies of the input labelled
by the base classifier) and returns an :class:`Estimate`.  Two are offered:

* :class:`FixedN` — n draws, then the one-sided Clopper–Pearson lower bound at level α
  (Clopper and Pearson 1934; Cohen et al. 2019): P[p ≥ p_A] ≥ 1 − α.
* :class:`Sequential` — batches until a confidence *sequence* decides whether a target (d, ε) is
  certified (:mod:`hybridrs.sequential`); its lower end at the stopping time is a valid level-α
  lower bound whatever the stopping rule (Howard et al. 2021).

When a threat needs several estimates (the per-d suffix protocol: one per d), ``familywise=True``
spends α/m on each of the m stages (Bonferroni), so that the whole frontier holds with probability
≥ 1 − α; ``familywise=False`` spends α on each, as the paper's released code does: each budget's
certificate then holds at 1 − α on its own, and the frontier as a whole at 1 − m·α.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from hybridrs import _validate as v
from hybridrs.seeds import input_seed
from hybridrs.sequential import batch_schedule, sequential_test
from hybridrs.stats import clopper_pearson_lower

#: ``draw(size, seed)``: label ``size`` fresh noisy copies drawn from ``seed``; return the positives.
Draw = Callable[[int, int], int]


@dataclass
class Estimate:
    """p_A from ``n`` draws of which ``count`` were positive, at level ``alpha``; ``extra`` holds
    estimator-specific facts (the sequential decision and interval)."""

    p_a: float
    n: int
    count: int
    alpha: float
    extra: dict = field(default_factory=dict)


def _stage_alpha(alpha: float, stages: int, familywise: bool) -> float:
    return alpha / stages if familywise and stages > 1 else alpha


@dataclass(frozen=True)
class FixedN:
    """n draws, one-sided Clopper–Pearson lower bound: p_A = Beta⁻¹(α; k, n − k + 1)."""

    n: int = 10_000
    alpha: float = 0.01
    familywise: bool = True

    def __post_init__(self):
        object.__setattr__(self, "n", v.integer(self.n, "n", minimum=1))
        object.__setattr__(self, "alpha", v.open_unit(self.alpha, "alpha"))

    def stage_alpha(self, stages: int) -> float:
        return _stage_alpha(self.alpha, stages, self.familywise)

    def estimate(self, draw: Draw, seed: int, alpha: float, p_required: float | None = None) -> Estimate:
        k = draw(self.n, seed)
        return Estimate(float(clopper_pearson_lower(k, self.n, alpha)), self.n, k, alpha)


@dataclass(frozen=True)
class Sequential:
    """Draw batches of ``first_batch``, ×``growth``, ... until the confidence sequence decides
    whether p ≥ p_required for the target (``target_d``, ``target_eps``), or ``max_n`` draws.

    P[wrong decision] ≤ α for every p, and p_A = L_τ (the lower end of the sequence at the
    stopping time) is a level-α lower bound on p, so the whole frontier computed from it holds
    (:mod:`hybridrs.sequential`).  Batch j of a stage is seeded ``input_seed(seed, "batch", j)``.
    """

    alpha: float = 0.01
    target_d: int = 1
    target_eps: float = 0.0
    max_n: int = 100_000
    first_batch: int = 100
    growth: float = 2.0
    prior: tuple[float, float] = (1.0, 1.0)
    familywise: bool = True

    def __post_init__(self):
        object.__setattr__(self, "alpha", v.open_unit(self.alpha, "alpha"))
        object.__setattr__(self, "target_d", v.integer(self.target_d, "target_d"))
        object.__setattr__(self, "target_eps", v.nonnegative(self.target_eps, "target_eps"))
        object.__setattr__(self, "max_n", v.integer(self.max_n, "max_n", minimum=1))
        batch_schedule(self.first_batch, self.growth, self.max_n)  # validates the three

    def stage_alpha(self, stages: int) -> float:
        return _stage_alpha(self.alpha, stages, self.familywise)

    def estimate(self, draw: Draw, seed: int, alpha: float, p_required: float | None = None) -> Estimate:
        if p_required is None:
            raise ValueError("Sequential needs the score that certifies its target (p_required)")
        res = sequential_test(lambda size, j: draw(size, input_seed(seed, "batch", j)), p_required, alpha,
                              max_n=self.max_n, first_batch=self.first_batch, growth=self.growth,
                              prior=self.prior)
        return Estimate(float(res.lower), res.n, res.count, alpha,
                        {"decision": res.decision, "upper": float(res.upper), "p_required": float(p_required),
                         "batches": res.batches})
