"""Benchmark: certify a LLaVA-1.5-7B-sized safety filter on one GPU, against the hardware's limit.

The model is built from LLaVA-1.5-7B's configuration (CLIP ViT-L/14 at 336 px, Llama-2-7B, 7.06 B
parameters) with random weights: nothing is downloaded, and only the cost matters here.  It is
wrapped by ``hybridrs.models.vlm.VLMGuardAdapter`` (bf16, last-position logits, [0, 1] pixels
resized and normalised on the device) and certified through the one pipeline,
``HybridSmooth.certify(..., threat=..., estimator=...)``.  One run prints, and writes to a CSV:

* samples/s of the adapter, the model FLOPs they execute per second (TFLOP/s) and their share of
  the device's dense bf16 peak;
* seconds per input at n = 10⁴ for image-only smoothing, hybrid ℓ0 (every d ≤ 8 from one
  sample), the append-only suffix per d (8 estimates), shared-D (one estimate), and sequential
  certification (target d = 1, ε = 0.5, at most 10⁴ draws);
* each with a short prompt, with a 600-token policy before the image whose key/value cache is
  shared by every sample, and with that policy recomputed for every sample.

Fixed-n rows draw ``--draws`` samples per estimate and scale the time to n = 10⁴ (sampling cost
is linear in n; ``extrapolated`` says so); sequential rows are measured as they run.  The prompt
is laid out directly in token ids (a tokenizer is not needed to measure cost); the answer ids are
the clean input's most and least likely next tokens, so the random filter flags the clean input
as a safety filter flags a typical harmful one (the sequential figure depends on this choice).

Run from the project root:
``.venv/bin/python benchmarks/vlm_gpu.py`` on a GPU (``--peak-tflops`` for a device not in the
table), ``--tiny`` for a small model on the CPU (CI; well under a minute), ``--tiny --device cuda`` to check
on a GPU in seconds that every path runs there.  The table goes to
``--out`` (default ``data/results/scale_vlm_gpu.csv``, included by the book's scale page).
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import platform
import time
from pathlib import Path

# Hugging Face checks, on every forward, that the image tokens match the image features with a
# host read (a synchronisation per batch); the adapter builds the ids from the model's own count.
os.environ.setdefault("TRANSFORMERS_DISABLE_TORCH_CHECK", "1")

import torch  # noqa: E402
import transformers  # noqa: E402

from hybridrs.estimators import FixedN, Sequential  # noqa: E402
from hybridrs.kernels import UniformKernel  # noqa: E402
from hybridrs.models.vlm import PixelPipeline, PromptLayout, VLMGuardAdapter, max_batch_size  # noqa: E402
from hybridrs.smoothing import HybridSmooth  # noqa: E402
from hybridrs.threats import L0, Suffix  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
# Dense (no sparsity) bf16 tensor-core peaks from the vendors' data sheets, TFLOP/s.
PEAKS = {"H200 NVL": 835.0, "H200": 989.4, "H100 NVL": 835.0, "H100 PCIe": 756.0, "H100": 989.4, "GH200": 989.4,
         "B200": 2250.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10G": 125.0}
COLUMNS = ["device", "torch", "transformers", "model", "params_B", "dtype", "prompt", "seq_len", "batch",
           "samples_per_s", "tflops", "peak_tflops", "pct_peak", "method", "draws", "seconds",
           "seconds_per_input_1e4", "extrapolated", "vs_image_only", "decision"]


def build(tiny: bool, device: torch.device):
    """(model, image size, pipeline): LLaVA-1.5-7B's configuration or a tiny one."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    if tiny:
        vc = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              image_size=28, patch_size=14, projection_dim=32)
        tc = LlamaConfig(vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=1024)
        side, dtype = 28, torch.float32
    else:
        vc = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                              image_size=336, patch_size=14, projection_dim=768)
        tc = LlamaConfig(vocab_size=32064, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                         num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096)
        side, dtype = 336, torch.bfloat16
    cfg = LlavaConfig(vision_config=vc, text_config=tc, image_token_index=tc.vocab_size - 1,
                      projector_hidden_act="gelu", vision_feature_layer=-2, vision_feature_select_strategy="default")
    torch.manual_seed(0)
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):  # initialise the weights where they will run
            model = LlavaForConditionalGeneration(cfg).eval()
    finally:
        torch.set_default_dtype(old)
    pipe = PixelPipeline(mean=CLIP_MEAN, std=CLIP_STD, shortest_edge=side, crop=(side, side))
    return model, side, pipe


def forward_flops(cfg, n_views: int, n_new: int, n_cached: int) -> float:
    """Matmul FLOPs of one sample: the vision tower on ``n_views`` views (every layer runs), the
    projector, the language model on ``n_new`` positions after ``n_cached`` cached ones (causal
    attention over the context), and the head on the last position only."""
    vc, tc = cfg.vision_config, cfg.text_config
    t = (vc.image_size // vc.patch_size) ** 2 + 1
    dv = vc.hidden_size
    vision = vc.num_hidden_layers * (2 * t * (4 * dv * dv + 2 * dv * vc.intermediate_size) + 4 * t * t * dv)
    d, hd = tc.hidden_size, tc.hidden_size // tc.num_attention_heads
    kv = tc.num_key_value_heads * hd
    proj = 2 * (t - 1) * (dv * d + d * d)
    per_pos = 2 * (2 * d * d + 2 * d * kv + 3 * d * tc.intermediate_size)
    ctx = n_new * n_cached + n_new * (n_new + 1) / 2  # Σ over new positions of the context length
    lm = tc.num_hidden_layers * (n_new * per_pos + 4 * d * ctx)
    return n_views * (vision + proj) + lm + 2 * d * tc.vocab_size


def device_name(device: torch.device, tiny: bool) -> str:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"CPU {platform.machine()}, {torch.get_num_threads()} threads"
    return name + (" (tiny model)" if tiny else "")


def peak_for(name: str, given: float | None) -> float:
    if given is not None:
        return given
    for key, val in PEAKS.items():  # longest names first in the table where they nest
        if key in name:
            return val
    return math.nan


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rate(adapter, tokens, image, batch: int, reps: int, device) -> float:
    """Noisy samples per second of the adapter at ``batch`` (after one warm-up call)."""
    toks = tokens.expand(batch, -1)
    gen = torch.Generator(device=device).manual_seed(0)
    noisy = (image + 0.5 * torch.randn((batch, *image.shape), generator=gen, device=device)).contiguous()
    adapter(toks, noisy)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        adapter(toks, noisy)
    sync(device)
    return batch * reps / (time.perf_counter() - t0)


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="a tiny model (on the CPU unless --device says otherwise)")
    ap.add_argument("--device", default=None, help="default: cuda when available (cpu with --tiny)")
    ap.add_argument("--out", default=str(ROOT / "data" / "results" / "scale_vlm_gpu.csv"))
    ap.add_argument("--draws", type=int, default=None, help="draws per fixed-n estimate (default 256; tiny 32)")
    ap.add_argument("--batch", type=int, default=None, help="batch size (default: the largest that fits, ≤ 256)")
    ap.add_argument("--policy-tokens", type=int, default=None, help="policy length (default 600; tiny 100)")
    ap.add_argument("--reps", type=int, default=None, help="timed batches per throughput figure (default 3; tiny 2)")
    ap.add_argument("--peak-tflops", type=float, default=None, help="the device's dense bf16 peak, TFLOP/s")
    ap.add_argument("--prompts", default="short,policy-cached,policy-recomputed")
    ap.add_argument("--methods", default="image-only,l0,suffix-per-d,suffix-shared,sequential")
    args = ap.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() and not args.tiny else "cpu"))
    if device.type == "cpu":
        torch.set_num_threads(min(2, torch.get_num_threads()))
    draws = args.draws or (32 if args.tiny else 256)
    policy_tokens = args.policy_tokens or (100 if args.tiny else 600)
    reps = args.reps or (2 if args.tiny else 3)
    n_full = 10_000

    t0 = time.perf_counter()
    model, side, pipe = build(args.tiny, device)
    sync(device)
    params = sum(p.numel() for p in model.parameters())
    V = model.config.text_config.vocab_size
    name = device_name(device, args.tiny)
    peak = peak_for(name, args.peak_tflops) if device.type == "cuda" and not args.tiny else math.nan
    print(f"{name}: {params / 1e9:.3f} B parameters, {next(model.parameters()).dtype}, built in "
          f"{time.perf_counter() - t0:.1f} s; torch {torch.__version__}")

    # Token ids: 20 template tokens before the image, 36 of user text, 12 after (644 in all with
    # LLaVA-1.5's 576 image tokens, as measured in the issue); the policy goes before the image.
    g = torch.Generator().manual_seed(1)
    ids = lambda k: torch.randint(4, V - 2, (k,), generator=g).tolist()  # noqa: E731
    head, policy, suffix = ids(20), ids(policy_tokens), ids(12)
    filler = 4
    text = torch.tensor(ids(36) if not args.tiny else ids(12), device=device)
    image = torch.rand(3, side, side, generator=g).to(device)
    alphabet = list(range(4, V - 2))

    def adapter(prompt: str) -> VLMGuardAdapter:
        pre = head if prompt == "short" else [head[0]] + policy + head[1:]
        layout = PromptLayout(prefix=tuple(pre), suffix=tuple(suffix))
        probe = VLMGuardAdapter(model, pipe, layout, unsafe_ids=[5], safe_ids=[6], cache_prefix=False)
        with torch.no_grad():  # answer ids: the clean input's most and least likely next tokens
            logits = model(input_ids=probe.input_ids(text[None], side, side), logits_to_keep=1,
                           pixel_values=probe.pixel_values(image[None])[0]).logits[0, -1, 4:V - 2]
        return VLMGuardAdapter(model, pipe, layout, unsafe_ids=[int(logits.argmax()) + 4],
                               safe_ids=[int(logits.argmin()) + 4], cache_prefix=prompt != "policy-recomputed")

    rows = []
    batch = args.batch
    for prompt in args.prompts.split(","):
        ad = adapter(prompt)
        if batch is None:
            batch = max_batch_size(ad, text, image, start=8, limit=256) if device.type == "cuda" else 32
        n_img = ad.num_image_tokens(side, side)
        P = len(ad.layout.prefix)
        seq = P + n_img + text.numel() + len(ad.layout.suffix)
        sps = rate(ad, text, image, batch, reps, device)
        cached = P if ad.cache_prefix else 0
        tflops = forward_flops(model.config, 1, seq - cached, cached) * sps / 1e12
        base = dict(device=name, torch=torch.__version__, transformers=transformers.__version__,
                    model="LLaVA-1.5-7B config" if not args.tiny else "tiny LLaVA",
                    params_B=round(params / 1e9, 4), dtype=str(next(model.parameters()).dtype).replace("torch.", ""),
                    prompt=prompt if prompt == "short" else f"{prompt} ({policy_tokens} tokens)",
                    seq_len=seq, batch=batch, samples_per_s=round(sps, 2), tflops=float(f"{tflops:.4g}"),
                    peak_tflops=peak, pct_peak=round(100 * tflops / peak, 1) if peak == peak else math.nan)
        kernel = UniformKernel(0.25, alphabet=alphabet)
        image_only = HybridSmooth(ad, sigma=0.5, kernel=None, batch_size=batch, progress=False)
        hybrid = HybridSmooth(ad, sigma=0.5, kernel=kernel, batch_size=batch, progress=False)
        runs = {"image-only": (image_only, None, FixedN(draws)),
                "l0": (hybrid, L0(d_max=8), FixedN(draws)),
                "suffix-per-d": (hybrid, Suffix(m=8, filler_id=filler, stop_early=False), FixedN(draws)),
                "suffix-shared": (hybrid, Suffix(m=8, filler_id=filler, shared=True), FixedN(draws)),
                "sequential": (hybrid, L0(d_max=8), Sequential(target_d=1, target_eps=0.5, max_n=n_full,
                                                                first_batch=batch, growth=2.0))}
        for sm in (image_only, hybrid):  # warm-up: first-call costs stay out of the timings
            sm.count(text, image, batch, seed=1)
        image_s = None
        for method in args.methods.split(","):
            sm, threat, est = runs[method]
            sync(device)
            t1 = time.perf_counter()
            cert = sm.certify(text, image, threat=threat, estimator=est, tau=4.6e-5, seed=0)
            sync(device)
            secs = time.perf_counter() - t1
            fixed = isinstance(est, FixedN)
            per_1e4 = secs * n_full / est.n if fixed else secs
            if method == "image-only":
                image_s = per_1e4
            rows.append(dict(base, method=method, draws=cert.n, seconds=round(secs, 3),
                             seconds_per_input_1e4=round(per_1e4, 3), extrapolated=fixed and est.n != n_full,
                             vs_image_only=round(per_1e4 / image_s, 3) if image_s else math.nan,
                             decision=cert.extra.get("decision", "")))
            print(f"  {prompt:>18} {method:>13}: {cert.n:6d} draws, {secs:8.2f} s, {per_1e4:9.2f} s per input at "
                  f"n = 1e4{' (extrapolated)' if rows[-1]['extrapolated'] else ''}")
        print(f"{prompt}: {seq} tokens, batch {batch}, {sps:.1f} samples/s, {tflops:.3g} TFLOP/s"
              + (f" = {base['pct_peak']} % of {peak:.0f}" if peak == peak else ""))
        del ad
        if device.type == "cuda":
            torch.cuda.empty_cache()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        # blank, not "nan", where a figure does not apply (no bf16 peak for a CPU)
        w.writerows({k: ("" if isinstance(x, float) and x != x else x) for k, x in r.items()} for r in rows)
    summary(rows)
    print(f"wrote {out}")
    return rows


def summary(rows: list[dict]) -> None:
    """The issue's four goals, from the table."""
    by = {(r["prompt"].split(" ")[0], r["method"]): r for r in rows}
    l0, img = by.get(("short", "l0")), by.get(("short", "image-only"))
    if l0 and img:
        print(f"hybrid l0 / image-only (short prompt): {l0['seconds_per_input_1e4'] / img['seconds_per_input_1e4']:.3f}"
              " (goal <= 1.02)")
    c, r = by.get(("policy-cached", "image-only")), by.get(("policy-recomputed", "image-only"))
    if c and r:
        print(f"prefix cache speed-up: {c['samples_per_s'] / r['samples_per_s']:.2f}x (goal >= 1.7)")
    pct = [x["pct_peak"] for x in rows if x["pct_peak"] == x["pct_peak"]]
    if pct:
        print(f"best share of bf16 peak: {max(pct)} % (goal >= 60 %)")
    seq = by.get(("short", "sequential"))
    if seq:
        print(f"sequential: {seq['draws']} draws, {seq['decision']} (goal <= 1000 draws)")


if __name__ == "__main__":
    main()
