"""Command line: ``hybridrs certify`` (a JSONL file of inputs → a CSV of certificates) and
``hybridrs report`` (certified-accuracy table and frontier plot).

Model protocol
--------------
``--model package.module:factory`` (or ``path/to/file.py:factory``) names a function that builds
the base classifier.  It is called as ``factory(device=DEVICE)`` when it accepts a ``device``
argument, else ``factory()``, and returns an object (or a dict with the same keys) providing:

* ``model(tokens, images) -> labels``: tokens a LongTensor (b, L) of ids, images a float tensor
  (b, *image_shape) in the pixel units of σ; returns b labels in {0, 1} (1 = the protected class).
  Gaussian noise is added *before* the call, so any normalisation belongs inside the model.
  (A dict names it ``"classify"``.)
* ``encode(text) -> list[int]``: the tokenizer, needed for records that give ``text``.
* ``vocab_size`` (ids 0..V−1) or ``alphabet`` (explicit list of ids): the alphabet the uniform
  kernel draws from (``--vocab-size`` overrides).  For a real tokenizer, use the usable
  non-special ids: the certificate assumes every clean token is in the alphabet.
* ``mask_id``: the mask token of the absorbing kernel (``--mask-id`` overrides).
* ``filler_id``: the padding token of the suffix threats (``--filler`` overrides).

Records
-------
One JSON object per line: ``id`` (string or integer, unique, required), ``text`` (string) or
``tokens`` (list of ids), ``image`` (a path to a ``.png`` (Pillow, scaled to [0, 1], shape (C, H, W))
or ``.npy`` (floating array, used as is), relative to the JSONL file, or an inline nested list), and
optionally ``label`` (0 or 1).

Output
------
One CSV row per input, appended and flushed as soon as it is done, with the columns ``COLUMNS``
followed by r_0..r_D (the certified image radius at text budget d; -inf = not certified at
(d, 0)).  A rerun skips the ids already in the file; a torn last line (killed mid-write) is
detected and that input redone.  The settings are stored beside the results
(``<results>.settings.json``) and a rerun with different settings is refused, so that one file
never mixes two experiments; a second run writing the same file at the same time is refused (file
lock).  Every input gets its own seed, derived from ``--seed`` and its id
(:func:`record_seed`), so the results do not depend on the order of the inputs or on sharding.

Exit status: 0 on success, 2 on bad input (the message names the argument or the record; nothing
is written to the results file before all inputs have been checked).
"""

from __future__ import annotations

import argparse
import csv
import importlib
import importlib.util
import inspect
import io
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from hybridrs import _validate as v

#: Leading columns of the results file; r_0..r_D and then TAIL_COLUMNS follow.
COLUMNS = ["id", "label", "threat", "n", "count", "p_a"]
TAIL_COLUMNS = ["d_certified", "decision", "seconds"]
THREATS = ("l0", "suffix", "shared-suffix")
KERNELS = ("uniform", "absorbing")


class InputError(ValueError):
    """Bad input to the command line: the message names the argument or record at fault."""


# --------------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------------

@dataclass
class CertifyConfig:
    """All settings of a certification run (the command-line options, as a dataclass).

    ``sigma = 0`` means text-only smoothing (the image, if any, is passed clean).  For the suffix
    threats the text budget is the suffix length m, so ``d_max`` is m.  Sequential mode draws
    batches until the target (``target_d``, ``target_eps``) is certified or refuted, up to
    ``max_n`` draws (see :mod:`hybridrs.sequential`); ``n`` is then unused.
    """

    model: str
    kernel: str = "uniform"
    beta: float = 0.25
    sigma: float = 0.5
    n: int = 10_000
    alpha: float = 0.01
    tau: float = 0.5
    d_max: int | None = None
    threat: str = "l0"
    suffix_len: int = 8
    filler: int | None = None
    vocab_size: int | None = None
    mask_id: int | None = None
    device: str = "cpu"
    batch_size: int = 1000
    seed: int = 0
    sequential: bool = False
    target_d: int = 1
    target_eps: float = 0.0
    max_n: int = 100_000
    first_batch: int = 100

    def validate(self) -> "CertifyConfig":
        """Check every field; raise InputError naming the option at fault."""
        def opt(name):
            return "--" + name.replace("_", "-")
        if self.kernel not in KERNELS:
            raise InputError(f"{opt('kernel')}: must be one of {', '.join(KERNELS)}, got {self.kernel!r}")
        if self.threat not in THREATS:
            raise InputError(f"{opt('threat')}: must be one of {', '.join(THREATS)}, got {self.threat!r}")
        if not isinstance(self.model, str) or not self.model:
            raise InputError(f"--model: expected 'package.module:factory', got {self.model!r}")
        checks = [
            ("beta", lambda x: v.beta(x, "beta")),
            ("sigma", lambda x: v.nonnegative(x, "sigma")),
            ("n", lambda x: v.integer(x, "n", minimum=1)),
            ("alpha", lambda x: v.open_unit(x, "alpha")),
            ("tau", lambda x: v.open_unit(x, "tau")),
            ("suffix_len", lambda x: v.integer(x, "suffix_len", minimum=1)),
            ("batch_size", lambda x: v.integer(x, "batch_size", minimum=1)),
            ("seed", lambda x: v.integer(x, "seed")),
            ("target_d", lambda x: v.integer(x, "target_d")),
            ("target_eps", lambda x: v.nonnegative(x, "target_eps")),
            ("max_n", lambda x: v.integer(x, "max_n", minimum=1)),
            ("first_batch", lambda x: v.integer(x, "first_batch", minimum=1)),
        ]
        for name, check in checks:
            try:
                setattr(self, name, check(getattr(self, name)))
            except ValueError as exc:
                raise InputError(f"{opt(name)}: {exc}") from None
        for name in ("d_max", "filler", "vocab_size", "mask_id"):
            val = getattr(self, name)
            if val is not None:
                try:
                    setattr(self, name, v.integer(val, name, minimum=2 if name == "vocab_size" else 0))
                except ValueError as exc:
                    raise InputError(f"{opt(name)}: {exc}") from None
        if self.seed >= 2 ** 63:
            raise InputError(f"--seed: must be < 2**63, got {self.seed}")
        if self.threat == "l0":
            self.d_max = 4 if self.d_max is None else self.d_max
        else:
            if self.d_max is not None and self.d_max != self.suffix_len:
                raise InputError(f"--d-max: for the {self.threat} threat the text budget is the suffix length; "
                                 f"set --suffix-len (got --d-max {self.d_max}, --suffix-len {self.suffix_len})")
            self.d_max = self.suffix_len
        if self.sequential:
            if self.threat == "suffix":
                raise InputError("--sequential: not available for the per-d suffix threat (one p_A per d); "
                                 "use --threat shared-suffix or l0")
            if self.target_d > self.d_max:
                raise InputError(f"--target-d: must be <= d_max = {self.d_max}, got {self.target_d}")
            if self.sigma == 0 and self.target_eps > 0:
                raise InputError("--target-eps: text-only smoothing (--sigma 0) certifies eps = 0 only")
        return self

    def settings(self) -> dict:
        """The settings that determine the results (stored beside the results file)."""
        out = asdict(self)
        out["format"] = 1
        return out


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------

@dataclass
class Model:
    """The base classifier and what the command line needs to know about it (module docstring)."""

    classify: Callable
    encode: Callable[[str], Sequence[int]] | None = None
    vocab_size: int | None = None
    alphabet: Sequence[int] | None = None
    mask_id: int | None = None
    filler_id: int | None = None


def _import_factory(spec: str) -> Callable:
    if not isinstance(spec, str) or spec.count(":") != 1 or not all(spec.split(":")):
        raise InputError(f"--model: expected 'package.module:factory' or 'file.py:factory', got {spec!r}")
    module_name, attr = spec.split(":")
    try:
        if module_name.endswith(".py") or os.sep in module_name:
            path = Path(module_name)
            if not path.is_file():
                raise InputError(f"--model: file {module_name!r} does not exist")
            mod_spec = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(mod_spec)
            mod_spec.loader.exec_module(module)
        else:
            if os.getcwd() not in sys.path and "" not in sys.path:
                sys.path.insert(0, os.getcwd())  # as `python -m` would: models in the working directory
            module = importlib.import_module(module_name)
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"--model: cannot import {module_name!r}: {type(exc).__name__}: {exc}") from None
    factory = getattr(module, attr, None)
    if factory is None or not callable(factory):
        raise InputError(f"--model: {module_name!r} has no callable {attr!r}")
    return factory


def load_model(spec: str, device: str = "cpu") -> Model:
    """Import ``package.module:factory`` (or ``file.py:factory``), call it and wrap the result.

    The factory gets ``device=`` when its signature has that parameter.  Raises InputError naming
    ``--model`` when the import or the call fails or the result does not follow the protocol.
    """
    factory = _import_factory(spec)
    try:
        params = inspect.signature(factory).parameters
        takes_device = "device" in params or any(p.kind == p.VAR_KEYWORD for p in params.values())
    except (TypeError, ValueError):
        takes_device = False
    try:
        obj = factory(device=device) if takes_device else factory()
    except Exception as exc:
        raise InputError(f"--model: {spec} raised {type(exc).__name__}: {exc}") from None
    get = (lambda k: obj.get(k)) if isinstance(obj, dict) else (lambda k: getattr(obj, k, None))
    classify = get("classify") if isinstance(obj, dict) else obj
    if not callable(classify):
        raise InputError(f"--model: {spec} must return a callable model(tokens, images) -> labels "
                         f"(or a dict with a 'classify' entry), got {type(obj).__name__}")
    encode = get("encode")
    if encode is not None and not callable(encode):
        raise InputError(f"--model: the model's encode must be callable, got {type(encode).__name__}")
    return Model(classify=classify, encode=encode, vocab_size=get("vocab_size"), alphabet=get("alphabet"),
                 mask_id=get("mask_id"), filler_id=get("filler_id"))


def build_kernel(cfg: CertifyConfig, model: Model):
    """The text kernel of the run, with its alphabet / mask id from the options or the model."""
    from hybridrs.kernels import AbsorbingKernel, UniformKernel

    if cfg.kernel == "uniform":
        vocab = cfg.vocab_size if cfg.vocab_size is not None else model.vocab_size
        alphabet = None if cfg.vocab_size is not None else model.alphabet
        if vocab is None and alphabet is None:
            raise InputError("--vocab-size: the uniform kernel needs the alphabet size; pass --vocab-size "
                             "or give the model a vocab_size / alphabet attribute")
        try:
            return UniformKernel(cfg.beta, vocab_size=vocab if alphabet is None else None, alphabet=alphabet)
        except ValueError as exc:
            raise InputError(f"--vocab-size: {exc}") from None
    mask_id = cfg.mask_id if cfg.mask_id is not None else model.mask_id
    if mask_id is None:
        raise InputError("--mask-id: the absorbing kernel needs a mask token; pass --mask-id or give the "
                         "model a mask_id attribute")
    try:
        return AbsorbingKernel(cfg.beta, int(mask_id))
    except (ValueError, TypeError) as exc:
        raise InputError(f"--mask-id: {exc}") from None


# --------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------

@dataclass
class Record:
    """One input: its id, token ids, image source (path or inline array) and optional label."""

    id: str
    tokens: list[int]
    image: Any = None  # Path, np.ndarray or None
    label: int | None = None
    line: int = 0

    def load_image(self):
        """The image as a float tensor (None when the record has none)."""
        import torch

        if self.image is None:
            return None
        if isinstance(self.image, np.ndarray):
            return torch.from_numpy(self.image)
        return torch.from_numpy(read_image(self.image, f"record {self.id!r} (line {self.line})"))


def read_image(path: Path, where: str = "image") -> np.ndarray:
    """Read a .png (Pillow; [0, 1], (C, H, W)) or .npy (floating array as is) image."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{where}: image file {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            arr = np.load(path, allow_pickle=False)
            if not np.issubdtype(arr.dtype, np.floating):
                raise InputError(f"{where}: {str(path)!r} holds {arr.dtype} values; .npy images must be "
                                 "floating point in the units of sigma (scale integer pixels yourself)")
            arr = np.ascontiguousarray(arr, dtype=np.float32)
        elif suffix == ".png":
            from PIL import Image

            with Image.open(path) as im:
                im.load()
                if im.mode in ("1", "L", "I;16", "I"):
                    raw = np.asarray(im)
                    scale = 65535.0 if im.mode in ("I;16", "I") else (1.0 if im.mode == "1" else 255.0)
                    arr = (raw.astype(np.float32) / scale)[None]
                else:
                    arr = np.asarray(im.convert("RGB")).astype(np.float32).transpose(2, 0, 1) / 255.0
            arr = np.ascontiguousarray(arr)
        else:
            raise InputError(f"{where}: unsupported image type {suffix!r} ({str(path)!r}); use .png or .npy")
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"{where}: cannot read image {str(path)!r}: {type(exc).__name__}: {exc}") from None
    if arr.size == 0 or not np.isfinite(arr).all():
        raise InputError(f"{where}: image {str(path)!r} is empty or contains NaN/inf")
    return arr


def read_records(path: str | os.PathLike, model: Model | None = None, *, check_images: bool = True) -> list[Record]:
    """Parse and check a JSONL file of inputs (module docstring); raise InputError on the first bad one.

    Texts are encoded with ``model.encode``; image paths are resolved relative to the file and
    (``check_images``) opened once, so that a bad image stops the run before anything is written.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"input file {str(path)!r} does not exist")
    records, seen = [], {}
    with open(path, encoding="utf-8") as f:
        for lineno, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            where = f"{path.name} line {lineno}"
            try:
                obj = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise InputError(f"{where}: not valid JSON ({exc.msg})") from None
            if not isinstance(obj, dict):
                raise InputError(f"{where}: each line must be a JSON object, got {type(obj).__name__}")
            rid = obj.get("id")
            if isinstance(rid, bool) or not isinstance(rid, (str, int)) or (isinstance(rid, str) and not rid.strip()):
                raise InputError(f"{where}: 'id' is missing or not a non-empty string/integer")
            rid = str(rid)
            if any(c in rid for c in "\r\n"):
                raise InputError(f"{where}: 'id' must not contain line breaks")
            where = f"record {rid!r} ({path.name} line {lineno})"
            if rid in seen:
                raise InputError(f"{where}: duplicate id (first on line {seen[rid]})")
            seen[rid] = lineno
            tokens = _record_tokens(obj, model, where)
            image = _record_image(obj, path.parent, where, check_images)
            label = obj.get("label")
            if label is not None and (isinstance(label, bool) or label not in (0, 1)):
                raise InputError(f"{where}: 'label' must be 0 or 1, got {label!r}")
            records.append(Record(rid, tokens, image, label, lineno))
    if not records:
        raise InputError(f"input file {str(path)!r} holds no records")
    return records


def _record_tokens(obj: dict, model: Model | None, where: str) -> list[int]:
    if "tokens" in obj:
        toks = obj["tokens"]
        if (not isinstance(toks, list) or not toks
                or not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in toks)):
            raise InputError(f"{where}: 'tokens' must be a non-empty list of non-negative integer ids")
        return list(toks)
    text = obj.get("text")
    if not isinstance(text, str) or not text.strip():
        raise InputError(f"{where}: no text (give a non-empty 'text' string or a 'tokens' list)")
    if model is None or model.encode is None:
        raise InputError(f"{where}: has 'text' but the model has no encode(text) -> ids; give 'tokens' "
                         "or add encode to the model")
    try:
        toks = [int(t) for t in model.encode(text)]
    except Exception as exc:
        raise InputError(f"{where}: the model's encode failed: {type(exc).__name__}: {exc}") from None
    if not toks:
        raise InputError(f"{where}: the text encodes to no tokens")
    return toks


def _record_image(obj: dict, base: Path, where: str, check: bool):
    img = obj.get("image")
    if img is None:
        return None
    if isinstance(img, str):
        p = Path(img)
        p = p if p.is_absolute() else base / p
        if check:
            read_image(p, where)
        elif not p.is_file():
            raise InputError(f"{where}: image file {str(p)!r} does not exist")
        return p
    if isinstance(img, list):
        try:
            arr = np.asarray(img, dtype=np.float32)
        except (TypeError, ValueError):
            raise InputError(f"{where}: inline 'image' must be a nested list of numbers") from None
        if arr.size == 0 or arr.dtype == object or not np.isfinite(arr).all():
            raise InputError(f"{where}: inline 'image' is empty, ragged or has NaN/inf")
        return arr
    raise InputError(f"{where}: 'image' must be a path string or a nested list, got {type(img).__name__}")


def record_seed(seed: int, record_id: str) -> int:
    """Seed of one input: ``input_seed(seed, id)`` (BLAKE2b, 62 bits), independent of order and sharding."""
    from hybridrs.seeds import input_seed

    return input_seed(seed, str(record_id))


# --------------------------------------------------------------------------------------------
# Certifying one record
# --------------------------------------------------------------------------------------------

class Certifier:
    """Model + smoother for one process: ``certifier(record) -> row`` (a dict of CSV fields)."""

    def __init__(self, cfg: CertifyConfig, model: Model | None = None):
        from hybridrs.smoothing import HybridSmooth

        self.cfg = cfg.validate()
        self.model = model if model is not None else load_model(cfg.model, cfg.device)
        self.kernel = build_kernel(cfg, self.model)
        self.filler = None
        if cfg.threat != "l0":
            self.filler = cfg.filler if cfg.filler is not None else self.model.filler_id
            if self.filler is None:
                raise InputError(f"--filler: the {cfg.threat} threat needs a filler token id; pass --filler "
                                 "or give the model a filler_id attribute")
        try:
            self.smoother = HybridSmooth(self.model.classify, sigma=cfg.sigma if cfg.sigma > 0 else None,
                                         kernel=self.kernel, batch_size=cfg.batch_size, device=cfg.device,
                                         progress=False)
        except (ValueError, RuntimeError) as exc:
            raise InputError(f"--device: {exc}") from None

    @property
    def columns(self) -> list[str]:
        return columns(self.cfg.d_max)

    def check(self, rec: Record) -> None:
        """Problems a record can have that only the kernel/threat can see (raise InputError)."""
        where = f"record {rec.id!r} (line {rec.line})"
        if self.cfg.sigma > 0 and rec.image is None:
            raise InputError(f"{where}: no 'image', but --sigma {self.cfg.sigma} smooths an image")
        if self.cfg.kernel == "uniform":
            alphabet = self.kernel.alphabet
            ids = rec.tokens + ([self.filler] if self.filler is not None else [])
            for t in ids:
                inside = t < self.kernel.vocab_size if alphabet is None else bool((alphabet == t).any())
                if not inside:
                    raise InputError(f"{where}: token id {t} is outside the uniform kernel's alphabet "
                                     f"(vocab size {self.kernel.vocab_size})")

    def threat(self):
        from hybridrs.threats import L0, Suffix

        if self.cfg.threat == "l0":
            return L0(d_max=self.cfg.d_max)
        return Suffix(m=self.cfg.suffix_len, filler_id=self.filler, shared=self.cfg.threat == "shared-suffix")

    def estimator(self):
        from hybridrs.estimators import FixedN, Sequential

        cfg = self.cfg
        if cfg.sequential:
            return Sequential(alpha=cfg.alpha, target_d=cfg.target_d, target_eps=cfg.target_eps,
                              max_n=cfg.max_n, first_batch=cfg.first_batch)
        return FixedN(n=cfg.n, alpha=cfg.alpha)

    def __call__(self, rec: Record) -> dict:
        import torch

        cfg = self.cfg
        tokens = torch.tensor(rec.tokens, dtype=torch.long)
        t0 = time.perf_counter()
        cert = self.smoother.certify(tokens, rec.load_image(), threat=self.threat(), estimator=self.estimator(),
                                     tau=cfg.tau, seed=record_seed(cfg.seed, rec.id))
        radii = np.asarray(cert.radii, dtype=float)
        if radii.size != cfg.d_max + 1:  # image-only: budget 0 only; the other columns "not certified"
            radii = np.concatenate([radii, np.full(cfg.d_max + 1 - radii.size, -np.inf)])
        counts = cert.counts
        row = {"id": rec.id, "label": "" if rec.label is None else str(rec.label), "threat": cfg.threat,
               "n": str(cert.n), "count": ";".join(str(c) for c in counts) if len(counts) > 1 else str(counts[0]),
               "p_a": ";".join(repr(float(p)) for p in cert.p_a_per_stage)}
        row.update({f"r_{d}": repr(float(r)) for d, r in enumerate(radii)})
        row.update({"d_certified": str(cert.d_certified), "decision": cert.extra.get("decision", ""),
                    "seconds": f"{time.perf_counter() - t0:.3f}"})
        return row


def certify_or_explain(certifier: Certifier, rec: Record) -> dict:
    """``certifier(rec)``, turning a failure inside the model or the checks into an InputError that
    names the record (rows already written stay; nothing is written for this one)."""
    try:
        return certifier(rec)
    except InputError:
        raise
    except (ValueError, RuntimeError, TypeError) as exc:
        raise InputError(f"record {rec.id!r} (line {rec.line}): {type(exc).__name__}: {exc}") from None


def columns(d_max: int) -> list[str]:
    """Header of a results file with text budgets 0..d_max."""
    return COLUMNS + [f"r_{d}" for d in range(d_max + 1)] + TAIL_COLUMNS


# --------------------------------------------------------------------------------------------
# Results file: append-only, flushed per row, resumable
# --------------------------------------------------------------------------------------------

class ResultsFile:
    """Append-only CSV of certificates, resumable.

    Opening it checks the header against ``columns`` and the settings against the sidecar
    ``<path>.settings.json``, reads the finished ids, and cuts off a torn last line (a row that
    does not end in a newline or has the wrong number of fields), so that input is redone.
    """

    def __init__(self, path: str | os.PathLike, cols: list[str], settings: dict | None = None):
        self.path = Path(path)
        self.columns = list(cols)
        self.settings_path = self.path.with_name(self.path.name + ".settings.json")
        self.done: dict[str, dict] = {}
        self.repaired = False
        self._lock = None
        self._fh = None
        if self.path.exists():
            self._take_lock(open(self.path, "rb"))
        try:
            self._check_settings(settings)
            if self.path.exists() and self.path.stat().st_size > 0:
                self._load()
        except BaseException:
            self.close()
            raise

    def _take_lock(self, fh) -> None:
        """One writer per results file: a second run on the same file stops instead of interleaving."""
        try:
            import fcntl
        except ImportError:  # not POSIX: no guard
            self._lock = fh
            return
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.close()
            raise InputError(f"results file {str(self.path)!r} is being written by another run; wait for it "
                             "or use another output file") from None
        self._lock = fh

    def _check_settings(self, settings):
        if settings is None:
            return
        if self.settings_path.exists() and self.path.exists() and self.path.stat().st_size > 0:
            try:
                old = json.loads(self.settings_path.read_text())
            except (OSError, json.JSONDecodeError):
                raise InputError(f"results file {str(self.path)!r}: its settings file "
                                 f"{str(self.settings_path)!r} is unreadable; move the results away to start over") from None
            diff = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
            if diff:
                detail = ", ".join(f"{k}: {old.get(k)!r} -> {settings.get(k)!r}" for k in diff)
                raise InputError(f"results file {str(self.path)!r} was written with other settings ({detail}); "
                                 "use another output file or the original settings")
        self._settings = settings

    def _load(self):
        data = self.path.read_bytes()
        lines = data.split(b"\n")
        # The last element is b"" when the file ends with a newline; anything else is a torn line.
        complete, tail = lines[:-1], lines[-1]
        good_bytes = 0
        header = None
        for i, raw in enumerate(complete):
            try:
                fields = next(csv.reader([raw.decode("utf-8")]))
            except (UnicodeDecodeError, StopIteration, csv.Error):
                fields = None
            if i == 0:
                if fields != self.columns:
                    raise InputError(f"results file {str(self.path)!r} has header {fields!r}, expected "
                                     f"{self.columns!r} (other d_max or format); use another output file")
                header = fields
                good_bytes += len(raw) + 1
                continue
            if fields is None or len(fields) != len(self.columns) or not _row_ok(fields, self.columns):
                if i == len(complete) - 1:
                    break  # a damaged last line: redo it
                raise InputError(f"results file {str(self.path)!r}: line {i + 1} is damaged (not the last "
                                 "line, so not a torn write); fix or move the file")
            row = dict(zip(self.columns, fields))
            self.done[row["id"]] = row
            good_bytes += len(raw) + 1
        if header is None:
            good_bytes = 0  # the header itself was torn: start the file again
        if good_bytes != len(data):
            self.repaired = True
            with open(self.path, "r+b") as f:
                f.truncate(good_bytes)
                f.flush()
                os.fsync(f.fileno())

    def open(self) -> "ResultsFile":
        new = not self.path.exists() or self.path.stat().st_size == 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "a", encoding="utf-8", newline="")
        if self._lock is None:
            self._take_lock(open(self.path, "rb"))
        if new:
            self._write_line(self.columns)
        if getattr(self, "_settings", None) is not None:
            tmp = self.settings_path.with_name(self.settings_path.name + ".tmp")
            tmp.write_text(json.dumps(self._settings, indent=1, sort_keys=True))
            os.replace(tmp, self.settings_path)
        return self

    def _write_line(self, fields: list[str]):
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow(fields)
        self._fh.write(buf.getvalue())
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def append(self, row: dict) -> None:
        """Write one finished row and flush it to disk."""
        if self._fh is None:
            self.open()
        self._write_line([row[c] for c in self.columns])
        self.done[row["id"]] = row

    def close(self):
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        if self._lock is not None:
            self._lock.close()  # releases the lock
            self._lock = None

    def __enter__(self):
        return self  # opened by the first append: a run that fails before any row leaves no file

    def __exit__(self, *exc):
        self.close()


def _row_ok(fields: list[str], cols: list[str]) -> bool:
    row = dict(zip(cols, fields))
    try:
        int(row["n"])
        int(row["d_certified"])
        float(row["seconds"])
        for c in cols:
            if c.startswith("r_"):
                float(row[c])
    except ValueError:
        return False
    return bool(row["id"])


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------

def summarize(rows: Iterable[dict], d_max: int) -> dict:
    """Certified fraction (d_certified ≥ 1, i.e. certified at (1, 0)), mean d_max (non-certified
    inputs count 0), mean r*(1) (0 where not certified) over the given rows — the paper's metrics
    (Delattre et al. 2026, §4: "certified examples", d̄, r̄ at d = 1)."""
    rows = list(rows)
    if not rows:
        return {"inputs": 0, "certified_fraction": float("nan"), "mean_d_max": float("nan"),
                "mean_r1": float("nan")}
    dc = np.array([int(r["d_certified"]) for r in rows])
    r1 = np.array([float(r["r_1"]) if d_max >= 1 else -math.inf for r in rows])
    return {"inputs": len(rows), "certified_fraction": float(np.mean(dc >= 1)),
            "mean_d_max": float(np.mean(np.maximum(dc, 0))),
            "mean_r1": float(np.mean(np.where(r1 > 0, r1, 0.0))),
            "mean_draws": float(np.mean([int(r["n"]) * (1 if r["threat"] != "suffix" else d_max) for r in rows]))}


def prepare(cfg: CertifyConfig, input_path, model: Model | None = None):
    """Validate settings, model and every record (nothing is written); returns (certifier, records)."""
    cfg.validate()
    certifier = Certifier(cfg, model)
    records = read_records(input_path, certifier.model)
    for rec in records:
        certifier.check(rec)
    return certifier, records


def run_certify(cfg: CertifyConfig, input_path, output_path, *, progress: bool = True,
                model: Model | None = None) -> dict:
    """Certify every record of ``input_path`` not yet in ``output_path``; return the summary.

    All inputs are checked before the first row is written.  Rows are appended and flushed one by
    one, so an interrupted run resumes where it stopped.
    """
    from hybridrs._progress import progress_bar

    certifier, records = prepare(cfg, input_path, model)
    results = ResultsFile(output_path, certifier.columns, cfg.settings())
    todo = [r for r in records if r.id not in results.done]
    with results:
        for rec in progress_bar(todo, show=progress, desc="certify", unit="input"):
            results.append(certify_or_explain(certifier, rec))
    ids = {r.id for r in records}
    return summarize([row for rid, row in results.done.items() if rid in ids], cfg.d_max)


def format_summary(summary: dict) -> str:
    return (f"{summary['inputs']} inputs: certified at (d=1, eps=0): {summary['certified_fraction']:.1%}; "
            f"mean d_max: {summary['mean_d_max']:.3f}; mean r*(1): {summary['mean_r1']:.4f}; "
            f"mean draws per input: {summary.get('mean_draws', float('nan')):.0f}")


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------

def read_results(path) -> tuple[list[dict], int]:
    """Rows and d_max of a results file (a torn last line is ignored, not repaired)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"results file {str(path)!r} does not exist")
    with open(path, encoding="utf-8", newline="") as f:
        text = f.read()
    lines = text.split("\n")
    reader = list(csv.reader(lines[:-1] if not text.endswith("\n") else lines))
    reader = [r for r in reader if r]
    if not reader:
        raise InputError(f"results file {str(path)!r} is empty")
    header = reader[0]
    rcols = [c for c in header if c.startswith("r_")]
    d_max = len(rcols) - 1
    if header != columns(d_max):
        raise InputError(f"results file {str(path)!r} is not a hybridrs certify file (header {header!r})")
    rows = [dict(zip(header, r)) for r in reader[1:] if len(r) == len(header) and _row_ok(r, header)]
    return rows, d_max


def certified_accuracy(rows: list[dict], d_max: int, radii: Sequence[float]):
    """Table: for each d and ε, the fraction of inputs with label 1 (or no label) and r*(d) ≥ ε.

    A row counts as correct when its label is 1 or absent (the certificate is for class 1, the
    protected class); rows labelled 0 count in the denominator only.  Returns a DataFrame with one
    row per d and one column per ε.
    """
    import pandas as pd

    if not rows:
        raise InputError("no finished rows to report")
    label_ok = np.array([r["label"] in ("", "1") for r in rows])
    R = np.array([[float(r[f"r_{d}"]) for d in range(d_max + 1)] for r in rows])
    data = {f"{eps:g}": [float(np.mean(label_ok & (R[:, d] >= eps))) for d in range(d_max + 1)]
            for eps in radii}
    df = pd.DataFrame(data, index=pd.Index(range(d_max + 1), name="d"))
    df.columns.name = "eps"
    return df


def run_report(path, out_dir=None, radii: Sequence[float] | None = None) -> tuple[Any, Path, Path]:
    """Write certified_accuracy.csv and frontier.png for a results file; return (table, csv, png)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, d_max = read_results(path)
    if not rows:
        raise InputError(f"results file {str(path)!r} has no finished rows")
    out = Path(out_dir) if out_dir is not None else Path(path).parent
    out.mkdir(parents=True, exist_ok=True)
    R = np.array([[float(r[f"r_{d}"]) for d in range(d_max + 1)] for r in rows])
    finite = R[np.isfinite(R)]
    top = float(finite.max()) if finite.size else 1.0
    if radii is None:
        from matplotlib.ticker import MaxNLocator

        radii = [float(x) for x in MaxNLocator(nbins=6).tick_values(0.0, max(top, 1e-3)) if 0 <= x <= top]
    table = certified_accuracy(rows, d_max, radii)
    csv_path = out / "certified_accuracy.csv"
    table.to_csv(csv_path)
    grid = np.linspace(0, max(top, 1e-3) * 1.05, 200)
    label_ok = np.array([r["label"] in ("", "1") for r in rows])
    fig, ax = plt.subplots(figsize=(6, 4))
    for d in range(d_max + 1):
        ax.plot(grid, [np.mean(label_ok & (R[:, d] >= e)) for e in grid], label=f"d = {d}")
    ax.set_xlabel("image radius ε (ℓ2, pixel units of σ)")
    ax.set_ylabel("certified accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"{Path(path).name}: {len(rows)} inputs")
    ax.legend(title="text budget", fontsize=8)
    fig.tight_layout()
    png_path = out / "frontier.png"
    fig.savefig(png_path, dpi=120)
    plt.close(fig)
    return table, csv_path, png_path


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------

class _DefaultsFormatter(argparse.HelpFormatter):
    """Show a default only where there is one to show."""

    def _get_help_string(self, action):
        text = action.help or ""
        shown = action.default is not None and action.default is not False and action.default != argparse.SUPPRESS
        if shown and "default" not in text and action.option_strings:
            text += " (default: %(default)s)"
        return text


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hybridrs", description="Certified robustness of text + image "
                                "classifiers by hybrid randomized smoothing (Delattre et al. 2026).")
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("certify", help="certify every input of a JSONL file; append rows to a CSV",
                       formatter_class=_DefaultsFormatter)
    c.add_argument("input", help="JSONL file: one {id, text|tokens, image, label} object per line")
    c.add_argument("output", help="results CSV (appended; finished ids are skipped on rerun)")
    c.add_argument("--model", required=True, help="package.module:factory or file.py:factory")
    c.add_argument("--kernel", default="uniform", choices=KERNELS, help="text smoothing kernel")
    c.add_argument("--beta", type=float, default=0.25, help="text noise: replacement/mask probability")
    c.add_argument("--sigma", type=float, default=0.5, help="image noise std (0 = text-only smoothing)")
    c.add_argument("-n", "--n", type=int, default=10_000, help="Monte Carlo draws per input")
    c.add_argument("--alpha", type=float, default=0.01, help="failure probability of each certificate")
    c.add_argument("--tau", type=float, default=0.5, help="certified threshold on P[f = 1]")
    c.add_argument("--d-max", type=int, default=None, help="largest text budget (l0; default 4)")
    c.add_argument("--threat", default="l0", choices=THREATS,
                   help="l0: any d positions; suffix: appended tokens, p_A per d; shared-suffix: one p_A")
    c.add_argument("--suffix-len", type=int, default=8, help="m, the suffix length (suffix threats)")
    c.add_argument("--filler", type=int, default=None, help="filler token id (default: model.filler_id)")
    c.add_argument("--vocab-size", type=int, default=None, help="uniform-kernel alphabet size (default: model)")
    c.add_argument("--mask-id", type=int, default=None, help="absorbing-kernel mask id (default: model)")
    c.add_argument("--device", default="cpu", help="where the noise is drawn and the model runs")
    c.add_argument("--batch-size", type=int, default=1000, help="noisy copies per forward pass")
    c.add_argument("--seed", type=int, default=0, help="global seed; each input's seed derives from it and its id")
    c.add_argument("--sequential", action="store_true", help="draw until the target is decided")
    c.add_argument("--target-d", type=int, default=1, help="sequential: text budget to decide")
    c.add_argument("--target-eps", type=float, default=0.0, help="sequential: image radius to decide")
    c.add_argument("--max-n", type=int, default=100_000, help="sequential: cap on the draws per input")
    c.add_argument("--first-batch", type=int, default=100, help="sequential: size of the first batch")
    c.add_argument("--ray", nargs="?", const="auto", default=None, metavar="ADDRESS",
                   help="shard over a Ray cluster (ADDRESS, or a local one when omitted)")
    c.add_argument("--num-gpus", type=float, default=None,
                   help="Ray: GPUs per model replica (default 1 when the cluster has GPUs, else 0)")
    c.add_argument("--workers", type=int, default=None, help="Ray: number of model replicas")
    c.add_argument("--quiet", action="store_true", help="no progress bar")
    r = sub.add_parser("report", help="certified-accuracy table and frontier plot of a results CSV")
    r.add_argument("results")
    r.add_argument("--out", default=None, help="output folder (default: beside the results)")
    r.add_argument("--radii", default=None, help="comma-separated ε values for the table")
    return p


def _config_from(args) -> CertifyConfig:
    return CertifyConfig(model=args.model, kernel=args.kernel, beta=args.beta, sigma=args.sigma, n=args.n,
                         alpha=args.alpha, tau=args.tau, d_max=args.d_max, threat=args.threat,
                         suffix_len=args.suffix_len, filler=args.filler, vocab_size=args.vocab_size,
                         mask_id=args.mask_id, device=args.device, batch_size=args.batch_size, seed=args.seed,
                         sequential=args.sequential, target_d=args.target_d, target_eps=args.target_eps,
                         max_n=args.max_n, first_batch=args.first_batch)


def main(argv: Sequence[str] | None = None) -> int:
    """Console script ``hybridrs`` (and ``python -m hybridrs``).  Returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "certify":
            cfg = _config_from(args)
            if args.ray is not None:
                from hybridrs.run.distributed import run_certify_ray

                summary = run_certify_ray(cfg, args.input, args.output,
                                          address=None if args.ray == "auto" else args.ray,
                                          num_gpus=args.num_gpus, workers=args.workers, progress=not args.quiet)
            else:
                summary = run_certify(cfg, args.input, args.output, progress=not args.quiet)
            print(format_summary(summary))
            return 0
        radii = None
        if args.radii is not None:
            try:
                radii = [v.nonnegative(float(x), "--radii") for x in args.radii.split(",")]
            except ValueError:
                raise InputError(f"--radii: expected comma-separated numbers >= 0, got {args.radii!r}") from None
        table, csv_path, png_path = run_report(args.results, args.out, radii)
        print("certified accuracy (rows: text budget d; columns: image radius eps)")
        print(table.to_string(float_format=lambda x: f"{x:.3f}"))
        print(f"wrote {csv_path} and {png_path}")
        return 0
    except InputError as exc:
        print(f"hybridrs {args.command}: error: {exc}", file=sys.stderr)
        return 2
