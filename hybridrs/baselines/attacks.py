"""White-box attacks (FGSM, ℓ2-PGD) and the exact ℓ2 radius of a linear classifier.

An attack that succeeds at budget ε proves that the robust accuracy at ε is *at most* the fraction
of points it failed to break: attacks give upper bounds.  The exact radius of a multiclass linear
classifier, ``linear_radius``, is the one case where the certified radius is available in closed
form; chapter 1 uses it to show that PGD's empirical radius never falls below it.
"""

from __future__ import annotations

import math

import torch
from torch import nn
import torch.nn.functional as F

from hybridrs import _validate


def _check_inputs(x: torch.Tensor, y: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise ValueError("x and y must be torch tensors")
    if x.ndim < 2 or y.ndim != 1 or x.shape[0] != y.shape[0]:
        raise ValueError(f"x must be (N, ...) and y (N,); got x {tuple(x.shape)}, y {tuple(y.shape)}")
    if torch.isnan(x).any():
        raise ValueError("x contains NaN")


def _eps_vector(eps, n: int, dtype, device=None) -> torch.Tensor:
    """ε as a (N,) tensor, from a scalar or a per-example tensor; ValueError on ε < 0 or NaN."""
    if isinstance(eps, torch.Tensor) and eps.ndim > 0:
        if eps.shape != (n,):
            raise ValueError(f"eps must be a scalar or have shape ({n},), got {tuple(eps.shape)}")
        if torch.isnan(eps).any() or (eps < 0).any() or torch.isinf(eps).any():
            raise ValueError("eps must be finite and >= 0 (got NaN, inf or a negative entry)")
        return eps.to(dtype=dtype, device=device)
    return torch.full((n,), _validate.nonnegative(eps, "eps"), dtype=dtype, device=device)


def margin_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """max_{j≠y} f_j − f_y for each row (positive exactly when the point is misclassified);
    the attack objective of Carlini & Wagner (2017) without its confidence offset."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), -math.inf)
    return others.max(dim=1).values - true


def _loss_grad(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
               loss: str = "ce") -> tuple[torch.Tensor, torch.Tensor]:
    """∇_x of the summed loss ('ce' = cross-entropy, 'margin' = ``margin_loss``), and the logits."""
    x = x.detach().requires_grad_(True)
    logits = model(x)
    if loss == "ce":
        loss = F.cross_entropy(logits, y, reduction="sum")
    else:
        loss = margin_loss(logits, y).sum()
    (grad,) = torch.autograd.grad(loss, x)
    return grad, logits.detach()


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
         clip: tuple[float, float] | None = (0.0, 1.0)) -> torch.Tensor:
    """Fast gradient sign method (ℓ∞), Goodfellow et al. (2015), eq. (3):

        x' = clip_[0,1]( x + ε · sign(∇_x ℓ(f(x), y)) ),  ℓ = cross-entropy.

    ``clip=None`` skips the projection onto the pixel box.  Returns x' (detached).
    """
    _check_inputs(x, y)
    eps = _validate.nonnegative(eps, "eps")
    grad, _ = _loss_grad(model, x, y)
    adv = x + eps * grad.sign()
    if clip is not None:
        adv = adv.clamp(*clip)
    return adv.detach()


def _flat_norm(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1)


def _per_example(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *([1] * (like.ndim - 1)))


def project_l2(delta: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of each row of ``delta`` onto the ball {‖δ‖₂ ≤ ε_i}:
    δ · min(1, ε/‖δ‖₂)."""
    norms = _flat_norm(delta)
    factor = torch.where(norms > eps, eps / norms.clamp_min(1e-30), torch.ones_like(norms))
    return delta * _per_example(factor, delta)


def pgd_l2(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps, steps: int = 40,
           step_size: float | None = None, seed: int = 0, random_start: bool = True,
           clip: tuple[float, float] | None = (0.0, 1.0), loss: str = "ce") -> torch.Tensor:
    """Projected gradient ascent on a loss in the ℓ2 ball, Madry et al. (2018), §2:

        δ_{t+1} = Π( δ_t + η · g_t/‖g_t‖₂ ),  g_t = ∇_x ℓ(f(x+δ_t), y),

    with ℓ the cross-entropy (``loss='ce'``), ``margin_loss`` (``loss='margin'``), or, for
    ``loss='targeted'``, one run per class j ≠ y maximising f_j − f_y (the first success is kept;
    on a linear model each run is exact, so the attack succeeds whenever ε exceeds the radius).
    Π first projects onto {‖δ‖₂ ≤ ε} and then clips x+δ to the pixel box ``clip``.  Because
    x lies in the box, clipping only shrinks each |δ_i|, so every iterate is feasible for both
    constraints.  ``eps`` is a scalar or a per-example (N,) tensor; ``step_size`` defaults to
    2.5 ε / steps.  With ``random_start`` the search starts from a point drawn uniformly in the
    ball (generator seeded with ``seed``).  The returned point is the first iterate that is
    misclassified, or the last iterate when none is (so success is never lost by a later step).
    """
    _check_inputs(x, y)
    steps = _validate.integer(steps, "steps", minimum=1)
    seed = _validate.integer(seed, "seed", minimum=0)
    if loss not in ("ce", "margin", "targeted"):
        raise ValueError(f"loss must be 'ce', 'margin' or 'targeted', got {loss!r}")
    n = x.shape[0]
    dev = x.device
    eps_v = _eps_vector(eps, n, x.dtype, dev)
    if step_size is None:
        eta = 2.5 * eps_v / steps
    else:
        eta = torch.full((n,), _validate.nonnegative(step_size, "step_size"), dtype=x.dtype, device=dev)
    if clip is not None and ((x < clip[0]) | (x > clip[1])).any():
        raise ValueError(f"x must lie in the box clip={clip}")
    x = x.detach()
    # The random start is drawn on the CPU and copied over, so it is the same on every device.
    gen = torch.Generator(device="cpu").manual_seed(seed)
    d = x[0].numel()
    if random_start:
        direction = torch.randn(x.shape, generator=gen, dtype=x.dtype, device="cpu").to(dev)
        direction = direction / _per_example(_flat_norm(direction).clamp_min(1e-30), x)
        radius = eps_v * torch.rand(n, generator=gen, dtype=x.dtype, device="cpu").to(dev) ** (1.0 / d)
        delta0 = direction * _per_example(radius, x)
    else:
        delta0 = torch.zeros_like(x)

    def feasible(delta: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        delta = project_l2(delta, eps_v[rows])
        if clip is not None:
            delta = (x[rows] + delta).clamp(*clip) - x[rows]
        return delta

    def run(rows: torch.Tensor, target: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        xr, yr = x[rows], y[rows]
        delta = feasible(delta0[rows], rows)
        best = xr + delta
        done = torch.zeros(len(rows), dtype=torch.bool, device=dev)
        for _ in range(steps + 1):
            xd = (xr + delta).detach().requires_grad_(True)
            logits = model(xd)
            fooled = logits.detach().argmax(dim=1) != yr
            new = fooled & ~done
            best[new] = xd.detach()[new]
            done |= fooled
            if bool(done.all()) or _ == steps:
                break
            if target is not None:       # push logit `target` above the true one
                obj = (logits.gather(1, target[:, None]) - logits.gather(1, yr[:, None])).sum()
            elif loss == "ce":
                obj = F.cross_entropy(logits, yr, reduction="sum")
            else:
                obj = margin_loss(logits, yr).sum()
            (grad,) = torch.autograd.grad(obj, xd)
            gnorm = _per_example(_flat_norm(grad).clamp_min(1e-30), grad)
            delta = feasible(delta + _per_example(eta[rows], xr) * grad / gnorm, rows)
        best[~done] = (xr + delta)[~done]
        return best.detach(), done

    all_rows = torch.arange(n, device=dev)
    if loss != "targeted":
        return run(all_rows, None)[0]
    # one attack per target class j ≠ y, all run as one batch; keep the first that succeeds
    with torch.no_grad():
        n_classes = model(x[:1]).shape[1]
    rows = all_rows.repeat_interleave(n_classes)
    targets = torch.arange(n_classes, device=dev).repeat(n)
    keep = targets != y[rows]
    rows, targets = rows[keep], targets[keep]
    adv, ok = run(rows, targets)
    pos = torch.arange(len(rows), device=dev)
    none = len(rows)
    first = torch.full((n,), none, dtype=torch.long, device=dev).scatter_reduce(
        0, rows, torch.where(ok, pos, torch.full_like(pos, none)), reduce="amin")
    # points never broken get their last run's final iterate (any feasible point will do)
    last = torch.zeros(n, dtype=torch.long, device=dev).scatter_reduce(0, rows, pos, reduce="amax")
    pick = torch.where(first < none, first, last)
    return adv[pick].detach()


@torch.no_grad()
def is_adversarial(model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Boolean (N,) tensor: argmax_j f_j(x_adv) ≠ y."""
    return model(x_adv).argmax(dim=1) != y


def empirical_radius(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps_max: float,
                     bisections: int = 12, steps: int = 40, seed: int = 0,
                     clip: tuple[float, float] | None = (0.0, 1.0), loss: str = "ce",
                     random_start: bool = True) -> torch.Tensor:
    """Smallest ℓ2 budget at which ``pgd_l2`` finds an adversarial example, by bisection on ε.

    For each example, keeps an interval [lo, hi] with PGD failing at lo and succeeding at hi
    (hi = ``eps_max`` initially, ``inf`` if PGD fails there too) and halves it ``bisections``
    times; returns hi.  Since a successful attack exhibits a δ with F(x+δ) ≠ y and ‖δ‖₂ ≤ hi,
    the returned value is an upper bound on the certified radius R(F, x, y); 0 for points that
    are already misclassified.
    """
    _check_inputs(x, y)
    eps_max = _validate.positive(eps_max, "eps_max")
    bisections = _validate.integer(bisections, "bisections", minimum=0)
    n = x.shape[0]
    with torch.no_grad():
        wrong = model(x).argmax(dim=1) != y
    lo = torch.zeros(n, dtype=x.dtype, device=x.device)
    hi = torch.full((n,), eps_max, dtype=x.dtype, device=x.device)
    ok = is_adversarial(model, pgd_l2(model, x, y, hi, steps=steps, seed=seed, clip=clip, loss=loss,
                                   random_start=random_start), y)
    hi[~ok] = math.inf
    for _ in range(bisections):
        active = ok & ~wrong
        if not bool(active.any()):
            break
        mid = (lo + hi) / 2
        idx = active.nonzero().squeeze(1)
        adv = pgd_l2(model, x[idx], y[idx], mid[idx], steps=steps, seed=seed, clip=clip, loss=loss,
                                   random_start=random_start)
        succ = is_adversarial(model, adv, y[idx])
        # the achieved perturbation norm may be below mid: keep the tighter certificate of success
        achieved = _flat_norm(adv - x[idx])
        hi[idx[succ]] = torch.minimum(mid[idx[succ]], achieved[succ])
        lo[idx[~succ]] = mid[idx[~succ]]
    hi[wrong] = 0.0
    return hi


def linear_radius(weight: torch.Tensor, bias: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Exact ℓ2 distance from x to the decision boundary of F(x) = argmax_j (w_j·x + b_j),
    ignoring the pixel box:

        R(F, x, y) = max(0, min_{j≠y} ((w_y − w_j)·x + b_y − b_j) / ‖w_y − w_j‖₂ ).

    Each term is the distance to the hyperplane where logit j overtakes logit y; the region where
    y wins is the intersection of these half-spaces, so the nearest exit crosses the nearest
    hyperplane (the foot of the perpendicular is itself a point where F ≠ y, as logit j then
    ties with y and no other logit has yet overtaken).  ``weight`` is (C, d), ``bias`` (C,),
    ``x`` (N, ...) with prod(...) = d.  Misclassified points get 0.
    """
    x = x.flatten(1)
    if weight.ndim != 2 or bias.shape != (weight.shape[0],) or x.shape[1] != weight.shape[1]:
        raise ValueError(f"weight must be (C, d), bias (C,), x (N, d); got {tuple(weight.shape)}, "
                         f"{tuple(bias.shape)}, {tuple(x.shape)}")
    if torch.isnan(x).any():
        raise ValueError("x contains NaN")
    logits = x @ weight.T + bias
    w_y = weight[y]                                            # (N, d)
    diff_w = w_y[:, None, :] - weight[None, :, :]              # (N, C, d)
    gaps = logits.gather(1, y[:, None]) - logits               # (N, C)
    dist = gaps / diff_w.norm(dim=2).clamp_min(1e-30)
    dist.scatter_(1, y[:, None], math.inf)
    return dist.min(dim=1).values.clamp_min(0.0)
