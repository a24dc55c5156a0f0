"""A Hugging Face image processor's resize / crop / pad / normalise as torch operations.

``PixelPipeline`` takes [0, 1] pixels (b, C, H, W) on any device and returns the model's
``pixel_values`` (and ``image_sizes`` for the "anyres" grid of LLaVA-NeXT / OneVision), so that the
smoothing noise can be added in pixel units before it and the whole path stays on the GPU and
differentiable.  Resampling reproduces Pillow's (which the Hugging Face processors call), as a pair
of matrix products per image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

# ------------------------------------------------------------------------------------------------


def _cubic(x: np.ndarray) -> np.ndarray:
    a = -0.5  # PIL's bicubic (torch's non-antialiased bicubic uses -0.75)
    x = np.abs(x)
    return np.where(x < 1, ((a + 2) * x - (a + 3)) * x * x + 1,
                    np.where(x < 2, (((x - 5) * x + 8) * x - 4) * a, 0.0))


def _triangle(x: np.ndarray) -> np.ndarray:
    return np.clip(1.0 - np.abs(x), 0.0, None)


_FILTERS = {"bicubic": (_cubic, 2.0), "bilinear": (_triangle, 1.0)}


def resample_matrix(n_in: int, n_out: int, mode: str = "bicubic") -> np.ndarray:
    """(n_out, n_in) matrix of Pillow's separable resampling along one axis.

    Pillow (which the Hugging Face image processors call) widens the filter by the scale when
    shrinking (antialiasing) and normalises each row's weights; doing the same with a matrix makes
    ``resize`` one pair of matmuls, differentiable and on any device.  torch's ``interpolate``
    differs when enlarging (cubic coefficient −0.75 instead of −0.5).
    """
    filt, support = _FILTERS[mode]
    scale = n_in / n_out
    fscale = max(scale, 1.0)
    support *= fscale
    w = np.zeros((n_out, n_in))
    for o in range(n_out):
        center = (o + 0.5) * scale
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), n_in)
        xs = np.arange(lo, hi)
        k = filt((xs - center + 0.5) / fscale)
        w[o, lo:hi] = k / k.sum()
    return w


@dataclass(frozen=True)
class PixelPipeline:
    """A Hugging Face image processor's steps as torch ops on [0, 1] pixels.

    ``size`` (h, w) resizes to exactly that size; ``shortest_edge`` resizes so the shorter side has
    that length (aspect kept, the longer side truncated as Hugging Face does); ``crop`` (h, w) then
    takes the centre; the result is normalised with ``mean`` / ``std``.  With ``grid_pinpoints``
    (LLaVA-NeXT / OneVision "anyres"), the output is 5-D: the whole image resized to the base
    view, then the crops of a grid: the image is resized into the best pinpoint resolution
    (aspect kept), padded with black to it, and cut into square patches (row-major).  The grid is
    chosen from the input size, so one input size gives one layout (``HybridSmooth`` certifies one
    image at a time).
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    size: tuple[int, int] | None = None
    shortest_edge: int | None = None
    crop: tuple[int, int] | None = None
    grid_pinpoints: tuple[tuple[int, int], ...] | None = None
    mode: str = "bicubic"

    def __post_init__(self):
        if (self.size is None) == (self.shortest_edge is None):
            raise ValueError("give exactly one of size and shortest_edge")
        if self.mode not in _FILTERS:
            raise ValueError(f"mode must be one of {sorted(_FILTERS)}, got {self.mode!r}")

    @classmethod
    def from_image_processor(cls, proc) -> "PixelPipeline":
        """Read the steps of a Hugging Face (LLaVA, LLaVA-NeXT, OneVision, CLIP, SigLIP) image
        processor: size, crop, mean/std, resample and grid pinpoints.  Resampling follows the
        Pillow backend; the torchvision backend's antialiased interpolation differs from it by a
        few grey levels where it enlarges."""
        size = dict(getattr(proc, "size", None) or {})
        crop = dict(getattr(proc, "crop_size", None) or {}) if getattr(proc, "do_center_crop", False) else {}
        resample = getattr(proc, "resample", 3)
        # a Pillow enum (BICUBIC = 3), an int, or torchvision's InterpolationMode ("bicubic")
        key = str(getattr(resample, "value", resample)).lower()
        mode = {"2": "bilinear", "3": "bicubic", "bilinear": "bilinear", "bicubic": "bicubic"}.get(key)
        if mode is None:
            raise ValueError(f"resample {resample!r} is not supported (bilinear or bicubic)")
        pins = getattr(proc, "image_grid_pinpoints", None)
        if getattr(proc, "do_pad", False) and not pins:
            raise ValueError("pad-to-square processors (do_pad without grid pinpoints) are not supported")
        return cls(mean=tuple(float(m) for m in proc.image_mean), std=tuple(float(s) for s in proc.image_std),
                   size=(int(size["height"]), int(size["width"])) if "height" in size else None,
                   shortest_edge=int(size["shortest_edge"]) if "height" not in size else None,
                   crop=(int(crop["height"]), int(crop["width"])) if crop else None,
                   grid_pinpoints=tuple(tuple(int(x) for x in p) for p in pins) if pins else None, mode=mode)

    # -- geometry (host-side integers, fixed by the input size) --------------------------------
    def _resized_shape(self, h: int, w: int) -> tuple[int, int]:
        if self.size is not None:
            return self.size
        s = self.shortest_edge
        return (int(s * h / w), s) if w <= h else (s, int(s * w / h))

    def _patch(self) -> int:
        if self.crop is not None:
            return self.crop[0]
        return self.size[0] if self.size is not None else self.shortest_edge

    def grid(self, h: int, w: int) -> tuple[int, int, int, int]:
        """(best_h, best_w, new_h, new_w): the pinpoint chosen for an (h, w) image and the size the
        image is resized to inside it (Hugging Face's ``select_best_resolution`` and
        ``get_patch_output_size``)."""
        from transformers.image_processing_utils import select_best_resolution

        bh, bw = select_best_resolution((h, w), [list(p) for p in self.grid_pinpoints])
        if bw / w < bh / h:
            nh, nw = min(math.ceil(h * bw / w), bh), bw
        else:
            nh, nw = bh, min(math.ceil(w * bh / h), bw)
        return bh, bw, nh, nw

    # -- torch ops -------------------------------------------------------------------------------
    def _resize(self, x: torch.Tensor, h: int, w: int, cache: dict) -> torch.Tensor:
        H, W = x.shape[-2:]
        if (H, W) == (h, w):
            return x
        key = (H, W, h, w, x.device, x.dtype)
        if key not in cache:  # built once on the host, copied once to the device
            with torch.inference_mode(False):  # usable later in a forward that records gradients
                cache[key] = (torch.as_tensor(resample_matrix(H, h, self.mode), dtype=x.dtype, device=x.device),
                              torch.as_tensor(resample_matrix(W, w, self.mode), dtype=x.dtype, device=x.device))
        mh, mw = cache[key]
        # Pillow resamples 8-bit images, horizontally then vertically, and so clips the cubic's
        # overshoot to the pixel range after each pass
        return (mh @ (x @ mw.T).clamp(0.0, 1.0)).clamp(0.0, 1.0)

    def _view(self, x: torch.Tensor, cache: dict) -> torch.Tensor:
        """One view: resize, centre-crop (as the processor's per-patch steps)."""
        x = self._resize(x, *self._resized_shape(*x.shape[-2:]), cache)
        if self.crop is not None:
            ch, cw = self.crop
            top, left = (x.shape[-2] - ch) // 2, (x.shape[-1] - cw) // 2
            x = x[..., top:top + ch, left:left + cw]
        return x

    def __call__(self, images: torch.Tensor, cache: dict | None = None):
        """(pixel_values, image_sizes): (b, C, h, w), None without a grid; (b, 1 + patches, C, p, p)
        and a host tensor (b, 2) of (H, W) with one.  ``cache`` (a dict) keeps the resampling
        matrices and normalisation constants between calls."""
        cache = {} if cache is None else cache
        b, C, H, W = images.shape
        nkey = ("norm", images.device, images.dtype, C)
        if nkey not in cache:
            with torch.inference_mode(False):
                mean = torch.tensor(self.mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
                std = torch.tensor(self.std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
            cache[nkey] = (mean, std)
        mean, std = cache[nkey]
        if self.grid_pinpoints is None:
            return (self._view(images, cache) - mean) / std, None
        bh, bw, nh, nw = self.grid(H, W)
        base = self._resize(images, *(self.size or (self.shortest_edge,) * 2), cache)
        inner = self._resize(images, nh, nw, cache)
        py, ry = divmod(bh - nh, 2)
        px, rx = divmod(bw - nw, 2)
        padded = torch.nn.functional.pad(inner, (px, px + rx, py, py + ry))  # black (0) before normalising
        p = self._patch()
        views = [base] + [padded[..., i:i + p, j:j + p] for i in range(0, bh, p) for j in range(0, bw, p)]
        views = [(self._view(x, cache) - mean) / std for x in views]
        sizes = torch.tensor([[H, W]], dtype=torch.long, device="cpu").expand(b, 2)
        return torch.stack(views, dim=1), sizes
