"""Tests of hybridrs.smoothing: HybridSmooth (text + image noise) and Cohen's GaussianSmooth.

The base classifiers here are thresholds on one coordinate of the noisy input, so the probability
that they output 1 is known in closed form (Φ of a standardised threshold) and every statistical
claim of the module can be checked against the truth.  Statistical tests use many seeds and
thresholds on p-values of 1e-4 or less, so a correct implementation fails them with negligible
probability (and, the seeds being fixed, deterministically never), while a wrong one (a biased
count, the point estimate instead of the lower bound, reused draws) fails them by a wide margin.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.special import ndtr, ndtri

from hybridrs.certify import cohen_radius, frontier
from hybridrs.kernels import AbsorbingKernel, UniformKernel
from hybridrs.smoothing import ABSTAIN, GaussianSmooth, HybridSmooth
from hybridrs.stats import clopper_pearson_lower
from hybridrs.threats import L0

SIGMA = 0.5
SHAPE = (1, 2, 2)  # a tiny "image": the smoothing code treats it like any (C, H, W) input


def _threshold_image(t: float):
    """Image part of a base classifier: 1 iff the first noisy pixel exceeds t."""
    return lambda images: (images.reshape(images.shape[0], -1)[:, 0] > t).long()


def _hybrid_base(t: float):
    img = _threshold_image(t)
    return lambda tokens, images: img(images)


def _true_p(x0: float, t: float, sigma: float) -> float:
    """P[x0 + σZ > t] = Φ((x0 − t)/σ)."""
    return float(ndtr((x0 - t) / sigma))


def _image(x0: float = 0.0) -> torch.Tensor:
    x = torch.zeros(SHAPE)
    x.view(-1)[0] = x0
    return x


class _Recorder:
    """Wraps a base classifier and keeps every batch it is shown."""

    def __init__(self, fn, hybrid: bool):
        self.fn, self.hybrid = fn, hybrid
        self.tokens, self.images = [], []

    def __call__(self, *args):
        if self.hybrid:
            tokens, images = args
            self.tokens.append(None if tokens is None else tokens.clone())
            self.images.append(None if images is None else images.clone())
        else:
            (images,) = args
            self.images.append(images.clone())
        return self.fn(*args)


# --------------------------------------------------------------------------------------------
# Counts: Binomial with the right p, reproducible, batch-size independent
# --------------------------------------------------------------------------------------------

T = 0.3
P_TRUE = _true_p(0.0, T, SIGMA)  # Φ(−0.6) ≈ 0.274


def _counts(smooth, n, seeds, hybrid=True):
    x = _image()
    if hybrid:
        return np.array([smooth.count(None, x, n, seed=s) for s in seeds])
    return np.array([smooth.counts(x, n, seed=s)[1] for s in seeds])


@pytest.mark.parametrize("hybrid", [True, False], ids=["HybridSmooth", "GaussianSmooth"])
def test_count_is_binomial_with_the_true_probability(hybrid):
    n, seeds = 400, range(300)
    if hybrid:
        smooth = HybridSmooth(_hybrid_base(T), sigma=SIGMA, progress=False)
    else:
        smooth = GaussianSmooth(_threshold_image(T), num_classes=2, sigma=SIGMA)
    k = _counts(smooth, n, seeds, hybrid)
    # The total over independent seeds is Binomial(300·n, p): its two-sided exact test.
    assert stats.binomtest(int(k.sum()), n * len(k), P_TRUE).pvalue > 1e-4
    # The spread across seeds is that of a Binomial(n, p) (variance n·p·(1 − p)):
    # (m − 1)·s²/σ² ~ χ²(m − 1) approximately.
    chi2 = (len(k) - 1) * k.var(ddof=1) / (n * P_TRUE * (1 - P_TRUE))
    assert stats.chi2.cdf(chi2, len(k) - 1) > 1e-4
    assert stats.chi2.sf(chi2, len(k) - 1) > 1e-4


def test_same_seed_same_count_different_seed_different_samples():
    rec = _Recorder(_hybrid_base(T), hybrid=True)
    smooth = HybridSmooth(rec, sigma=SIGMA, kernel=UniformKernel(0.3, vocab_size=11), batch_size=64,
                          progress=False)
    tokens = torch.arange(8)
    a = smooth.count(tokens, _image(), 200, seed=7)
    first = (torch.cat(rec.tokens), torch.cat(rec.images))
    rec.tokens, rec.images = [], []
    b = smooth.count(tokens, _image(), 200, seed=7)
    second = (torch.cat(rec.tokens), torch.cat(rec.images))
    rec.tokens, rec.images = [], []
    smooth.count(tokens, _image(), 200, seed=8)
    third = (torch.cat(rec.tokens), torch.cat(rec.images))
    assert a == b
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert not torch.equal(first[1], third[1])
    assert not torch.equal(first[0], third[0])
    # Within one run the copies are distinct draws, not one draw repeated across batches.
    imgs = first[1].reshape(200, -1)
    assert len(torch.unique(imgs[:, 0])) == 200


def test_gaussian_counts_reproducible_and_seed_dependent():
    g = GaussianSmooth(_threshold_image(T), num_classes=2, sigma=SIGMA)
    x = _image()
    assert np.array_equal(g.counts(x, 500, seed=3), g.counts(x, 500, seed=3))
    assert not np.array_equal(g.counts(x, 500, seed=3), g.counts(x, 500, seed=4))


@pytest.mark.parametrize("hybrid", [True, False], ids=["HybridSmooth", "GaussianSmooth"])
def test_batch_size_does_not_change_the_count_distribution(hybrid):
    n, seeds = 260, range(150)
    totals = []
    for bs in (13, 1000):
        if hybrid:
            smooth = HybridSmooth(_hybrid_base(T), sigma=SIGMA, batch_size=bs, progress=False)
        else:
            smooth = GaussianSmooth(_threshold_image(T), num_classes=2, sigma=SIGMA, batch_size=bs)
        k = _counts(smooth, n, seeds, hybrid)
        assert stats.binomtest(int(k.sum()), n * len(k), P_TRUE).pvalue > 1e-4
        totals.append(int(k.sum()))
    # Two samples of Binomial(N, p) with the same p: Fisher's exact test of equal proportions.
    N = n * len(seeds)
    table = [[totals[0], N - totals[0]], [totals[1], N - totals[1]]]
    assert stats.fisher_exact(table).pvalue > 1e-4


# --------------------------------------------------------------------------------------------
# The noise itself
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("beta", [0.1, 0.5, 0.9])
def test_text_noise_replacement_rate_is_beta(beta):
    rec = _Recorder(lambda tokens, images: torch.zeros(tokens.shape[0], dtype=torch.long), hybrid=True)
    smooth = HybridSmooth(rec, kernel=UniformKernel(beta, vocab_size=50), batch_size=500, progress=False)
    tokens = torch.tensor([3, 17, 0, 49, 25, 8, 8, 40])
    n = 4000
    smooth.count(tokens, None, n, seed=1)
    z = torch.cat(rec.tokens)
    assert z.shape == (n, len(tokens))
    assert ((z >= 0) & (z < 50)).all()
    changed = int((z != tokens).sum())
    m = z.numel()
    # Each position is replaced independently with probability β, always by a different token.
    assert stats.binomtest(changed, m, beta).pvalue > 1e-4
    # Per position as well (no position is left out of the noise).
    per_pos = (z != tokens).float().mean(0)
    assert torch.all((per_pos - beta).abs() < 5 * math.sqrt(beta * (1 - beta) / n))


def test_text_noise_respects_the_mask():
    rec = _Recorder(lambda tokens, images: torch.zeros(tokens.shape[0], dtype=torch.long), hybrid=True)
    smooth = HybridSmooth(rec, kernel=AbsorbingKernel(0.5, mask_id=99), progress=False)
    tokens = torch.arange(6)
    mask = torch.tensor([False, False, False, True, True, True])
    smooth.count(tokens, None, 2000, seed=2, mask=mask)
    z = torch.cat(rec.tokens)
    assert torch.equal(z[:, :3], tokens[:3].expand(2000, 3))
    frac = (z[:, 3:] == 99).float().mean().item()
    assert abs(frac - 0.5) < 5 * math.sqrt(0.25 / 6000)


@pytest.mark.parametrize("sigma", [0.12, 1.0, 3.0])
def test_image_noise_is_gaussian_with_scale_sigma(sigma):
    rec = _Recorder(_hybrid_base(0.0), hybrid=True)
    smooth = HybridSmooth(rec, sigma=sigma, batch_size=1000, progress=False)
    x = torch.linspace(0, 1, 4).reshape(SHAPE)
    n = 5000
    smooth.count(None, x, n, seed=5)
    noise = (torch.cat(rec.images) - x).reshape(-1).double().numpy()
    m = noise.size
    assert abs(noise.mean()) < 5 * sigma / math.sqrt(m)
    # (m − 1)·s²/σ² ~ χ²(m − 1): two-sided test of the variance.
    chi2 = (m - 1) * noise.var(ddof=1) / sigma**2
    assert 1e-4 < stats.chi2.cdf(chi2, m - 1) < 1 - 1e-4
    # Gaussian shape, not only the right variance.
    assert stats.kstest(noise / sigma, "norm").pvalue > 1e-4


def test_gaussian_smooth_noise_scale():
    rec = _Recorder(lambda images: torch.zeros(images.shape[0], dtype=torch.long), hybrid=False)
    g = GaussianSmooth(rec, num_classes=3, sigma=0.7)
    x = torch.rand(SHAPE)
    g.counts(x, 3000, seed=0)
    noise = (torch.cat(rec.images) - x).reshape(-1).double().numpy()
    assert stats.kstest(noise / 0.7, "norm").pvalue > 1e-4


# --------------------------------------------------------------------------------------------
# The certificates
# --------------------------------------------------------------------------------------------

def test_hybrid_certificate_lower_bound_holds_in_nearly_all_seeds():
    # With probability ≥ 1 − α the Clopper–Pearson bound is below the true p.  The point estimate
    # k/n would exceed it in about half of the seeds, so this fails for any unsound bound.
    alpha, n, seeds = 0.05, 300, range(300)
    x0, t = 0.0, -0.4
    p = _true_p(x0, t, SIGMA)
    smooth = HybridSmooth(_hybrid_base(t), sigma=SIGMA, progress=False)
    certs = [smooth.certify(None, _image(x0), n, alpha=alpha, seed=s) for s in seeds]
    misses = sum(c.p_a[0] > p for c in certs)
    assert stats.binom.sf(misses - 1, len(certs), alpha) > 1e-4  # P[Binom(m, α) ≥ misses]
    for c in certs:
        assert c.p_a[0] == pytest.approx(float(clopper_pearson_lower(c.count, n, alpha)), rel=0, abs=0)
        # The certified radius never exceeds the radius of the true probability when p_A ≤ p.
        if c.p_a[0] <= p:
            assert c.radii[0] <= SIGMA * ndtri(p)


def test_gaussian_certificate_radius_below_the_true_radius_in_nearly_all_seeds():
    alpha, seeds = 0.05, range(120)
    x0, t = 0.0, -0.5
    p = _true_p(x0, t, SIGMA)  # P[class 1] = Φ(1) ≈ 0.84
    g = GaussianSmooth(_threshold_image(t), num_classes=2, sigma=SIGMA)
    out = [g.certify(_image(x0), 20, 300, alpha, seed=s) for s in seeds]
    assert all(c == 1 for c, _ in out)  # the selection picks the majority class
    misses = sum(r > SIGMA * ndtri(p) for _, r in out)
    assert stats.binom.sf(misses - 1, len(out), alpha) > 1e-4


def test_hybrid_certify_radii_equal_frontier():
    kernel = UniformKernel(0.2, vocab_size=30)
    t = -0.6  # P[f = 1] = Φ(1.2) ≈ 0.885 under the image noise; the tokens do not matter
    smooth = HybridSmooth(_hybrid_base(t), sigma=SIGMA, kernel=kernel, batch_size=256, progress=False)
    cert = smooth.certify(torch.arange(10), _image(), 2000, alpha=0.01, tau=0.5, threat=L0(3), seed=4)
    assert cert.p_a[0] == float(clopper_pearson_lower(cert.count, 2000, 0.01))
    assert cert.radii.shape == (4,)
    np.testing.assert_array_equal(cert.radii, frontier(cert.p_a[0], kernel, 3, SIGMA, 0.5))
    assert cert.radii[0] > 0  # p_A ≈ 0.87 certifies a positive radius at d = 0
    assert cert.d_certified == int(np.flatnonzero(cert.radii >= 0).max())
    assert cert.as_dict()["radii"] == [float(r) for r in cert.radii]


@pytest.mark.parametrize("tau", [0.5, 0.7])
def test_image_only_certify_equals_cohen_radius(tau):
    smooth = HybridSmooth(_hybrid_base(-1.0), sigma=SIGMA, progress=False)
    cert = smooth.certify(None, _image(), 1000, alpha=0.001, tau=tau, seed=0)
    assert cert.radii.shape == (1,)
    assert cert.radii[0] == cohen_radius(cert.p_a[0], SIGMA, tau)
    assert cert.radii[0] == pytest.approx(SIGMA * (ndtri(cert.p_a[0]) - ndtri(tau)), rel=1e-12)


def test_gaussian_smooth_abstains_on_a_fair_coin():
    g = GaussianSmooth(_threshold_image(0.0), num_classes=2, sigma=1.0)
    for s in range(15):
        assert g.certify(_image(0.0), 100, 2000, 0.001, seed=s) == (ABSTAIN, 0.0)
    # predict abstains unless the binomial test rejects a true null (probability ≤ α per seed).
    preds = [g.predict(_image(0.0), 1000, 0.001, seed=s) for s in range(15)]
    assert preds.count(ABSTAIN) >= 14


@pytest.mark.parametrize("n", [100, 1000, 10_000])
def test_gaussian_smooth_constant_classifier_reaches_the_cap(n):
    alpha, sigma = 0.001, 0.25
    g = GaussianSmooth(lambda images: torch.full((images.shape[0],), 7), num_classes=10, sigma=sigma,
                       batch_size=4096)
    c, r = g.certify(_image(), 50, n, alpha, seed=0)
    assert c == 7
    # All n draws vote for 7: p_A = α^(1/n), the largest value n draws can certify.
    assert r == pytest.approx(sigma * ndtri(alpha ** (1 / n)), rel=1e-12)
    assert r <= sigma * ndtri(alpha ** (1 / n))
    assert g.predict(_image(), n, alpha, seed=1) == 7


def test_gaussian_certify_selection_and_estimation_use_separate_draws():
    rec = _Recorder(_threshold_image(0.0), hybrid=False)
    g = GaussianSmooth(rec, num_classes=2, sigma=SIGMA, batch_size=10_000)
    g.certify(_image(), 50, 500, 0.01, seed=0)
    assert [b.shape[0] for b in rec.images] == [50, 500]
    first, second = rec.images[0].reshape(50, -1), rec.images[1].reshape(500, -1)
    # No selection draw reappears among the estimation draws.
    assert not torch.isin(first[:, 0], second[:, 0]).any()


def test_gaussian_accepts_logits_and_labels_alike():
    t = 0.2
    labels = _threshold_image(t)

    def logits(images):
        y = labels(images)
        return torch.nn.functional.one_hot(y, 3).float() * 5.0

    a = GaussianSmooth(labels, num_classes=3, sigma=SIGMA).counts(_image(), 700, seed=9)
    b = GaussianSmooth(logits, num_classes=3, sigma=SIGMA).counts(_image(), 700, seed=9)
    assert np.array_equal(a, b)
    assert a.sum() == 700 and a[2] == 0


# --------------------------------------------------------------------------------------------
# Bad input raises ValueError
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("sigma", [0.0, -0.5, float("nan"), float("inf")])
def test_nonpositive_sigma_raises(sigma):
    with pytest.raises(ValueError):
        HybridSmooth(_hybrid_base(0.0), sigma=sigma, progress=False)
    with pytest.raises(ValueError):
        GaussianSmooth(_threshold_image(0.0), num_classes=2, sigma=sigma)


@pytest.mark.parametrize(
    "image",
    [
        torch.zeros(SHAPE, dtype=torch.long),  # integer pixels: 0..255 by mistake?
        torch.zeros(SHAPE, dtype=torch.uint8),
        torch.full(SHAPE, float("nan")),
        torch.tensor([[[0.0, float("inf")], [0.0, 0.0]]]),
        torch.zeros(0),
    ],
    ids=["int64", "uint8", "nan", "inf", "empty"],
)
def test_bad_image_raises(image):
    with pytest.raises(ValueError):
        HybridSmooth(_hybrid_base(0.0), sigma=SIGMA, progress=False).count(None, image, 10)
    with pytest.raises(ValueError):
        GaussianSmooth(_threshold_image(0.0), num_classes=2, sigma=SIGMA).certify(image, 10, 10, 0.01)


@pytest.mark.parametrize("tokens", [torch.zeros(0, dtype=torch.long), [], torch.zeros((2, 3), dtype=torch.long)])
def test_empty_or_malformed_tokens_raise(tokens):
    smooth = HybridSmooth(lambda t, i: torch.zeros(t.shape[0], dtype=torch.long),
                          kernel=UniformKernel(0.3, vocab_size=10), progress=False)
    with pytest.raises(ValueError):
        smooth.count(tokens, None, 10)


def test_missing_modality_raises():
    with pytest.raises(ValueError):
        HybridSmooth(_hybrid_base(0.0), progress=False)  # nothing to smooth
    smooth = HybridSmooth(_hybrid_base(0.0), sigma=SIGMA, kernel=UniformKernel(0.3, vocab_size=10),
                          progress=False)
    with pytest.raises(ValueError):
        smooth.count(None, _image(), 10)
    with pytest.raises(ValueError):
        smooth.count(torch.arange(3), None, 10)


@pytest.mark.parametrize(
    "out",
    [
        lambda b: torch.zeros(b + 1, dtype=torch.long),
        lambda b: torch.zeros(b - 1, dtype=torch.long),
        lambda b: torch.zeros((b, 1), dtype=torch.long),
        lambda b: torch.zeros((), dtype=torch.long),
    ],
    ids=["b+1", "b-1", "(b,1)", "scalar"],
)
def test_hybrid_base_with_wrong_output_shape_raises(out):
    smooth = HybridSmooth(lambda t, i: out(i.shape[0]), sigma=SIGMA, batch_size=10, progress=False)
    with pytest.raises(ValueError):
        smooth.count(None, _image(), 25)


@pytest.mark.parametrize("label", [2, -1])
def test_hybrid_base_with_labels_outside_zero_one_raises(label):
    # A label 2 would otherwise be counted silently as "not the protected class".
    smooth = HybridSmooth(lambda t, i: torch.full((i.shape[0],), label), sigma=SIGMA, progress=False)
    with pytest.raises(ValueError):
        smooth.count(None, _image(), 25)


@pytest.mark.parametrize(
    "out",
    [
        lambda b: torch.zeros(b + 1, dtype=torch.long),  # one label too many
        lambda b: torch.zeros(b - 1, dtype=torch.long),  # one too few: would undercount silently
        lambda b: torch.zeros((b, 1)),  # a single logit column: argmax is always class 0
        lambda b: torch.zeros((b, 5)),  # logits for 5 classes when num_classes = 3
        lambda b: torch.full((b,), 4, dtype=torch.long),  # labels outside 0..num_classes − 1
    ],
    ids=["b+1", "b-1", "(b,1)", "(b,5)", "label-out-of-range"],
)
def test_gaussian_base_with_wrong_output_raises(out):
    g = GaussianSmooth(lambda images: out(images.shape[0]), num_classes=3, sigma=SIGMA, batch_size=10)
    with pytest.raises(ValueError):
        g.counts(_image(), 25)


@pytest.mark.parametrize("alpha", [0.0, 1.0, -0.1, 1.5, float("nan")])
def test_alpha_outside_unit_interval_raises(alpha):
    smooth = HybridSmooth(_hybrid_base(0.0), sigma=SIGMA, progress=False)
    with pytest.raises(ValueError):
        smooth.certify(None, _image(), 10, alpha=alpha)
    g = GaussianSmooth(_threshold_image(0.0), num_classes=2, sigma=SIGMA)
    with pytest.raises(ValueError):
        g.certify(_image(), 10, 10, alpha)
    with pytest.raises(ValueError):
        g.predict(_image(), 10, alpha)


@pytest.mark.parametrize("n", [0, -3, 2.5])
def test_bad_sample_size_raises(n):
    with pytest.raises(ValueError):
        HybridSmooth(_hybrid_base(0.0), sigma=SIGMA, progress=False).count(None, _image(), n)
    with pytest.raises(ValueError):
        GaussianSmooth(_threshold_image(0.0), num_classes=2, sigma=SIGMA).counts(_image(), n)


def test_non_callable_base_raises():
    with pytest.raises(ValueError):
        HybridSmooth("not a model", sigma=SIGMA)
    with pytest.raises(ValueError):
        GaussianSmooth(None, num_classes=2, sigma=SIGMA)
