"""One certification run: check everything, then certify record after record into the results file.

:func:`prepare` checks the settings, the device, the output path, the model and every record
(encoding, token ids, image) and probes the model once, before anything is written;
:func:`run_certify` then opens the results file (lock, writability, resume) and appends one row
per unfinished record.  :class:`Certifier` certifies one record (used by the Ray workers too).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Iterable

import numpy as np

from hybridrs.run.config import CertifyConfig, InputError
from hybridrs.run.plugins import Model, call_user, check_device, load_model
from hybridrs.run.records import Record, read_records
from hybridrs.run.results import ResultsFile, check_output_path, columns, row_fingerprint


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
        except (ValueError, TypeError) as exc:
            raise InputError(f"--vocab-size: {exc}") from None
    mask_id = cfg.mask_id if cfg.mask_id is not None else model.mask_id
    if mask_id is None:
        raise InputError("--mask-id: the absorbing kernel needs a mask token; pass --mask-id or give the "
                         "model a mask_id attribute")
    try:
        return AbsorbingKernel(cfg.beta, int(mask_id))
    except (ValueError, TypeError) as exc:
        raise InputError(f"--mask-id: {exc}") from None


class Certifier:
    """Model + smoother for one process: ``certifier(record, fingerprint) -> row`` (CSV fields)."""

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
            if not self.in_alphabet(self.filler):
                src = "" if cfg.filler is not None else " (the model's filler_id)"
                raise InputError(f"--filler: token id {self.filler}{src} is outside the "
                                 f"{cfg.kernel} kernel's alphabet{self._vocab_note()}")
        try:
            self.smoother = HybridSmooth(self.model.classify, sigma=cfg.sigma if cfg.sigma > 0 else None,
                                         kernel=self.kernel, batch_size=cfg.batch_size, device=cfg.device,
                                         progress=False)
        except (ValueError, RuntimeError) as exc:
            raise InputError(f"--device: {exc}") from None

    @property
    def columns(self) -> list[str]:
        return columns(self.cfg.d_max)

    @property
    def vocab_limit(self) -> int | None:
        """Token ids must be below this (the kernel's vocabulary, or the model's)."""
        v = getattr(self.kernel, "vocab_size", None)
        return int(v) if v is not None else self.model.vocab_size

    def _vocab_note(self) -> str:
        v = self.vocab_limit
        return f" (vocab size {v})" if v is not None else ""

    def in_alphabet(self, t: int) -> bool:
        if self.cfg.kernel != "uniform":
            return self.vocab_limit is None or t < self.vocab_limit
        alphabet = getattr(self.kernel, "alphabet", None)
        if alphabet is None:
            return t < self.kernel.vocab_size
        return bool((np.asarray(alphabet) == t).any())

    def settings(self) -> dict:
        """What the results file stores and compares: the settings and the model's fingerprint."""
        return {**self.cfg.settings(), "model_fingerprint": self.model.fingerprint}

    def check(self, rec: Record) -> None:
        """Problems a record can have that only the kernel/threat can see (raise InputError)."""
        if self.cfg.sigma > 0 and rec.image is None:
            raise InputError(f"{rec.where}: no 'image', but --sigma {self.cfg.sigma} smooths an image")
        for t in rec.tokens:
            if not self.in_alphabet(t):
                raise InputError(f"{rec.where}: token id {t} is outside the {self.cfg.kernel} kernel's "
                                 f"alphabet{self._vocab_note()}")

    def probe(self, rec: Record) -> None:
        """Run the model once on the clean input: a model that fails, or answers other than one label
        in {0, 1} per input, is refused before any row is written."""
        import torch

        tokens = torch.tensor([rec.tokens], dtype=torch.long, device=self.smoother.device)
        image = rec.load_image()
        images = None if image is None else image[None].to(self.smoother.device)
        with torch.no_grad():
            out = call_user(self.model.classify, rec.where, "the model", tokens, images)
        try:
            out = torch.as_tensor(out).reshape(-1)
            ok = out.numel() == 1 and bool(((out == 0) | (out == 1)).all())
        except (TypeError, ValueError, RuntimeError):
            ok = False
        if not ok:
            raise InputError(f"{rec.where}: the model must return one label in {{0, 1}} per input; on a batch "
                             f"of one it returned {_short(out)}")

    def threat(self):
        """The threat object of the pipeline (:mod:`hybridrs.threats`) for ``--threat``."""
        from hybridrs.threats import L0, Suffix

        if self.cfg.threat == "l0":
            return L0(d_max=self.cfg.d_max)
        return Suffix(m=self.cfg.suffix_len, filler_id=self.filler, shared=self.cfg.threat == "shared-suffix")

    def estimator(self):
        """The estimator of the pipeline (:mod:`hybridrs.estimators`): FixedN, or Sequential."""
        from hybridrs.estimators import FixedN, Sequential

        cfg = self.cfg
        if cfg.sequential:
            return Sequential(alpha=cfg.alpha, target_d=cfg.target_d, target_eps=cfg.target_eps,
                              max_n=cfg.max_n, first_batch=cfg.first_batch)
        return FixedN(n=cfg.n, alpha=cfg.alpha)

    def __call__(self, rec: Record, fingerprint: str = "") -> dict:
        """Certify one record through the one pipeline (``HybridSmooth.certify``) and turn its
        :class:`~hybridrs.smoothing.Certificate` into a row of the results file."""
        import torch

        from hybridrs.seeds import input_seed

        t0 = time.perf_counter()
        cert = self.smoother.certify(torch.tensor(rec.tokens, dtype=torch.long), rec.load_image(),
                                     threat=self.threat(), estimator=self.estimator(), tau=self.cfg.tau,
                                     seed=input_seed(self.cfg.seed, rec.id))
        return row_from(cert, rec, fingerprint, self.cfg.d_max, time.perf_counter() - t0)


def row_from(cert, rec: Record, fingerprint: str, d_max: int, seconds: float) -> dict:
    """The CSV fields of one certificate: ``cert.as_row()`` (threat, n, count, p_a, r_0..r_D,
    d_certified), the sequential decision, the per-stage counts and bounds, the record's id and
    label, the row fingerprint and the wall time."""
    c = cert.as_row()
    radii = [float(c[f"r_{d}"]) if f"r_{d}" in c else -math.inf for d in range(d_max + 1)]
    row = {"id": rec.key, "label": "" if rec.label is None else str(int(rec.label)), "threat": str(c["threat"]),
           "n": str(int(c["n"])), "count": str(int(c["count"])), "p_a": repr(float(c["p_a"]))}
    row.update({f"r_{d}": repr(r) for d, r in enumerate(radii)})
    row.update({"d_certified": str(int(c["d_certified"])), "decision": str(cert.extra.get("decision", "")),
                "stage_counts": ";".join(str(int(k)) for k in cert.counts),
                "stage_p_a": ";".join(repr(float(p)) for p in cert.p_a_per_stage),
                "fingerprint": fingerprint, "seconds": f"{seconds:.3f}"})
    return row


def _short(x) -> str:
    text = repr(x)
    return text if len(text) <= 80 else text[:77] + "..."


def certify_or_explain(certifier: Certifier, rec: Record, fingerprint: str = "") -> dict:
    """``certifier(rec)``, turning any failure inside the model (or a ``sys.exit``) into an
    InputError that names the record (rows already written stay; nothing is written for this one)."""
    return call_user(certifier, rec.where, "certifying it", rec, fingerprint)


def prepare(cfg: CertifyConfig, input_path, model: Model | None = None, *, image_root=None, output_path=None):
    """Validate settings, device, output path, model and every record, and probe the model once
    (nothing is written); returns (certifier, records)."""
    cfg.validate()
    if output_path is not None:
        check_output_path(output_path, input_path)
    if not Path(input_path).is_file():
        raise InputError(f"{str(input_path)!r}: input file does not exist or is not a file")
    if model is None:
        check_device(cfg.device)
    certifier = Certifier(cfg, model)
    records = read_records(input_path, certifier.model, image_root=image_root, vocab_size=certifier.vocab_limit)
    for rec in records:
        certifier.check(rec)
    certifier.probe(records[0])
    return certifier, records


def plan(records: list[Record], results: ResultsFile, settings: dict) -> list[tuple[Record, str]]:
    """The records still to certify, each with its row fingerprint; a record whose row exists but was
    computed from other content is an error (its old certificate would be kept otherwise)."""
    todo = []
    for rec in records:
        fp = row_fingerprint(settings, rec.digest)
        row = results.done.get(rec.key)
        if row is None:
            todo.append((rec, fp))
        elif row["fingerprint"] != fp:
            raise InputError(f"{rec.where}: its content (text, tokens, image or label) differs from the one "
                             f"certified on line {results.lines.get(rec.key, '?')} of {str(results.path)!r}; "
                             "use another output file")
    return todo


def run_certify(cfg: CertifyConfig, input_path, output_path, *, progress: bool = True,
                model: Model | None = None, image_root=None) -> dict:
    """Certify every record of ``input_path`` not yet in ``output_path``; return the summary.

    All inputs are checked, and the output found writable, before the first input is certified.
    Rows are appended and flushed one by one, so an interrupted run resumes where it stopped.
    """
    from hybridrs._progress import progress_bar

    certifier, records = prepare(cfg, input_path, model, image_root=image_root, output_path=output_path)
    settings = certifier.settings()
    with ResultsFile(output_path, certifier.columns, settings).open() as results:
        todo = plan(records, results, settings)
        for rec, fp in progress_bar(todo, show=progress, desc="certify", unit="input"):
            results.append(certify_or_explain(certifier, rec, fp))
    return summarize([results.done[r.key] for r in records if r.key in results.done], cfg.d_max)


def summarize(rows: Iterable[dict], d_max: int) -> dict:
    """Certified fraction (d_certified ≥ 1, i.e. certified at (1, 0)), mean d_max (non-certified
    inputs count 0), mean r*(1) (0 where not certified) over the given rows — the paper's metrics
    (Delattre et al. 2026, §4: "certified examples", d̄, r̄ at d = 1)."""
    rows = list(rows)
    if not rows:
        return {"inputs": 0, "certified_fraction": float("nan"), "mean_d_max": float("nan"),
                "mean_r1": float("nan"), "mean_draws": float("nan")}
    dc = np.array([int(r["d_certified"]) for r in rows])
    r1 = np.array([float(r["r_1"]) if d_max >= 1 else -math.inf for r in rows])
    return {"inputs": len(rows), "certified_fraction": float(np.mean(dc >= 1)),
            "mean_d_max": float(np.mean(np.maximum(dc, 0))),
            "mean_r1": float(np.mean(np.where(r1 > 0, r1, 0.0))),
            "mean_draws": float(np.mean([int(r["n"]) for r in rows]))}


def format_summary(summary: dict) -> str:
    return (f"{summary['inputs']} inputs: certified at (d=1, eps=0): {summary['certified_fraction']:.1%}; "
            f"mean d_max: {summary['mean_d_max']:.3f}; mean r*(1): {summary['mean_r1']:.4f}; "
            f"mean draws per input: {summary.get('mean_draws', float('nan')):.0f}")
