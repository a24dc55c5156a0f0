"""Helpers the book's notebooks share: run profiles, seeding, and where tables and figures go.

Every table a chapter reports is written to ``<results>/<chapter>_<table>.csv`` (``data/results``
by default, see :mod:`hybridrs._paths`) and shown from that file.  Tests re-execute the notebooks in the quick profile; they set ``HYBRIDRS_PROFILE=quick``
and point ``HYBRIDRS_RESULTS_DIR`` at a scratch folder so the committed full-profile results are
never overwritten by a test run.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

from hybridrs._paths import results_dir

PROFILES = ("full", "quick")


def resolve_profile(profile: str) -> str:
    """The profile to run: ``HYBRIDRS_PROFILE`` when set (tests), else the notebook's parameter."""
    profile = os.environ.get("HYBRIDRS_PROFILE", profile)
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {PROFILES}, got {profile!r}")
    return profile


def seed_everything(seed: int, threads: int = 2) -> None:
    """Seed Python, numpy and torch and make CPU kernels deterministic."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)


def save_table(df, chapter: str, name: str):
    """Write ``df`` to ``<results>/<chapter>_<name>.csv`` and return it re-read from that file,
    so that what the book shows is exactly what the file holds."""
    import pandas as pd

    path = results_dir() / f"{chapter}_{name}.csv"
    df.to_csv(path, index=False)
    return pd.read_csv(path)


def save_figure(fig, chapter: str, name: str) -> Path:
    """Save a matplotlib figure as ``<results>/<chapter>_<name>.png`` (150 dpi)."""
    path = results_dir() / f"{chapter}_{name}.png"
    fig.savefig(path, dpi=150, bbox_inches="tight")
    return path


def model_checksum(model: torch.nn.Module) -> str:
    """SHA-256 (16 hex digits) of a model's parameters and buffers (names, dtypes, shapes, bytes):
    part of every resume key, so that a retrained model never reuses another model's rows."""
    import hashlib

    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()[:16]
