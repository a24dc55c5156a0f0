"""Monte Carlo smoothing around a base classifier: sampling, estimation and the bound, kept apart.

``HybridSmooth`` smooths a binary base classifier f(tokens, image) ∈ {0, 1} (1 = the protected
class, e.g. "unsafe") with text noise Z_s ~ K(· | s) and image noise Z_v = v + σ·N(0, I) drawn
together in batches on the classifier's device.  Its one certification call,

    HybridSmooth(f, sigma=σ, kernel=K).certify(tokens, image, threat=..., estimator=..., tau=τ, seed=s)

takes the **threat** (:mod:`hybridrs.threats`: ℓ0 over chosen positions, append-only suffix per d,
shared-D) and the **estimator** (:mod:`hybridrs.estimators`: fixed-n Clopper–Pearson, sequential
confidence sequence) as objects, samples (``count``), estimates p_A, and computes the bound
(:mod:`hybridrs.certify`).  Every caller — the chapters, the command line, the Ray workers, the
benchmarks — certifies through it.  ``GaussianSmooth`` is Cohen et al.'s two-stage image-only
smoothing for multi-class models, with abstention.

Guarantee of ``HybridSmooth.certify`` (Delattre et al. 2026): with probability at least 1 − α over
the Monte Carlo draws, for every text budget d with ``cert.certified(d, ε)``, every s' within the
threat's d token changes of s and every v' with ‖v' − v‖₂ ≤ ε satisfy P[f(Z') = 1] ≥ τ, where Z' is
the smoothing noise around (s', v').  (With several estimates and ``familywise=False``, each budget's
statement holds at 1 − α on its own; see :mod:`hybridrs.estimators`.)
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from scipy.stats import binomtest

from hybridrs import _validate as v
from hybridrs._progress import progress_bar
from hybridrs.certify import cohen_radius, cohen_required_p_a, frontier, required_p_a, worst_case
from hybridrs.estimators import FixedN, Sequential
from hybridrs.seeds import input_seed
from hybridrs.stats import clopper_pearson_lower
from hybridrs.threats import L0

__all__ = ["ABSTAIN", "Certificate", "GaussianSmooth", "HybridSmooth", "input_seed"]

ABSTAIN = -1


@dataclass
class Certificate:
    """Result of one hybrid certification; the one place that says what "certified" means.

    ``radii[d]`` is r*(d) for d = 0..D, the certified image ℓ2 radius at text budget d: −inf when
    (d, 0) is not certified, 0.0 when only ε = 0 is, NaN when the stage that would certify d was not
    run (the per-d protocol stops at its first failure).  ``p_a[d]`` is the lower confidence bound
    that certified budget d; ``counts``, ``draws`` and ``p_a_per_stage`` are per Monte Carlo stage.
    """

    threat: str
    radii: np.ndarray
    p_a: np.ndarray
    counts: list
    draws: list
    p_a_per_stage: list
    sigma: float | None
    tau: float
    alpha: float
    alpha_per_stage: float
    seconds_sampling: float
    seconds_certify: float
    extra: dict = field(default_factory=dict)

    @property
    def n(self) -> int:
        """Forward passes spent (all stages)."""
        return int(sum(self.draws))

    @property
    def count(self) -> int:
        """Positive draws (all stages)."""
        return int(sum(self.counts))

    @property
    def d_max(self) -> int:
        """The largest text budget this certificate speaks of (D)."""
        return len(self.radii) - 1

    def certified(self, d: int, eps: float = 0.0) -> bool:
        """Whether (d, ε) is certified: p_adv(d, ε) ≥ τ, i.e. r*(d) ≥ ε (never for −inf or NaN)."""
        d = v.integer(d, "d")
        eps = v.nonnegative(eps, "eps")
        return d <= self.d_max and bool(self.radii[d] >= eps)

    def budget(self, eps: float = 0.0, strict: bool = False) -> int:
        """Certified text budget at image radius ε: the largest d such that every d' ≤ d is
        certified at (d', ε); with ``strict``, r*(d') > ε is required (at ε = 0 this is the released
        code's ``d_cert``: some positive image radius at every d' ≤ d).  −1 when d = 0 fails."""
        eps = v.nonnegative(eps, "eps")
        ok = (self.radii > eps) if strict else (self.radii >= eps)
        return int(np.logical_and.accumulate(ok).sum()) - 1

    @property
    def d_certified(self) -> int:
        """``budget(0.0)``: the largest d whose (d', 0) is certified for every d' ≤ d (−1 if none)."""
        return self.budget(0.0)

    def as_row(self) -> dict:
        """A flat record: threat, n, count, p_a (of budget 0), r_0..r_D, d_certified, timings, extra."""
        row = {"threat": self.threat, "n": self.n, "count": self.count, "p_a": float(self.p_a[0])}
        row.update({f"r_{d}": float(r) for d, r in enumerate(self.radii)})
        row.update(d_certified=self.d_certified, seconds_sampling=self.seconds_sampling,
                   seconds_certify=self.seconds_certify)
        row.update(self.extra)
        return row

    def as_dict(self) -> dict:
        out = asdict(self)
        out["radii"] = [float(r) for r in self.radii]
        out["p_a"] = [float(p) for p in self.p_a]
        out["d_certified"] = self.d_certified
        out["n"], out["count"] = self.n, self.count
        return out


def _device_of(base, device):
    if device is not None:
        return torch.device(device)
    if isinstance(base, torch.nn.Module):
        for p in base.parameters():
            return p.device
        for b in base.buffers():
            return b.device
    return torch.device("cpu")


def _generator(seed: int, device: torch.device) -> torch.Generator:
    gen = torch.Generator(device=device)
    gen.manual_seed(v.integer(seed, "seed"))
    return gen


def _check_image(image, device) -> torch.Tensor:
    if not isinstance(image, torch.Tensor):
        image = torch.as_tensor(image)
    if not image.dtype.is_floating_point:
        raise ValueError(f"image must be a floating-point tensor, got dtype {image.dtype}")
    if image.ndim < 1 or image.numel() == 0:
        raise ValueError(f"image must be a non-empty tensor of one input (e.g. (C, H, W)), got shape {tuple(image.shape)}")
    if not torch.isfinite(image).all():
        raise ValueError("image contains NaN or infinite values")
    return image.to(device)


class HybridSmooth:
    """Hybrid (text + image) smoothing of a binary classifier.

    Parameters
    ----------
    base: ``f(tokens, images) -> labels``: tokens a LongTensor (b, L) or None, images a float tensor
        (b, *image_shape) or None; returns b labels in {0, 1} (bool or integer), on any device.
    sigma: Gaussian noise level on the image, in the pixel units the certificate speaks of (noise is
        added before any normalisation inside ``base``); None for text-only smoothing.
    kernel: discrete text kernel (``UniformKernel``, ``AbsorbingKernel``, ...); None for image-only.
    batch_size: noisy copies per forward pass.
    device: where noise is drawn and ``base`` runs (default: the device of ``base``'s parameters;
        a base classifier that is not an ``nn.Module`` runs on the CPU unless this says otherwise).
    progress: show a tqdm bar while sampling.
    """

    def __init__(self, base, *, sigma: float | None = None, kernel=None, batch_size: int = 1000,
                 device=None, progress: bool = True):
        if not callable(base):
            raise ValueError("base must be callable: f(tokens, images) -> labels")
        if sigma is None and kernel is None:
            raise ValueError("sigma and kernel are both None: nothing would be smoothed")
        self.base = base
        self.sigma = None if sigma is None else v.positive(sigma, "sigma")
        self.kernel = kernel
        self.batch_size = v.integer(batch_size, "batch_size", minimum=1)
        self.device = _device_of(base, device)
        self.progress = progress

    def _inputs(self, tokens, image):
        if self.kernel is not None and tokens is None:
            raise ValueError("tokens is required when a text kernel is set")
        if self.sigma is not None and image is None:
            raise ValueError("image is required when sigma is set")
        if tokens is not None:
            tokens = torch.as_tensor(tokens).to(self.device)
            if tokens.ndim != 1 or tokens.numel() == 0:
                raise ValueError(f"tokens must be a non-empty 1-D sequence of ids, got shape {tuple(tokens.shape)}")
        if image is not None:
            image = _check_image(image, self.device)
        return tokens, image

    @torch.no_grad()
    def count(self, tokens, image, n: int, *, seed: int = 0, mask=None) -> int:
        """Number of the n noisy copies that ``base`` labels 1 (sampling alone, no bound).

        Text and image noise are drawn from one seeded generator on ``device``, batch by batch, so
        the same seed, batch size and device give the same count.  ``mask`` limits the text noise
        to some positions.  Counts accumulate on the device: the host reads them once, at the end.
        """
        n = v.integer(n, "n", minimum=1)
        tokens, image = self._inputs(tokens, image)
        if mask is not None:
            mask = torch.as_tensor(mask).to(self.device)
        gen = _generator(seed, self.device)
        total = torch.zeros((), dtype=torch.long, device=self.device)
        bad = torch.zeros((), dtype=torch.bool, device=self.device)
        bar = progress_bar(total=n, show=self.progress, desc="sampling", unit="draw", leave=False)
        remaining = n
        while remaining > 0:
            b = min(self.batch_size, remaining)
            noisy_t = None
            if tokens is not None:
                noisy_t = (self.kernel.sample(tokens, b, generator=gen, mask=mask) if self.kernel is not None
                           else tokens.expand(b, -1))
            noisy_v = None
            if image is not None:
                noisy_v = image.expand(b, *image.shape)
                if self.sigma is not None:
                    noise = torch.randn((b, *image.shape), generator=gen, device=self.device, dtype=image.dtype)
                    noisy_v = noisy_v + self.sigma * noise
            labels = torch.as_tensor(self.base(noisy_t, noisy_v))
            if labels.shape != (b,):
                raise ValueError(f"base returned shape {tuple(labels.shape)}, expected ({b},)")
            labels = labels.to(self.device)
            bad |= ((labels != 0) & (labels != 1)).any()
            total += (labels == 1).sum()
            remaining -= b
            bar.update(b)
        bar.close()
        if bool(bad):
            raise ValueError("base must return labels in {0, 1} (1 = the protected class)")
        return int(total)

    def radii(self, p_a: float, tau: float, d_max: int) -> np.ndarray:
        """The certificate from a lower bound p_A: r*(d) for d = 0..d_max of this smoothing.

        Image-only: Cohen's radius (one entry); text-only: 0.0 where the ε = 0 knapsack
        certificate holds for every d' ≤ d, else −inf; hybrid: the full frontier.
        """
        if self.kernel is None:
            return np.array([cohen_radius(p_a, self.sigma, tau)])
        if self.sigma is None:
            ok = [worst_case(p_a, self.kernel, d, 0.0, 1.0) >= tau for d in range(d_max + 1)]
            return np.where(np.logical_and.accumulate(ok), 0.0, -np.inf)
        return frontier(p_a, self.kernel, d_max, self.sigma, tau)

    def required_p_a(self, d: int, eps: float, tau: float) -> float:
        """The smallest p_A that certifies (d, ε) with this smoothing (inf if none does)."""
        if self.kernel is None:
            if d != 0:
                raise ValueError("image-only smoothing (no kernel) certifies d = 0 only")
            return cohen_required_p_a(eps, self.sigma, tau)
        if self.sigma is None and eps > 0:
            raise ValueError("eps > 0 needs image smoothing (sigma); text-only smoothing certifies eps = 0 only")
        return required_p_a(self.kernel, d, eps, 1.0 if self.sigma is None else self.sigma, tau)

    def certify(self, tokens, image, n: int | None = None, *, alpha: float = 0.01, tau: float = 0.5,
                threat=None, estimator=None, seed: int = 0) -> Certificate:
        """Certify one input against ``threat`` with ``estimator`` (module docstring).

        ``threat``: :class:`~hybridrs.threats.L0` (default, d_max = 8), ``Suffix(m, filler_id)``
        per-d or ``shared=True``; ignored for image-only smoothing (budget 0 only).
        ``estimator``: :class:`~hybridrs.estimators.FixedN` or ``Sequential``; ``n`` and ``alpha``
        are the shorthand for ``FixedN(n, alpha)``.  Stage k of a threat with several stages draws
        from ``input_seed(seed, "stage", k)``, a one-stage threat from ``seed`` itself.

        Returns a :class:`Certificate` whose radii cover d = 0..threat.d_max.
        """
        tau = v.open_unit(tau, "tau")
        if estimator is None:
            if n is None:
                raise ValueError("give n (draws) or an estimator")
            estimator = FixedN(n, alpha)
        elif n is not None:
            raise ValueError("give either n (with alpha) or an estimator, not both")
        if self.kernel is None:
            threat = L0(d_max=0)
        elif threat is None:
            threat = L0()
        tokens, image = self._inputs(tokens, image)
        if tokens is not None:
            tokens = threat.prepare(tokens)
        stages = threat.stages(tokens.numel() if tokens is not None else 0, device=self.device)
        sequential = isinstance(estimator, Sequential)
        if sequential and estimator.target_d > threat.d_max:
            raise ValueError(f"the target d = {estimator.target_d} exceeds the threat's d_max = {threat.d_max}")
        if len(stages) > 1 and sequential:
            raise ValueError(f"the {threat.name} threat needs one estimate per d; sequential estimation "
                             "supports one-stage threats (l0, suffix-shared, image-only)")
        D = threat.d_max
        alpha_stage = estimator.stage_alpha(len(stages))
        radii = np.full(D + 1, np.nan)
        p_as = np.full(D + 1, np.nan)
        counts, draws, stage_p, extra = [], [], [], {}
        t_sample = t_cert = 0.0
        for k, stage in enumerate(stages):
            stage_seed = seed if len(stages) == 1 else input_seed(seed, "stage", k)
            p_req = self.required_p_a(estimator.target_d, estimator.target_eps, tau) if sequential else None
            t0 = time.perf_counter()
            est = estimator.estimate(lambda size, s: self.count(tokens, image, size, seed=s, mask=stage.mask),
                                     stage_seed, alpha_stage, p_req)
            t1 = time.perf_counter()
            r = self.radii(est.p_a, tau, max(stage.budgets))
            t_cert += time.perf_counter() - t1
            t_sample += t1 - t0
            for d in stage.budgets:
                radii[d], p_as[d] = r[d], est.p_a
            counts.append(est.count)
            draws.append(est.n)
            stage_p.append(est.p_a)
            extra.update(est.extra)
            if threat.stop_early and not (r[max(stage.budgets)] >= 0):
                break
        return Certificate(threat=threat.name if self.kernel is not None else "image-only", radii=radii,
                           p_a=p_as, counts=counts, draws=draws, p_a_per_stage=stage_p, sigma=self.sigma, tau=tau,
                           alpha=estimator.alpha, alpha_per_stage=alpha_stage, seconds_sampling=t_sample,
                           seconds_certify=t_cert, extra=extra)


class GaussianSmooth:
    """Cohen, Rosenfeld and Kolter (2019): g(x) = argmax_c P[f(x + σε) = c], ε ~ N(0, I).

    ``certify`` returns (c, R): with probability ≥ 1 − α over the draws, g predicts c at every x'
    with ‖x' − x‖₂ < R = σ·Φ⁻¹(p_A), p_A the Clopper–Pearson lower bound on P[f = c] from n draws
    made *after* c was chosen from n0 separate draws; it abstains (−1, 0.0) when p_A ≤ 1/2.
    ``predict`` returns the top class when a two-sided binomial test of the top two counts rejects
    equality at level α, else abstains; a non-abstained answer differs from g(x) with probability ≤ α.
    """

    def __init__(self, base, num_classes: int, sigma: float, *, batch_size: int = 1000, device=None,
                 progress: bool = False):
        if not callable(base):
            raise ValueError("base must be callable: f(images) -> logits or labels")
        self.base = base
        self.num_classes = v.integer(num_classes, "num_classes", minimum=2)
        self.sigma = v.positive(sigma, "sigma")
        self.batch_size = v.integer(batch_size, "batch_size", minimum=1)
        self.device = _device_of(base, device)
        self.progress = progress

    @torch.no_grad()
    def counts(self, x, n: int, *, seed: int = 0) -> np.ndarray:
        """Class counts of f over n noisy copies of x (shape (C, H, W))."""
        n = v.integer(n, "n", minimum=1)
        x = _check_image(x, self.device)
        gen = _generator(seed, self.device)
        out = torch.zeros(self.num_classes, dtype=torch.long, device=self.device)
        bad = torch.zeros((), dtype=torch.bool, device=self.device)
        remaining = n
        bar = progress_bar(total=n, show=self.progress, desc="sampling", unit="draw", leave=False)
        while remaining > 0:
            b = min(self.batch_size, remaining)
            noise = torch.randn((b, *x.shape), generator=gen, device=self.device, dtype=x.dtype)
            pred = torch.as_tensor(self.base(x.expand(b, *x.shape) + self.sigma * noise)).to(self.device)
            if pred.shape == (b, self.num_classes):
                pred = pred.argmax(dim=1)
            elif pred.shape != (b,) or pred.dtype.is_floating_point:
                raise ValueError(f"base must return ({b}, {self.num_classes}) logits or ({b},) integer labels, "
                                 f"got shape {tuple(pred.shape)} and dtype {pred.dtype}")
            # Checked once at the end: a per-batch check would make the host wait for every batch.
            bad |= ((pred < 0) | (pred >= self.num_classes)).any()
            out += torch.bincount(pred.long().clamp(0, self.num_classes - 1), minlength=self.num_classes)
            remaining -= b
            bar.update(b)
        bar.close()
        if bool(bad):
            raise ValueError(f"base returned labels outside 0..{self.num_classes - 1}")
        return out.cpu().numpy()

    def predict(self, x, n: int, alpha: float, *, seed: int = 0) -> int:
        alpha = v.open_unit(alpha, "alpha")
        c = self.counts(x, n, seed=seed)
        top2 = np.argsort(c)[::-1][:2]
        n_a, n_b = int(c[top2[0]]), int(c[top2[1]])
        if binomtest(n_a, n_a + n_b, 0.5).pvalue > alpha:
            return ABSTAIN
        return int(top2[0])

    def certify(self, x, n0: int, n: int, alpha: float, *, seed: int = 0) -> tuple[int, float]:
        alpha = v.open_unit(alpha, "alpha")
        guess = int(np.argmax(self.counts(x, n0, seed=seed)))
        # Fresh draws for estimation: a different stream than the selection draws.
        c = self.counts(x, n, seed=seed + 1_000_003)
        p_a = float(clopper_pearson_lower(int(c[guess]), n, alpha))
        if p_a <= 0.5:
            return ABSTAIN, 0.0
        return guess, float(cohen_radius(p_a, self.sigma, 0.5))
