"""Settings of a ``hybridrs certify`` run, their checks, and the error every bad input becomes.

Nothing here imports torch or the rest of :mod:`hybridrs.run`: this is the bottom of the
command line's import graph (config ← plugins ← records ← results ← runner ← distributed, cli).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from hybridrs import _validate as v

THREATS = ("l0", "suffix", "shared-suffix")
KERNELS = ("uniform", "absorbing")

#: Upper limits of the options (beyond them a run would take years or overflow a 64-bit count).
MAX_DRAWS = 10 ** 9
MAX_BUDGET = 1000
MAX_BATCH = 10 ** 7

#: Version of the results-file format (:mod:`hybridrs.run.results`).
FORMAT = 2


class InputError(ValueError):
    """Bad input to the command line: the message starts with the record, option or path at fault
    (``record 7 (id 'x'): ...``, ``--beta: ...``, ``'out.csv': ...``)."""


def opt(name: str) -> str:
    """The command-line spelling of a field: ``d_max`` → ``--d-max``."""
    return "--" + name.replace("_", "-")


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
        if self.kernel not in KERNELS:
            raise InputError(f"--kernel: must be one of {', '.join(KERNELS)}, got {self.kernel!r}")
        if self.threat not in THREATS:
            raise InputError(f"--threat: must be one of {', '.join(THREATS)}, got {self.threat!r}")
        if not isinstance(self.model, str) or not self.model:
            raise InputError(f"--model: expected 'package.module:factory', got {self.model!r}")
        if not isinstance(self.device, str) or not self.device:
            raise InputError(f"--device: expected a device name such as cpu, cuda, cuda:1, mps, got {self.device!r}")
        checks = [
            ("beta", lambda x, n: v.beta(x, n)),
            ("sigma", lambda x, n: v.nonnegative(x, n)),
            ("n", lambda x, n: _at_most(v.integer(x, n, minimum=1), n, MAX_DRAWS)),
            ("alpha", lambda x, n: v.open_unit(x, n)),
            ("tau", lambda x, n: v.open_unit(x, n)),
            ("suffix_len", lambda x, n: _at_most(v.integer(x, n, minimum=1), n, MAX_BUDGET)),
            ("batch_size", lambda x, n: _at_most(v.integer(x, n, minimum=1), n, MAX_BATCH)),
            ("seed", lambda x, n: _at_most(v.integer(x, n), n, 2 ** 63 - 1)),
            ("target_d", lambda x, n: v.integer(x, n)),
            ("target_eps", lambda x, n: v.nonnegative(x, n)),
            ("max_n", lambda x, n: _at_most(v.integer(x, n, minimum=1), n, MAX_DRAWS)),
            ("first_batch", lambda x, n: _at_most(v.integer(x, n, minimum=1), n, MAX_DRAWS)),
        ]
        for name, check in checks:
            try:
                setattr(self, name, check(getattr(self, name), opt(name)))
            except ValueError as exc:
                raise InputError(f"{opt(name)}: {_strip_name(exc, opt(name))}") from None
        for name in ("d_max", "filler", "vocab_size", "mask_id"):
            val = getattr(self, name)
            if val is not None:
                try:
                    val = v.integer(val, opt(name), minimum=2 if name == "vocab_size" else 0)
                    if name == "d_max":
                        val = _at_most(val, opt(name), MAX_BUDGET)
                    elif val >= 2 ** 63:
                        raise ValueError(f"must be < 2**63, got {val}")
                    setattr(self, name, val)
                except ValueError as exc:
                    raise InputError(f"{opt(name)}: {_strip_name(exc, opt(name))}") from None
        self.sequential = bool(self.sequential)
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
            if self.first_batch > self.max_n:
                raise InputError(f"--first-batch: must be <= --max-n = {self.max_n}, got {self.first_batch}")
            if self.sigma == 0 and self.target_eps > 0:
                raise InputError("--target-eps: text-only smoothing (--sigma 0) certifies eps = 0 only")
        return self

    def settings(self) -> dict:
        """The settings that determine the results (stored in the results file's first line)."""
        out = asdict(self)
        out["format"] = FORMAT
        return out


def _at_most(value: int, name: str, top: int) -> int:
    if value > top:
        raise ValueError(f"{name} must be <= {top:_}, got {value:_}")
    return value


def _strip_name(exc: Exception, name: str) -> str:
    """'--beta must lie in (0, 1]' → 'must lie in (0, 1]' (the option already leads the message)."""
    text = str(exc)
    return text[len(name):].lstrip() if text.startswith(name) else text
