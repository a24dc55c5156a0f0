"""Command line: ``hybridrs certify`` (a JSONL file of inputs → a CSV of certificates) and
``hybridrs report`` (certified-accuracy table and frontier plot).

Model protocol
--------------
``--model package.module:factory`` (or ``path/to/file.py:factory``) names a function that builds
the base classifier.  ``package.module`` is looked up on the installed packages first and in the
working folder last (a folder there never shadows an installed package).  The factory is called as
``factory(device=DEVICE)`` when it accepts a ``device`` argument, else ``factory()`` (then a
non-CPU ``--device`` needs a ``torch.nn.Module``, which is moved there), and returns an object (or
a dict with the same keys) providing:

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
* ``fingerprint`` (optional): a string (or a function returning one) that identifies what the
  model computes, e.g. a hash of its checkpoint.  Without it the model is identified by the SHA-256
  of its ``state_dict`` (for a ``torch.nn.Module``) and of the source of the factory's module
  (:mod:`hybridrs.run.plugins`).  A resume with a model of another fingerprint is refused.

Records
-------
One JSON object per line (UTF-8): ``id`` (string or integer, unique, required; no control
characters), ``text`` (string) or ``tokens`` (list of ids), ``image`` (a path to a ``.png``
(Pillow, scaled to [0, 1], shape (C, H, W)) or ``.npy`` (floating array, used as is), relative to
the JSONL file, or an inline nested list), and optionally ``label`` (the number 0 or 1: ``1``,
``1.0`` and ``1e0`` are the same label).  Image paths must lead, after following symlinks, into
``--image-root`` (default: the JSONL file's folder); a path leaving it is refused, whether or not
the file exists.  Messages name a record as ``record N (id 'x')``, N being its line.

Output
------
A results file (:mod:`hybridrs.run.results`): a first line ``#hybridrs-results 2 {settings}``
holding every setting and the model's fingerprint, a CSV header, then one row per input, appended
and flushed as soon as it is done, built from the pipeline's ``Certificate.as_row()``: the columns
``id, label, threat, n, count, p_a`` (draws and positives over all stages, the bound of budget 0),
r_0..r_D (the certified image radius at text budget d; -inf = not certified at (d, 0), nan = not
evaluated), ``d_certified, decision, stage_counts, stage_p_a, fingerprint, seconds``.  Ids that a spreadsheet would read as a formula (starting with
``= + - @``, tab, CR, or ``'``) are written with a leading ``'``.  A rerun resumes: it skips the
inputs whose row is there (keyed on a fingerprint of the record's content and the settings) and
redoes a last line cut by a crash.  It is refused, leaving the file untouched, when the settings or
the model differ, a record's content changed, an id appears twice, or a complete line is damaged.
A file that is not a hybridrs results file is never written; one writer per file (lock on
``<results>.lock``, taken before the file exists).  Every input gets its own seed, derived from
``--seed`` and its id (``hybridrs.seeds.input_seed(seed, id)``), so the results do not depend on
the order of the inputs or on sharding.

Exit status
-----------
0 on success; 2 on bad input, with one line ``hybridrs certify: error: <record N (id 'x') |
--option | 'path'>: what is wrong``; 130 when interrupted (Ctrl-C), 143 on SIGTERM (the file then
holds complete rows only and its lock is released; a rerun resumes).  The settings, the device, the
model (one probe call), every record (encoding, token ids, image) and the output (a writable,
lockable results file or a new one, free disk space) are checked before the first input is
certified, so a bad input leaves every file as it was.  A failure of the model in the middle of a
run (exception or ``sys.exit``) stops it with exit 2 naming the record; the rows already written
stay, complete.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from typing import Sequence

from hybridrs.run.config import KERNELS, THREATS, CertifyConfig, InputError


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
    c = sub.add_parser("certify", help="certify every input of a JSONL file; append rows to a results CSV",
                       formatter_class=_DefaultsFormatter)
    c.add_argument("input", help="JSONL file: one {id, text|tokens, image, label} object per line")
    c.add_argument("output", help="results CSV (created, or resumed: finished inputs are skipped)")
    c.add_argument("--model", required=True, help="package.module:factory or file.py:factory")
    c.add_argument("--kernel", default="uniform", choices=KERNELS, help="text smoothing kernel")
    c.add_argument("--beta", type=float, default=0.25, help="text noise: replacement/mask probability")
    c.add_argument("--sigma", type=float, default=0.5, help="image noise std (0 = text-only smoothing)")
    c.add_argument("-n", "--n", type=int, default=10_000, help="Monte Carlo draws per input (at most 1e9)")
    c.add_argument("--alpha", type=float, default=0.01, help="failure probability of each certificate")
    c.add_argument("--tau", type=float, default=0.5, help="certified threshold on P[f = 1]")
    c.add_argument("--d-max", type=int, default=None, help="largest text budget (l0; default 4, at most 1000)")
    c.add_argument("--threat", default="l0", choices=THREATS,
                   help="l0: any d positions; suffix: appended tokens, p_A per d; shared-suffix: one p_A")
    c.add_argument("--suffix-len", type=int, default=8, help="m, the suffix length (suffix threats)")
    c.add_argument("--filler", type=int, default=None, help="filler token id (default: model.filler_id)")
    c.add_argument("--vocab-size", type=int, default=None, help="uniform-kernel alphabet size (default: model)")
    c.add_argument("--mask-id", type=int, default=None, help="absorbing-kernel mask id (default: model)")
    c.add_argument("--device", default="cpu", help="where the noise is drawn and the model runs (cpu, cuda, cuda:N, mps)")
    c.add_argument("--batch-size", type=int, default=1000, help="noisy copies per forward pass")
    c.add_argument("--seed", type=int, default=0, help="global seed; each input's seed derives from it and its id")
    c.add_argument("--sequential", action="store_true", help="draw until the target is decided")
    c.add_argument("--target-d", type=int, default=1, help="sequential: text budget to decide")
    c.add_argument("--target-eps", type=float, default=0.0, help="sequential: image radius to decide")
    c.add_argument("--max-n", type=int, default=100_000, help="sequential: cap on the draws per input")
    c.add_argument("--first-batch", type=int, default=100, help="sequential: size of the first batch")
    c.add_argument("--image-root", default=None, metavar="DIR",
                   help="image paths must lead into DIR (symlinks resolved); default: the input file's folder")
    c.add_argument("--ray", nargs="?", const="auto", default=None, metavar="ADDRESS",
                   help="shard over a Ray cluster (ADDRESS, or a local one when omitted)")
    c.add_argument("--num-gpus", type=float, default=None,
                   help="Ray: GPUs per model replica (default 1 when the cluster has GPUs, else 0)")
    c.add_argument("--workers", type=int, default=None, help="Ray: number of model replicas")
    c.add_argument("--quiet", action="store_true", help="no progress bar")
    r = sub.add_parser("report", help="certified-accuracy table and frontier plot of a results CSV")
    r.add_argument("results", help="a results file written by hybridrs certify")
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


def _certify(args) -> int:
    from hybridrs.run.runner import format_summary, run_certify

    cfg = _config_from(args)
    if args.ray is not None:
        from hybridrs.run.distributed import run_certify_ray  # imported only when asked: Ray is optional

        summary = run_certify_ray(cfg, args.input, args.output, address=None if args.ray == "auto" else args.ray,
                                  num_gpus=args.num_gpus, workers=args.workers, progress=not args.quiet,
                                  image_root=args.image_root)
    else:
        summary = run_certify(cfg, args.input, args.output, progress=not args.quiet, image_root=args.image_root)
    print(format_summary(summary))
    return 0


def _report(args) -> int:
    import math

    from hybridrs.run.report import run_report

    radii = None
    if args.radii is not None:
        try:
            radii = [float(x) for x in args.radii.split(",")]
        except ValueError:
            radii = [math.nan]
        if not radii or any(not (math.isfinite(x) and x >= 0) for x in radii):
            raise InputError(f"--radii: expected comma-separated finite numbers >= 0, got {args.radii!r}")
    table, csv_path, png_path = run_report(args.results, args.out, radii)
    print("certified accuracy (rows: text budget d; columns: image radius eps)")
    print(table.to_string(float_format=lambda x: f"{x:.3f}"))
    print(f"wrote {csv_path} and {png_path}")
    return 0


class Terminated(BaseException):
    """SIGTERM, raised where the run is (not an Exception: user-code wrappers let it through)."""


def _on_sigterm(signum, frame):
    raise Terminated()


def main(argv: Sequence[str] | None = None) -> int:
    """Console script ``hybridrs`` (and ``python -m hybridrs``).  Returns the exit status."""
    args = _parser().parse_args(argv)
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _on_sigterm)  # unwind: close the file, drop the lock
    try:
        return _certify(args) if args.command == "certify" else _report(args)
    except InputError as exc:
        print(f"hybridrs {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, Terminated) as exc:
        print(f"hybridrs {args.command}: {'interrupted' if isinstance(exc, KeyboardInterrupt) else 'terminated'}; "
              "the rows written so far are complete, rerun the same command to resume", file=sys.stderr)
        return 130 if isinstance(exc, KeyboardInterrupt) else 143
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
