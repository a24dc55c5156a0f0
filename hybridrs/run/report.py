"""``hybridrs report``: a results file → certified-accuracy table (CSV) and frontier plot (PNG).

An input counts as correct when its label is 1 or absent (the certificate is for class 1, the
protected class); inputs labelled 0 count in the denominator only.  The accuracies come from the
library's one certified-accuracy function (:mod:`hybridrs.analysis`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from hybridrs.run.config import InputError
from hybridrs.run.results import parse

#: Budgets drawn at most in the plot (evenly spread, first and last included); the table has all.
MAX_CURVES = 8


def read_results(path):
    """``(table, settings)``: the rows of a results file as a pandas DataFrame with exact dtypes
    (``id`` str, ``label`` Int8 (nullable), ``n`` and ``d_certified`` int64, ``r_d`` and ``seconds``
    float64, ``count`` int64 and ``p_a`` float64 (as :meth:`Certificate.as_row` gives them: all
    draws, p_A of budget 0), ``threat``, ``decision``, ``fingerprint`` and the per-stage
    ``stage_counts`` / ``stage_p_a`` (``;``-separated) str) and the settings stored in its first line.

    A torn last line (an interrupted run) is left out; a damaged line or a duplicated id is an error.
    """
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{str(path)!r}: results file does not exist or is not a file")
    settings, header, rows, _ = parse(path)
    data = {c: [r[c] for _, r in rows] for c in header}
    df = pd.DataFrame({c: pd.Series(v, dtype=object) for c, v in data.items()})
    df["id"] = df["id"].astype(str)
    df["label"] = pd.array([None if x == "" else int(x) for x in data["label"]], dtype="Int8")
    for c in ("n", "d_certified"):
        df[c] = np.array([int(x) for x in data[c]], dtype=np.int64)
    for c in header:
        if c.startswith("r_") or c == "seconds":
            df[c] = np.array([float(x) for x in data[c]], dtype=np.float64)
    try:
        df["count"] = np.array([int(x) for x in data["count"]], dtype=np.int64)
        df["p_a"] = np.array([float(x) for x in data["p_a"]], dtype=np.float64)
    except ValueError:
        raise InputError(f"{str(path)!r}: a count or p_a value is not a number") from None
    for c in ("threat", "decision", "stage_counts", "stage_p_a", "fingerprint"):
        df[c] = df[c].astype(str)
    return df, settings


def budgets(df) -> list[int]:
    return sorted(int(c[2:]) for c in df.columns if c.startswith("r_"))


def _correct(df) -> np.ndarray:
    return np.asarray(df["label"].fillna(1).astype(int) == 1)


def accuracy(radii, correct, eps_grid) -> np.ndarray:
    """Certified accuracy at every ε of ``eps_grid``: :func:`hybridrs.analysis.certified_accuracy`
    (share of inputs correct with r ≥ ε; −inf and NaN never count)."""
    from hybridrs.analysis import certified_accuracy

    return np.atleast_1d(certified_accuracy(radii, correct=correct, eps=np.asarray(eps_grid, dtype=float)))


def certified_accuracy_table(df, radii: Sequence[float]):
    """DataFrame: one row per text budget d, one column per ε."""
    import pandas as pd

    if len(df) == 0:
        raise InputError("no finished rows to report")
    correct = _correct(df)
    ds = budgets(df)
    data = {f"{eps:g}": [accuracy(df[f"r_{d}"].to_numpy(), correct, [eps])[0] for d in ds] for eps in radii}
    table = pd.DataFrame(data, index=pd.Index(ds, name="d"))
    table.columns.name = "eps"
    return table


def _title(path: Path, n_rows: int, s: dict) -> str:
    draws = (f"sequential, max n = {s.get('max_n')}" if s.get("sequential") else f"n = {s.get('n')}"
             + (" per d" if s.get("threat") == "suffix" else ""))
    sigma = s.get("sigma")
    return (f"{path.name}: {n_rows} inputs, {s.get('threat')} threat, {s.get('kernel')} kernel\n"
            f"σ = {sigma:g}{' (text only)' if sigma == 0 else ''}, β = {s.get('beta'):g}, τ = {s.get('tau'):g}, "
            f"α = {s.get('alpha'):g}, {draws}")


def _out_dir(out_dir, path: Path) -> Path:
    out = Path(out_dir) if out_dir is not None else path.parent
    if out.exists() and not out.is_dir():
        raise InputError(f"--out: {str(out)!r} is a file, not a folder")
    for anc in out.parents:
        if anc.exists():
            if not anc.is_dir():
                raise InputError(f"--out: {str(anc)!r} is a file, not a folder")
            break
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"--out: cannot create {str(out)!r}: {exc.strerror or exc}") from None
    if not os.access(out, os.W_OK):
        raise InputError(f"--out: {str(out)!r} is not writable")
    return out


def _replace(tmp: Path, final: Path) -> None:
    if final.exists() and not final.is_file():
        tmp.unlink()
        raise InputError(f"--out: {str(final)!r} exists and is not a file")
    os.replace(tmp, final)


def run_report(path, out_dir=None, radii: Sequence[float] | None = None) -> tuple[Any, Path, Path]:
    """Write certified_accuracy.csv and frontier.png for a results file; return (table, csv, png)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    df, settings = read_results(path)
    if len(df) == 0:
        raise InputError(f"{str(path)!r}: the results file has no finished rows")
    out = _out_dir(out_dir, path)
    ds = budgets(df)
    R = df[[f"r_{d}" for d in ds]].to_numpy()
    finite = R[np.isfinite(R) & (R >= 0)]
    top = float(finite.max()) if finite.size else 0.0
    if radii is None:
        from matplotlib.ticker import MaxNLocator

        radii = [float(x) for x in MaxNLocator(nbins=6).tick_values(0.0, max(top, 1e-3)) if 0 <= x <= top] or [0.0]
    table = certified_accuracy_table(df, radii)
    csv_path, png_path = out / "certified_accuracy.csv", out / "frontier.png"
    tmp = out / f".certified_accuracy.{os.getpid()}.tmp"
    try:
        table.to_csv(tmp)
        _replace(tmp, csv_path)
    except OSError as exc:
        raise InputError(f"--out: cannot write {str(csv_path)!r}: {exc.strerror or exc}") from None

    correct = _correct(df)
    right = max(top, 1e-3) * 1.1
    shown = ds if len(ds) <= MAX_CURVES else sorted({ds[round(i)] for i in np.linspace(0, len(ds) - 1, MAX_CURVES)})
    styles = ["-", "--", "-.", ":"]
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for k, d in enumerate(shown):
        r = df[f"r_{d}"].to_numpy()
        # Exact steps: CRA(ε) is constant on (r_(k), r_(k+1)] and drops just after each radius.
        xs = np.unique(np.concatenate([[0.0], r[np.isfinite(r) & (r >= 0)], [right]]))
        ys = accuracy(r, correct, xs)
        ax.step(xs, ys, where="pre", label=f"d = {d}", linestyle=styles[k % len(styles)],
                linewidth=2.6 - 1.6 * k / max(1, len(shown) - 1), zorder=2 + k, clip_on=False)
    ax.set_xlabel("image radius ε (ℓ2, pixel units of σ)")
    ax.set_ylabel("certified accuracy")
    ax.set_xlim(0.0, right)
    ax.set_ylim(-0.04, 1.04)
    ax.grid(alpha=0.3)
    ax.set_title(_title(path, len(df), settings), fontsize=9)
    ax.legend(title="text budget" + ("" if shown == ds else f" ({len(shown)} of {len(ds)})"), fontsize=8)
    fig.tight_layout()
    tmp = out / f".frontier.{os.getpid()}.tmp.png"
    try:
        fig.savefig(tmp, dpi=120)
        _replace(tmp, png_path)
    except OSError as exc:
        raise InputError(f"--out: cannot write {str(png_path)!r}: {exc.strerror or exc}") from None
    finally:
        plt.close(fig)
    return table, csv_path, png_path
