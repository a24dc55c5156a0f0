"""Resume mechanism for long experiment loops: one CSV row per finished job.

A loop certifies one input at a time and appends its row to ``<results>/cache/<name>.csv``
(``hybridrs._paths.results_dir``; the folder is git-ignored, nothing in it is a result of the
book) as soon as it is done; a rerun reads the file and skips every key already there, so an
interrupted run resumes where it stopped.

Keys must change whenever the result could: :func:`cache_key` spells out every parameter of a job
(set, input, σ, β, n, α, τ, threat, seed, ...) and :func:`run_cached`'s ``context`` adds what the
job depends on beyond its parameters — the base model's SHA-256, ``hybridrs.__version__`` and
:data:`CODE_VERSION` — hashed into every key.  A changed parameter, a retrained model or a new code
version therefore never reuses a stale row; the stale rows simply stay unused in the file.
"""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import pandas as pd

#: Bumped whenever chapter 8's certification code changes what a row holds or how it is computed.
CODE_VERSION = "ch8-3"


def cache_dir() -> Path:
    from hybridrs._paths import results_dir

    path = results_dir() / "cache"
    path.mkdir(parents=True, exist_ok=True)
    return path


def cache_key(**params) -> str:
    """``"a=1|b=x|..."`` over the sorted parameters (floats by ``repr``, so 0.1 ≠ 0.10000001)."""
    if not params:
        raise ValueError("cache_key needs at least one parameter")
    return "|".join(f"{k}={params[k]!r}" for k in sorted(params))


def context_hash(context: dict | None) -> str:
    """12 hex digits of the SHA-256 of ``context`` (JSON, sorted keys) plus the package and code
    versions; '' for ``None`` (legacy callers that put everything in their keys)."""
    if context is None:
        return ""
    import hybridrs

    full = {"hybridrs": hybridrs.__version__, "code": CODE_VERSION, **context}
    return hashlib.sha256(json.dumps(full, sort_keys=True, default=str).encode()).hexdigest()[:12]


class ResultCache:
    """Rows keyed by a string ``key``, appended to ``<folder>/<name>.csv`` one at a time.

    Values that are lists or dicts are stored as JSON strings and decoded on reading.
    """

    def __init__(self, name: str, folder: Path | str | None = None):
        if not name or "/" in name:
            raise ValueError(f"name must be a plain file stem, got {name!r}")
        self.path = Path(folder if folder is not None else cache_dir()) / f"{name}.csv"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.rows: dict[str, dict] = {}
        self.columns: list[str] | None = None
        if self.path.exists():
            with self.path.open(newline="") as fh:
                reader = csv.DictReader(fh)
                self.columns = reader.fieldnames
                for row in reader:
                    self.rows[row["key"]] = {k: _decode(x) for k, x in row.items()}

    def __contains__(self, key: str) -> bool:
        return key in self.rows

    def add(self, key: str, row: dict) -> dict:
        row = {"key": key, **row}
        if self.columns is None:
            self.columns = list(row)
            with self.path.open("w", newline="") as fh:
                csv.writer(fh).writerow(self.columns)
        if set(row) != set(self.columns):
            raise ValueError(f"row columns {sorted(row)} differ from the cache's {sorted(self.columns)}")
        with self.path.open("a", newline="") as fh:
            csv.writer(fh).writerow([_encode(row[c]) for c in self.columns])
        self.rows[key] = {k: _decode(_encode(x) if not isinstance(x, bool) else str(x)) for k, x in row.items()}
        return self.rows[key]


def _encode(x):
    if isinstance(x, (list, tuple, dict)):
        return json.dumps(x, default=_json_default)
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    return x


def _json_default(x):
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(f"cannot store {type(x)} in the cache")


def _decode(x):
    if not isinstance(x, str):
        return x
    if x in ("True", "False"):
        return x == "True"
    if x[:1] in "[{":
        return json.loads(x)
    for cast in (int, float):
        try:
            return cast(x)
        except ValueError:
            pass
    return x


def run_cached(name: str, jobs: Iterable[tuple[str, Callable[[], dict]]], folder=None,
               progress: bool = True, desc: str | None = None, context: dict | None = None) -> pd.DataFrame:
    """Run each (key, job) whose key is not yet in the cache ``name``; return the rows of all the
    given keys, in order, as a DataFrame (column ``key`` holds the caller's key, without the
    context hash).  Each row is written the moment its job returns.

    ``context`` (e.g. ``{"model": sha256}``): what the jobs depend on beyond their keys; it is
    hashed, with ``hybridrs.__version__`` and :data:`CODE_VERSION`, into every stored key.
    """
    from hybridrs._progress import progress_bar

    cache = ResultCache(name, folder)
    h = context_hash(context)
    full = (lambda k: f"{h}#{k}") if h else (lambda k: k)
    jobs = list(jobs)
    keys = [k for k, _ in jobs]
    if len(set(keys)) != len(keys):
        raise ValueError("duplicate keys among the jobs")
    todo = [(k, f) for k, f in jobs if full(k) not in cache]
    for k, f in progress_bar(todo, show=progress and bool(todo), desc=desc or name):
        cache.add(full(k), f())
    return pd.DataFrame([{**cache.rows[full(k)], "key": k} for k in keys])
