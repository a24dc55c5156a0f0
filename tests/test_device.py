"""Device mistakes caught without a GPU.

The trap: the model and the inputs stay on the CPU while the code runs inside
``with torch.device("meta"):``, which changes only the *default* device of factory functions.  A
tensor created without an explicit device (``torch.full((b, 1), cls)``, ``torch.zeros(n)``,
``torch.as_tensor(cpu_tensor)``, ...) then lands on "meta", and the first operation mixing it with
the CPU tensors, or reading it, raises.  On a GPU the same line would build a CPU tensor next to
CUDA ones and fail the same way ("Expected all tensors to be on the same device").  Each trapped
result is also compared with the untrapped one, so a path that silently computes on meta fails.

The second check: the smoothing engine must not read a batch back to the host before counting
(a few reads per ``count`` call, to check the input and return the count, whatever the number of
batches).  A ``TorchFunctionMode`` records
every host read (``item``, ``tolist``, ``numpy``, ``cpu``, ``bool``/``int``/``float`` of a
tensor) while the engine runs; the count may not grow with the number of batches.
"""

import pytest
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

import tiny_vlm
from hybridrs.baselines import attacks
from hybridrs.kernels import AbsorbingKernel, HeteroUniformKernel, UniformKernel
from hybridrs.models.fusion import FilterConfig, FusionFilter


def trap():
    return torch.device("meta")


def test_the_trap_catches_a_missing_device():
    x = torch.ones(3)

    def careless(t):
        return torch.cat([torch.zeros(1), t])

    def careful(t):
        return torch.cat([torch.zeros(1, device=t.device), t])

    with trap():
        with pytest.raises((RuntimeError, NotImplementedError)):
            careless(x).tolist()
        assert careful(x).tolist() == [0.0, 1.0, 1.0, 1.0]
        with pytest.raises((RuntimeError, NotImplementedError)):
            torch.as_tensor(x).tolist()  # as_tensor moves a CPU tensor to the default device


# ------------------------------------------------------------------------------------------------
# Models, samplers, attacks
# ------------------------------------------------------------------------------------------------


def test_fusion_filter():
    torch.manual_seed(0)
    m = FusionFilter(FilterConfig(hidden=8, channels=4, fuse=16)).eval()
    toks = torch.randint(1000, 2000, (4, 10))
    toks[:, 7:] = 0  # padding: exercises the attention mask
    imgs = torch.rand(4, 1, 28, 28)
    want = m.logits(toks, imgs)
    with trap():
        got = m.logits(toks, imgs)
        labels = m(toks, imgs)
    torch.testing.assert_close(got, want)
    assert torch.equal(labels, (want > 0).long())


@pytest.mark.parametrize("make", [lambda: UniformKernel(0.3, 50), lambda: UniformKernel(0.3, alphabet=range(5, 60)),
                                  lambda: AbsorbingKernel(0.3, mask_id=1),
                                  lambda: HeteroUniformKernel(0.3, [3, 4, 5, 6, 7, 8])])
def test_kernels_sample_on_the_tokens_device(make):
    kernel = make()
    toks = torch.tensor([0, 1, 2, 3, 4, 5]) + (5 if getattr(kernel, "alphabet", None) is not None else 0)
    mask = torch.tensor([True, True, False, True, True, True])
    want = kernel.sample(toks, 40, generator=torch.Generator().manual_seed(0), mask=mask)
    with trap():
        got = kernel.sample(toks, 40, generator=torch.Generator(device="cpu").manual_seed(0), mask=mask)
        assert got.device.type == "cpu"
    assert torch.equal(got, want)


def test_kernel_checks_run_once_per_tokens_tensor():
    """The engine passes one tokens tensor for every batch: its values are read back once."""
    kernel = UniformKernel(0.3, alphabet=range(5, 60))
    toks = torch.tensor([5, 6, 7])
    gen = torch.Generator().manual_seed(0)
    with HostReads() as first:
        kernel.sample(toks, 10, generator=gen)
    with HostReads() as again:
        kernel.sample(toks, 10, generator=gen)
    assert first.reads and not again.reads
    toks[0] = 3  # modified in place: checked again, and rejected
    with pytest.raises(ValueError, match="alphabet"):
        kernel.sample(toks, 10, generator=gen)
    with torch.inference_mode():  # no version counter: checked on every call
        bad = torch.tensor([5, 6, 7])
        kernel.sample(bad, 10, generator=gen)
        bad[0] = 3
        with pytest.raises(ValueError, match="alphabet"):
            kernel.sample(bad, 10, generator=gen)


@pytest.mark.parametrize("family", ["llava", "next", "onevision"])
def test_vlm_adapter(family):
    ad = tiny_vlm.adapter(family)
    fresh = tiny_vlm.adapter(family)  # nothing cached yet: the first call builds its caches in the trap
    toks, imgs = tiny_vlm.user_tokens(3), torch.rand(3, 3, 20, 28)
    want = ad.margin(toks, imgs)
    with trap(), torch.no_grad():
        got = fresh.margin(toks, imgs)
        labels = fresh(toks, imgs)
    torch.testing.assert_close(got, want)
    assert labels.device.type == "cpu"


@pytest.mark.parametrize("family", ["llava", "next", "onevision"])
def test_vlm_adapter_reads_nothing_back_from_the_device(family, monkeypatch):
    """One forward pass reads back only host data: ``image_sizes`` rows (kept on the CPU for
    Hugging Face's grid layout) and, for CPU images only, the NaN check.  Hugging Face's own
    image-token check, a device read per forward, is off under TRANSFORMERS_DISABLE_TORCH_CHECK."""
    monkeypatch.setenv("TRANSFORMERS_DISABLE_TORCH_CHECK", "1")
    ad = tiny_vlm.adapter(family)
    toks, imgs = tiny_vlm.user_tokens(3), torch.rand(3, 3, 20, 28)
    ad(toks, imgs)  # the first call builds the caches (prefix keys/values, image-token count)
    with HostReads() as rec:
        ad(toks, imgs)
    other = [(r, sh) for r, sh in zip(rec.reads, rec.shapes) if (r, sh) != ("tolist", (2,))]
    assert other == [("__bool__", ())]  # the NaN check of CPU images


class Linear(nn.Module):
    """A seeded linear classifier over flattened inputs of ``features`` values, 3 classes."""

    def __init__(self, features: int = 12):
        super().__init__()
        torch.manual_seed(0)
        self.fc = nn.Linear(features, 3)

    def forward(self, x):
        return self.fc(x.flatten(1))


def test_attacks():
    model = Linear()
    x = torch.rand(4, 3, 2, 2)
    y = torch.tensor([0, 1, 2, 0])
    want = [attacks.fgsm(model, x, y, 0.1), attacks.pgd_l2(model, x, y, 0.5, steps=5),
            attacks.pgd_l2(model, x, y, torch.full((4,), 0.5), steps=5, loss="targeted"),
            attacks.empirical_radius(model, x, y, 2.0, bisections=3, steps=5),
            attacks.linear_radius(model.fc.weight.detach(), model.fc.bias.detach(), x, y)]
    with trap():
        got = [attacks.fgsm(model, x, y, 0.1), attacks.pgd_l2(model, x, y, 0.5, steps=5),
               attacks.pgd_l2(model, x, y, torch.full((4,), 0.5, device="cpu"), steps=5, loss="targeted"),
               attacks.empirical_radius(model, x, y, 2.0, bisections=3, steps=5),
               attacks.linear_radius(model.fc.weight.detach(), model.fc.bias.detach(), x, y)]
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


# ------------------------------------------------------------------------------------------------
# The smoothing engine
# ------------------------------------------------------------------------------------------------


class HostReads(TorchFunctionMode):
    """Records every read of tensor data by the host while active."""

    T = torch.Tensor
    READS = {T.item, T.tolist, T.numpy, T.cpu, T.__bool__, T.__int__, T.__float__, T.__index__, T.__array__}

    def __init__(self):
        super().__init__()
        self.reads = []  # method names
        self.shapes = []  # and the shapes of the tensors read

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in self.READS:
            self.reads.append(getattr(func, "__name__", str(func)))
            self.shapes.append(tuple(args[0].shape) if args and isinstance(args[0], torch.Tensor) else None)
        return func(*args, **(kwargs or {}))


class Bag(nn.Module):
    """A tiny text + image classifier without input checks (so it reads nothing back itself)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.EmbeddingBag(50, 4)
        self.img = nn.Linear(16, 4)

    def forward(self, tokens, images):
        s = (self.emb(tokens) * self.img(images.flatten(1))).sum(1)
        return (s > 0).long()


TOKS, IMG = torch.tensor([3, 4, 5, 6, 7]), torch.rand(1, 4, 4)


def _trapped(fn):
    want = fn()
    with trap():
        got = fn()
    return got, want


def test_hybrid_smooth_count_and_certify():
    from hybridrs.estimators import FixedN, Sequential
    from hybridrs.smoothing import HybridSmooth
    from hybridrs.threats import L0, Suffix

    sm = HybridSmooth(Bag(), sigma=0.5, kernel=UniformKernel(0.25, 50), batch_size=16, progress=False)
    img_only = HybridSmooth(Bag(), sigma=0.5, kernel=None, batch_size=16, progress=False)
    got, want = _trapped(lambda: sm.count(TOKS, IMG, 50, seed=1))
    assert got == want
    runs = [lambda: sm.certify(TOKS, IMG, threat=L0(d_max=2), estimator=FixedN(n=40, alpha=0.01), tau=0.1, seed=1),
            lambda: sm.certify(TOKS, IMG, threat=Suffix(m=2, filler_id=9), estimator=FixedN(n=40, alpha=0.01),
                               tau=0.1, seed=1),
            lambda: sm.certify(TOKS, IMG, threat=Suffix(m=2, filler_id=9, shared=True),
                               estimator=FixedN(n=40, alpha=0.01), tau=0.1, seed=1),
            lambda: sm.certify(TOKS, IMG, threat=L0(d_max=2), tau=0.1, seed=1,
                               estimator=Sequential(alpha=0.01, target_d=1, target_eps=0.0, max_n=200, first_batch=20)),
            lambda: img_only.certify(TOKS, IMG, threat=None, estimator=FixedN(n=40, alpha=0.01), tau=0.1, seed=1)]
    for run in runs:
        got, want = _trapped(run)
        assert got.count == want.count and got.n == want.n


def test_gaussian_smooth():
    from hybridrs.smoothing import GaussianSmooth

    gs = GaussianSmooth(Linear(16), num_classes=3, sigma=0.5, batch_size=16)
    got, want = _trapped(lambda: gs.counts(IMG, 50, seed=1))
    assert (got == want).all()
    got, want = _trapped(lambda: gs.certify(IMG, 20, 50, 0.01, seed=1))
    assert got == want


@pytest.mark.parametrize("image_only", [False, True])
def test_engine_reads_the_host_once_per_call_not_per_batch(image_only):
    """The labels stay on the device until the count is complete: the number of host reads of a
    ``count`` call does not grow with its number of batches (2 vs 8 here)."""
    from hybridrs.smoothing import HybridSmooth

    reads = []
    for n in (20, 80):
        sm = HybridSmooth(Bag(), sigma=0.5, kernel=None if image_only else UniformKernel(0.25, 50), batch_size=10,
                          progress=False)
        with HostReads() as rec:
            sm.count(TOKS, IMG, n, seed=0)
        reads.append(len(rec.reads))
    assert reads[0] == reads[1] and reads[1] <= 6, reads


def test_gaussian_counts_read_the_host_once_per_call():
    from hybridrs.smoothing import GaussianSmooth

    gs = GaussianSmooth(Linear(16), num_classes=3, sigma=0.5, batch_size=10)
    reads = []
    for n in (20, 80):
        with HostReads() as rec:
            gs.counts(IMG, n, seed=0)
        reads.append(len(rec.reads))
    assert reads[0] == reads[1] and reads[1] <= 6, reads


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_a_real_gpu():
    """Where a GPU is at hand: the filters, the adapter and every threat run there end to end."""
    from hybridrs.estimators import FixedN, Sequential
    from hybridrs.smoothing import HybridSmooth
    from hybridrs.threats import L0, Suffix

    dev = torch.device("cuda")
    fusion = FusionFilter(FilterConfig(hidden=8, channels=4, fuse=16)).eval().to(dev)
    toks = torch.randint(1000, 2000, (10,), device=dev)
    sm = HybridSmooth(fusion, sigma=0.5, kernel=UniformKernel(0.25, alphabet=range(999, 2001)), batch_size=64,
                      progress=False)
    for threat in (L0(2), Suffix(m=2, filler_id=1000), Suffix(m=2, filler_id=1000, shared=True)):
        cert = sm.certify(toks, torch.rand(1, 28, 28, device=dev), threat=threat, estimator=FixedN(200), tau=0.1)
        assert cert.n >= 200
    ad = tiny_vlm.adapter("next")
    ad.model.to(dev)
    vsm = HybridSmooth(ad, sigma=0.25, kernel=UniformKernel(0.25, alphabet=range(tiny_vlm.FIRST_WORD, tiny_vlm.V)),
                       batch_size=16, progress=False)
    cert = vsm.certify(tiny_vlm.user_tokens(1)[0].to(dev), torch.rand(3, 20, 28, device=dev), threat=L0(2), tau=0.1,
                       estimator=Sequential(target_d=1, max_n=64, first_batch=16))
    assert cert.n > 0
    x, y = torch.rand(4, 3, 2, 2, device=dev), torch.tensor([0, 1, 2, 0], device=dev)
    assert attacks.pgd_l2(Linear().to(dev), x, y, 0.5, steps=3).device.type == "cuda"
