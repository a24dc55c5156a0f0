"""Monte Carlo smoothing around a base classifier: sampling, estimation and the bound, kept apart.

``HybridSmooth`` smooths a binary base classifier f(tokens, image) ∈ {0, 1} (1 = the protected
class, e.g. "unsafe") with text noise Z_s ~ K(· | s) and image noise Z_v = v + σ·N(0, I) drawn
together in batches on the classifier's device.  ``GaussianSmooth`` is Cohen et al.'s two-stage
image-only smoothing for multi-class models, with abstention.

Guarantee of ``HybridSmooth.certify`` (Delattre et al. 2026): with probability at least 1 − α over
the Monte Carlo draws, for every d ≤ d_max with r*(d) ≥ 0, every s' with at most d token changes and
every v' with ‖v' − v‖₂ ≤ r*(d) satisfy P[f(Z') = 1] ≥ τ, where Z' is the smoothing noise around
(s', v').  p_A is the one-sided Clopper–Pearson lower bound on P[f(Z) = 1] from n fresh draws.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from scipy.stats import binomtest

from hybridrs import _validate as v
from hybridrs._progress import progress_bar
from hybridrs.certify import cohen_radius, frontier, worst_case
from hybridrs.stats import clopper_pearson_lower

ABSTAIN = -1


@dataclass
class Certificate:
    """Result of one hybrid certification.

    ``radii[d]`` is r*(d) for d = 0..d_max: the certified image ℓ2 radius at text budget d, −inf
    when (d, 0) is not certified and 0.0 when only ε = 0 is.
    """

    n: int
    count: int
    p_a: float
    radii: np.ndarray
    sigma: float | None
    tau: float
    alpha: float
    seconds_sampling: float
    seconds_certify: float
    extra: dict = field(default_factory=dict)

    @property
    def d_certified(self) -> int:
        """Largest d whose (d, 0) is certified (−1 when none is)."""
        ok = np.flatnonzero(self.radii >= 0)
        return int(ok.max()) if ok.size else -1

    def as_dict(self) -> dict:
        out = asdict(self)
        out["radii"] = [float(r) for r in self.radii]
        out["d_certified"] = self.d_certified
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
        (b, *image_shape) or None; returns b labels in {0, 1} (bool or integer).
    sigma: Gaussian noise level on the image, in the pixel units the certificate speaks of (noise is
        added before any normalisation inside ``base``); None for text-only smoothing.
    kernel: discrete text kernel (``UniformKernel``, ``AbsorbingKernel``, ...); None for image-only.
    batch_size: noisy copies per forward pass.
    device: where noise is drawn and ``base`` runs (default: the device of ``base``'s parameters).
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
        """Number of the n noisy copies that ``base`` labels 1.

        Text and image noise are drawn from one seeded generator, batch by batch, so the same seed
        gives the same count.  ``mask`` limits the text noise to some positions (suffix threats).
        """
        n = v.integer(n, "n", minimum=1)
        tokens, image = self._inputs(tokens, image)
        gen = _generator(seed, self.device)
        total = 0
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
            if ((labels != 0) & (labels != 1)).any():
                raise ValueError("base must return labels in {0, 1} (1 = the protected class)")
            total += int((labels == 1).sum().item())
            remaining -= b
            bar.update(b)
        bar.close()
        return total

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

    def certify(self, tokens, image, n: int, *, alpha: float = 0.01, tau: float = 0.5, d_max: int = 8,
                seed: int = 0, mask=None) -> Certificate:
        """Estimate p_A from n draws and certify the whole (d, ε) frontier from it.

        One Monte Carlo run serves every d: the ℓ0 threat's kernel does not depend on d, so r*(d)
        for d = 0..d_max follows from the same p_A (the certificate, not the sampling, loops over d).
        Image-only smoothing (no kernel) gives Cohen's radius in ``radii[0]`` and d_max is set to 0.
        """
        alpha = v.open_unit(alpha, "alpha")
        tau = v.open_unit(tau, "tau")
        d_max = v.integer(d_max, "d_max")
        t0 = time.perf_counter()
        k = self.count(tokens, image, n, seed=seed, mask=mask)
        t1 = time.perf_counter()
        p_a = float(clopper_pearson_lower(k, n, alpha))
        radii = self.radii(p_a, tau, d_max)
        t2 = time.perf_counter()
        return Certificate(n=n, count=k, p_a=p_a, radii=radii, sigma=self.sigma, tau=tau, alpha=alpha,
                           seconds_sampling=t1 - t0, seconds_certify=t2 - t1)


    def certify_suffix(self, tokens, image, n: int, *, m: int = 8, filler_id: int, alpha: float = 0.01,
                       tau: float = 0.5, shared: bool = False, seed: int = 0) -> Certificate:
        """Certify the append-only suffix threat: a suffix of up to m tokens.

        The input is padded to s ∥ cᵐ (filler c); a suffix of length d overwrites the first d
        filler slots (Delattre et al. 2026, released code).  Two protocols:

        * per-d (``shared=False``): for each d = 1..m the kernel noises only the first d slots, so
          p_A is re-estimated for every d (m Monte Carlo runs, n draws each);
        * shared-D (``shared=True``): all m slots are noised once and every d ≤ m is certified
          from one p_A (one run; radii are somewhat smaller since more positions are noised).

        ``radii[d]`` is r*(d) for d = 0..m; ``extra`` holds the per-d counts and p_A values.
        """
        m = v.integer(m, "m", minimum=1)
        if self.kernel is None:
            raise ValueError("certify_suffix needs a text kernel")
        alpha = v.open_unit(alpha, "alpha")
        tau = v.open_unit(tau, "tau")
        tokens, _ = self._inputs(tokens, image)
        filler = torch.full((m,), v.integer(filler_id, "filler_id"), dtype=tokens.dtype, device=tokens.device)
        padded = torch.cat([tokens, filler])
        L = tokens.numel()
        if shared:
            mask = torch.zeros(L + m, dtype=torch.bool, device=tokens.device)
            mask[L:] = True
            cert = self.certify(padded, image, n, alpha=alpha, tau=tau, d_max=m, seed=seed, mask=mask)
            cert.extra.update(threat="suffix-shared", counts=[cert.count], p_a_per_d=[cert.p_a])
            return cert
        radii, counts, p_as = [], [], []
        t_sample = t_cert = 0.0
        for d in range(1, m + 1):
            mask = torch.zeros(L + m, dtype=torch.bool, device=tokens.device)
            mask[L:L + d] = True
            c = self.certify(padded, image, n, alpha=alpha, tau=tau, d_max=d, seed=seed + d, mask=mask)
            if d == 1:
                radii.append(c.radii[0])
            radii.append(c.radii[d])
            counts.append(c.count)
            p_as.append(c.p_a)
            t_sample += c.seconds_sampling
            t_cert += c.seconds_certify
        return Certificate(n=n, count=counts[0], p_a=p_as[0], radii=np.array(radii), sigma=self.sigma, tau=tau,
                           alpha=alpha, seconds_sampling=t_sample, seconds_certify=t_cert,
                           extra={"threat": "suffix-per-d", "counts": counts, "p_a_per_d": p_as})


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
        remaining = n
        bar = progress_bar(total=n, show=self.progress, desc="sampling", unit="draw", leave=False)
        while remaining > 0:
            b = min(self.batch_size, remaining)
            noise = torch.randn((b, *x.shape), generator=gen, device=self.device, dtype=x.dtype)
            pred = torch.as_tensor(self.base(x.expand(b, *x.shape) + self.sigma * noise))
            if pred.shape == (b, self.num_classes):
                pred = pred.argmax(dim=1)
            elif pred.shape != (b,) or pred.dtype.is_floating_point:
                raise ValueError(f"base must return ({b}, {self.num_classes}) logits or ({b},) integer labels, "
                                 f"got shape {tuple(pred.shape)} and dtype {pred.dtype}")
            elif ((pred < 0) | (pred >= self.num_classes)).any():
                raise ValueError(f"base returned labels outside 0..{self.num_classes - 1}")
            out += torch.bincount(pred.long(), minlength=self.num_classes)
            remaining -= b
            bar.update(b)
        bar.close()
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
