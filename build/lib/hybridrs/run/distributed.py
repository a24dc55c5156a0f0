"""Certify at scale on a Ray cluster: one model replica per GPU (or per CPU), one results file.

``hybridrs certify IN.jsonl OUT.csv --model pkg.mod:factory --ray [ADDRESS]`` (or
:func:`run_certify_ray`) shards the inputs over Ray actors.  Each actor builds the model once
(``factory(device=...)`` on its own GPU, which Ray exposes as ``cuda``) and certifies one input at a
time; the driver writes each finished row to the results file and flushes it, exactly as the
single-process run does.  Hence:

* the results file is the same as a single-process run's (same columns, same settings line,
  same rows up to their order and the ``seconds`` column): every input is seeded from the global
  seed and its id (``hybridrs.seeds.input_seed(seed, id)``), never from its position or its worker;
* it resumes the same way (finished ids are skipped, a torn last line is redone), and a run may be
  resumed with or without Ray;
* a worker that dies (node lost, out of memory, killed) loses only the input it was working on:
  the driver starts a replacement actor and gives that input to it.  Rows already written stay.

Ray is an optional dependency (``pip install "hybridrs[ray]"``); nothing here imports it before it
is needed.  The driver checks every input before the first row is written, and for that calls the
model factory once with ``device="cpu"`` (for its tokenizer): a factory that loads large weights
should do so lazily, on the first call of the model.  Image files are read by the driver and shipped
to the workers, so the workers need no access to the input files; the model's package must be
importable on every node (install it there, or use Ray's runtime environments).

Note on devices: the random stream of ``torch.Generator`` differs between CPU and CUDA, so a run
on GPU workers gives different (equally valid) draws than a run on CPU workers.  The settings
line records the device, and a resume with another device is refused.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from typing import Callable

from hybridrs.run.config import CertifyConfig, InputError
from hybridrs.run.records import Record
from hybridrs.run.results import ResultsFile
from hybridrs.run.runner import certify_or_explain, plan, prepare, summarize


def _require_ray():
    try:
        import ray
    except ImportError:
        raise InputError("--ray: Ray is not installed; pip install 'hybridrs[ray]' (or 'ray')") from None
    return ray


class _Worker:
    """Actor body: one model replica, certifying one record per call."""

    def __init__(self, cfg_dict: dict, device: str, threads: int):
        import torch

        from hybridrs.run.runner import Certifier

        if threads > 0:
            torch.set_num_threads(threads)
        cfg = CertifyConfig(**{**cfg_dict, "device": device})
        self.certifier = Certifier(cfg)

    def pid(self) -> int:
        return os.getpid()

    def certify(self, rec: Record, fingerprint: str) -> dict:
        return certify_or_explain(self.certifier, rec, fingerprint)


def _plan(ray, num_gpus: float | None, workers: int | None) -> tuple[float, int]:
    res = ray.cluster_resources()
    gpus, cpus = float(res.get("GPU", 0)), float(res.get("CPU", 0))
    if num_gpus is None:
        num_gpus = 1.0 if gpus > 0 else 0.0
    if num_gpus < 0:
        raise InputError(f"--num-gpus: must be >= 0, got {num_gpus}")
    if num_gpus > 0 and gpus == 0:
        raise InputError(f"--num-gpus: {num_gpus} GPUs per replica asked, but the Ray cluster has no GPU")
    if workers is None:
        workers = int(gpus // num_gpus) if num_gpus > 0 else int(cpus)
    if workers < 1:
        raise InputError(f"--workers: must be >= 1 (the cluster offers {cpus:g} CPUs, {gpus:g} GPUs), got {workers}")
    return num_gpus, workers


def run_certify_ray(cfg: CertifyConfig, input_path, output_path, *, address: str | None = None,
                    num_gpus: float | None = None, workers: int | None = None, progress: bool = True,
                    init_kwargs: dict | None = None, after_row: Callable[[int, list], None] | None = None,
                    max_replacements: int | None = None, image_root=None) -> dict:
    """Certify every unfinished record of ``input_path`` on a Ray cluster; return the summary.

    ``address``: a running cluster ("auto", "ray://host:10001", "host:6379"), or None to start a
    local one (``init_kwargs`` are passed to ``ray.init``; the caller's existing connection is used
    when Ray is already initialised).  ``num_gpus``: GPUs per model replica (default 1 when the
    cluster has GPUs, else 0: CPU replicas using one thread each).  ``workers``: number of replicas
    (default: as many as the GPUs, or CPUs, allow).  ``after_row(rows_written, actors)`` is called
    after each row is written (tests use it to kill a worker mid-run).  A dead worker is replaced
    and its input retried, at most ``max_replacements`` times in all (default 2 × workers).
    """
    from hybridrs._progress import progress_bar

    ray = _require_ray()
    cfg.validate()
    certifier, records = prepare(cfg, input_path, _cpu_model(cfg), image_root=image_root, output_path=output_path)
    started = False
    if not ray.is_initialized():
        kwargs = dict(init_kwargs or {})
        kwargs.setdefault("log_to_driver", False)
        try:
            ray.init(address=address, **kwargs)
        except Exception as exc:  # noqa: BLE001 - any failure to reach the cluster is the user's to fix
            raise InputError(f"--ray: cannot start or reach a Ray cluster at {address or 'localhost'}: "
                             f"{type(exc).__name__}: {exc}") from None
        started = True
    actors: list = []
    results = None
    try:
        gpus, n_workers = _plan(ray, num_gpus, workers)
        device = "cuda" if gpus > 0 else "cpu"
        cfg = CertifyConfig(**{**asdict(cfg), "device": device})  # the device the rows are drawn on
        settings = {**cfg.settings(), "model_fingerprint": certifier.model.fingerprint}
        results = ResultsFile(output_path, certifier.columns, settings).open()
        todo = plan(records, results, settings)
        for rec, _ in todo:  # ship pixels, not paths: workers may not see the driver's files
            if rec.image is not None and not hasattr(rec.image, "shape"):
                rec.image = rec.load_image().numpy()
        n_workers = min(n_workers, max(1, len(todo)))
        cfg_dict = asdict(cfg)
        remote = ray.remote(num_gpus=gpus, num_cpus=1 if gpus == 0 else 0)(_Worker)

        def spawn():
            return remote.remote(cfg_dict, device, 1 if gpus == 0 else 0)

        actors.extend(spawn() for _ in range(n_workers))
        budget = 2 * n_workers if max_replacements is None else max_replacements
        queue = list(reversed(todo))
        running: dict = {}  # future -> (actor index, record)
        written = 0
        bar = progress_bar(total=len(todo), show=progress, desc="certify (ray)", unit="input")
        with results:
            def submit(i):
                if queue:
                    rec, fp = queue.pop()
                    running[actors[i].certify.remote(rec, fp)] = (i, (rec, fp))

            for i in range(n_workers):
                submit(i)
            while running:
                ready, _ = ray.wait(list(running), num_returns=1)
                fut = ready[0]
                i, (rec, fp) = running.pop(fut)
                try:
                    row = ray.get(fut)
                except ray.exceptions.RayActorError as exc:
                    if budget <= 0:
                        raise InputError(f"--ray: workers keep dying (last on {rec.where}): {exc}") from None
                    budget -= 1
                    queue.append((rec, fp))  # redo it on a fresh replica
                    try:
                        ray.kill(actors[i])
                    except Exception:  # noqa: BLE001 - already gone
                        pass
                    actors[i] = spawn()
                    submit(i)
                    continue
                except ray.exceptions.RayTaskError as exc:
                    cause = exc.as_instanceof_cause() if hasattr(exc, "as_instanceof_cause") else exc
                    msg = str(getattr(exc, "cause", None) or cause)
                    raise InputError(msg if msg.startswith("record ") else f"{rec.where}: {msg}") from None
                results.append(row)
                written += 1
                bar.update(1)
                if after_row is not None:
                    after_row(written, actors)
                submit(i)
        bar.close()
    finally:
        if results is not None:
            results.close()
        for a in actors:  # free the GPUs of a shared cluster, also after an error
            try:
                ray.kill(a)
            except Exception:  # noqa: BLE001 - already gone
                pass
        if started:
            ray.shutdown()
    return summarize([results.done[r.key] for r in records if r.key in results.done], cfg.d_max)


def _cpu_model(cfg: CertifyConfig):
    from hybridrs.run.plugins import load_model

    return load_model(cfg.model, "cpu")
