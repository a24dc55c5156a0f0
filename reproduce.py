"""Re-run every chapter of the book and build it.

    .venv/bin/python reproduce.py               # run what changed, then build the book
    .venv/bin/python reproduce.py --force       # rerun every notebook
    .venv/bin/python reproduce.py --only 03     # rerun one notebook (name, stem or unique prefix)
    .venv/bin/python reproduce.py --no-build    # notebooks only
    .venv/bin/python reproduce.py --build-only  # the book only, from the stored outputs

Each notebook listed in ``_toc.yml`` is executed in place with papermill, in toc order (later
chapters read tables written by earlier ones), with the kernel ``python3``, working directory
``notebooks/`` and the parameter ``profile="full"`` (plus that notebook's entry in the optional
``params.yml``).  A notebook is executed into a temporary file and replaces the committed one only
when it ran to the end; volatile metadata (timestamps, durations, environment, the random id of the
injected-parameters cell) is then stripped, so rerunning an unchanged notebook leaves no git diff.

Resume: ``data/results/.reproduce-state.json`` records, per notebook, the sha256 of its code cells,
its parameters, the ``hybridrs`` sources and the keys of the notebooks before it, and whether its
last run completed.  A notebook whose key is unchanged and whose last run completed is skipped, so
an interrupted run continues with the notebooks it had not finished.

The book is then built with ``jupyter-book build --all -W -n --keep-going . --path-output book``
(HTML in ``book/_build/html``): any warning fails the build.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
TOC = ROOT / "_toc.yml"
PARAMS = ROOT / "params.yml"
PACKAGE = ROOT / "hybridrs"
STATE = ROOT / "data" / "results" / ".reproduce-state.json"
BOOK_OUT = ROOT / "book"
HTML = BOOK_OUT / "_build" / "html"
KERNEL = "python3"
DEFAULT_PARAMETERS = {"profile": "full"}
INJECTED_ID = "injected-parameters"


class ReproduceError(RuntimeError):
    """A problem the user must fix (missing notebook, bad params.yml, failed run)."""


# --------------------------------------------------------------------------------------------
# Table of contents and parameters
# --------------------------------------------------------------------------------------------
def toc_entries(toc_path: Path = TOC) -> list[str]:
    """Every ``file:`` entry of the toc (root first), in reading order, without suffix."""
    import yaml

    toc = yaml.safe_load(toc_path.read_text())
    entries = [toc["root"]]

    def walk(node) -> None:
        if isinstance(node, dict):
            if "file" in node:
                entries.append(node["file"])
            for key in ("parts", "chapters", "sections"):
                for child in node.get(key, []) or []:
                    walk(child)
        elif isinstance(node, list):
            for child in node:
                walk(child)

    walk({k: v for k, v in toc.items() if k in ("parts", "chapters", "sections")})
    return [str(Path(e).with_suffix("")) if Path(e).suffix in (".md", ".ipynb") else e
            for e in entries]


def toc_notebooks(root: Path = ROOT) -> list[Path]:
    """The notebooks the toc lists, in toc order.

    An entry is a notebook when ``<entry>.ipynb`` exists or when it lives under ``notebooks/``;
    an entry that is neither an existing markdown page nor an existing notebook is an error."""
    notebooks, missing = [], []
    for entry in toc_entries(root / "_toc.yml"):
        ipynb, md = root / f"{entry}.ipynb", root / f"{entry}.md"
        if ipynb.exists():
            notebooks.append(ipynb)
        elif md.exists() and not entry.startswith("notebooks/"):
            continue
        else:
            missing.append(f"{entry}.ipynb" if entry.startswith("notebooks/") else entry)
    if missing:
        raise ReproduceError("listed in _toc.yml but missing: " + ", ".join(missing))
    return notebooks


def load_params(notebooks: list[Path], path: Path = PARAMS) -> dict[Path, dict]:
    """Papermill parameters per notebook: ``profile="full"`` updated by ``params.yml``.

    ``params.yml`` maps a notebook (``notebooks/08_experiments``, ``08_experiments`` or
    ``08_experiments.ipynb``) to a mapping of parameters; an unknown notebook is an error."""
    params = {nb: dict(DEFAULT_PARAMETERS) for nb in notebooks}
    if not path.exists():
        return params
    import yaml

    extra = yaml.safe_load(path.read_text()) or {}
    if not isinstance(extra, dict):
        raise ReproduceError(f"{path.name} must map notebook names to parameter mappings")
    for name, values in extra.items():
        nb = match_notebook(str(name), notebooks, allow_prefix=False)
        if not isinstance(values, dict):
            raise ReproduceError(f"{path.name}: parameters of {name!r} must be a mapping")
        params[nb].update(values)
    return params


def match_notebook(name: str, notebooks: list[Path], allow_prefix: bool = True) -> Path:
    """The notebook called ``name`` (path, file name, stem, or with ``allow_prefix`` a unique
    prefix of the stem such as ``03``)."""
    stem = Path(name).name.removesuffix(".ipynb")
    exact = [nb for nb in notebooks if nb.stem == stem]
    if exact:
        return exact[0]
    if allow_prefix:
        prefixed = [nb for nb in notebooks if nb.stem.startswith(stem)]
        if len(prefixed) == 1:
            return prefixed[0]
    known = ", ".join(nb.stem for nb in notebooks)
    raise ReproduceError(f"no single notebook in _toc.yml matches {name!r} (known: {known})")


# --------------------------------------------------------------------------------------------
# Resume keys and state
# --------------------------------------------------------------------------------------------
def package_digest(package: Path = PACKAGE) -> str:
    """sha256 over the package's Python sources (relative path and bytes of each file)."""
    h = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        h.update(path.relative_to(package.parent).as_posix().encode() + b"\0")
        h.update(path.read_bytes() + b"\0")
    return h.hexdigest()


def is_injected(cell) -> bool:
    return "injected-parameters" in cell.get("metadata", {}).get("tags", [])


def notebook_key(nb_path: Path, parameters: dict, package: str, previous: str) -> str:
    """sha256 of the code cells' sources (the injected-parameters cell excluded, since papermill
    rewrites it), the parameters, the package sources and the previous notebook's key.

    Chaining in the previous key makes a change upstream rerun the chapters after it, which read
    its tables."""
    nb = json.loads(nb_path.read_text())
    cells = [c for c in nb.get("cells", []) if c.get("cell_type") == "code" and not is_injected(c)]
    sources = ["".join(c["source"]) if isinstance(c["source"], list) else c["source"] for c in cells]
    payload = json.dumps({"code": sources, "parameters": parameters, "package": package,
                          "previous": previous}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def is_executed(nb_path: Path) -> bool:
    """Every code cell has an execution count (the notebook holds the outputs of a full run)."""
    nb = json.loads(nb_path.read_text())
    code = [c for c in nb.get("cells", []) if c.get("cell_type") == "code"]
    return bool(code) and all(c.get("execution_count") is not None for c in code)


def read_state(path: Path = STATE) -> dict:
    try:
        state = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    return state if isinstance(state, dict) else {}


def write_state(state: dict, path: Path = STATE) -> None:
    """Atomic write (temporary file + rename), so an interrupted run never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(state, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------
# Running one notebook
# --------------------------------------------------------------------------------------------
def strip_volatile(nb) -> None:
    """Drop what changes on every run although the results do not: papermill's run record
    (times, duration, environment, paths), per-cell timing metadata, and the random id papermill
    gives the injected-parameters cell.  The injected cell is also tagged ``remove-cell``: it repeats
    the parameters cell, so the book does not show it (papermill recreates the cell on every run,
    without the tag)."""
    meta = nb.metadata
    if "papermill" in meta:
        meta["papermill"] = {"parameters": meta["papermill"].get("parameters", {})}
    meta.pop("widgets", None)
    for cell in nb.cells:
        cell.metadata.pop("papermill", None)
        cell.metadata.pop("execution", None)
        if is_injected(cell):
            cell["id"] = INJECTED_ID
            tags = cell.metadata.setdefault("tags", [])
            if "remove-cell" not in tags:
                tags.append("remove-cell")


def write_notebook_atomically(nb, target: Path) -> None:
    import nbformat

    fd, tmp = tempfile.mkstemp(prefix=f".{target.stem}-", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        nbformat.write(nb, tmp)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def run_notebook(nb_path: Path, parameters: dict, log) -> None:
    """Execute ``nb_path`` with papermill into a temporary file; on success strip volatile
    metadata and replace the notebook.  On failure the notebook is left untouched and the
    partially executed copy is kept for inspection."""
    import nbformat
    import papermill

    workdir = Path(tempfile.mkdtemp(prefix="reproduce-"))
    out = workdir / nb_path.name
    try:
        papermill.execute_notebook(
            str(nb_path), str(out), parameters=parameters, kernel_name=KERNEL,
            cwd=str(nb_path.parent), progress_bar=False, log_output=False,
        )
    except BaseException as exc:
        if out.exists():
            keep = Path(tempfile.gettempdir()) / f"reproduce-failed-{nb_path.name}"
            shutil.copyfile(out, keep)
            log(f"partially executed copy: {keep}")
        shutil.rmtree(workdir, ignore_errors=True)
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise ReproduceError(f"{nb_path.relative_to(ROOT)} failed:\n{exc}") from exc
    nb = nbformat.read(out, as_version=4)
    strip_volatile(nb)
    write_notebook_atomically(nb, nb_path)
    shutil.rmtree(workdir, ignore_errors=True)


def prepare_environment() -> None:
    """Environment the kernels inherit: offline model hubs, fixed hashing, no progress bars in
    the stored outputs, and none of the test-only switches."""
    for var in ("HYBRIDRS_PROFILE", "HYBRIDRS_RESULTS_DIR", "MPLBACKEND"):
        if os.environ.pop(var, None) is not None:
            print(f"note: ignoring {var} from the environment (tests only)")
    os.environ.update({
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "PYTHONHASHSEED": "0",
        # tqdm bars print rates and times, which would change the stored outputs on every run.
        "TQDM_DISABLE": "1",
    })
    # Without ipywidgets, `import tqdm.auto` warns "IProgress not found" with the absolute path of
    # the virtualenv: machine-specific noise in the stored outputs (and the book). Only that
    # message is silenced; every other warning still shows.
    quiet = "ignore:IProgress not found"
    current = os.environ.get("PYTHONWARNINGS", "")
    if quiet not in current.split(","):
        os.environ["PYTHONWARNINGS"] = f"{current},{quiet}" if current else quiet


def run_notebooks(notebooks: list[Path], params: dict[Path, dict], selected: set[Path] | None,
                  force: bool) -> None:
    from tqdm import tqdm

    state = read_state()
    package = package_digest()
    previous = ""
    plan = []
    for nb in notebooks:
        key = notebook_key(nb, params[nb], package, previous)
        previous = key
        rel = nb.relative_to(ROOT).as_posix()
        record = state.get(rel, {})
        up_to_date = record.get("key") == key and record.get("completed") and is_executed(nb)
        if selected is not None:
            run = nb in selected
        else:
            run = force or not up_to_date
        plan.append((nb, rel, key, run))

    todo = [p for p in plan if p[3]]
    for nb, rel, key, run in plan:
        if not run:
            print(f"{'not selected' if selected is not None else 'up to date'}, skipped: {rel}")
    if not todo:
        print("all notebooks up to date")
        return

    # disable=False: TQDM_DISABLE (set above for the kernels) would also silence this bar.
    bar = tqdm(todo, desc="notebooks", unit="nb", file=sys.stdout, disable=False)
    for nb, rel, key, _ in bar:
        bar.set_postfix_str(nb.stem)
        state[rel] = {"key": key, "completed": False, "parameters": params[nb]}
        write_state(state)
        start = time.perf_counter()
        run_notebook(nb, params[nb], bar.write)
        seconds = time.perf_counter() - start
        state[rel] = {"key": key, "completed": True, "parameters": params[nb],
                      "seconds": round(seconds, 1)}
        write_state(state)
        bar.write(f"done: {rel} ({seconds:.0f} s)")
    bar.close()


# --------------------------------------------------------------------------------------------
# Building the book
# --------------------------------------------------------------------------------------------
def build_book() -> None:
    """``jupyter-book build --all -W -n --keep-going . --path-output book`` with the console
    script next to this interpreter (``python -m jupyter_book`` does not exist)."""
    jb = Path(sys.executable).parent / "jupyter-book"
    if not jb.exists():
        raise ReproduceError(f"{jb} not found: run `python3 setup_env.py` first")
    cmd = [str(jb), "build", "--all", "-W", "-n", "--keep-going", ".", "--path-output", "book"]
    print("$ " + " ".join(cmd[1:]), flush=True)
    start = time.perf_counter()
    result = subprocess.run(cmd, cwd=ROOT)
    if result.returncode != 0:
        reports = sorted((HTML / "reports").glob("*")) if (HTML / "reports").is_dir() else []
        for report in reports:
            print(f"\n===== {report.relative_to(ROOT)} =====")
            print(report.read_text(errors="replace"))
        raise ReproduceError(f"book build failed (exit {result.returncode}); "
                             "warnings are errors (-W): see above")
    index = HTML / "index.html"
    if not index.exists():
        raise ReproduceError(f"build reported success but {index.relative_to(ROOT)} is missing")
    print(f"book built in {time.perf_counter() - start:.0f} s: {index.relative_to(ROOT)}")


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--force", action="store_true", help="rerun every notebook")
    parser.add_argument("--only", metavar="NAME", action="append",
                        help="run only this notebook (repeatable); it runs even if up to date")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--no-build", action="store_true", help="skip the book build")
    group.add_argument("--build-only", action="store_true", help="skip papermill, only build")
    args = parser.parse_args(argv)
    os.chdir(ROOT)
    # `kill` (SIGTERM) takes the same path as Ctrl-C: the kernel is shut down, temporary files are
    # removed, and the interrupted notebook stays marked as not completed.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        if not args.build_only:
            prepare_environment()
            notebooks = toc_notebooks()
            params = load_params(notebooks)
            selected = ({match_notebook(n, notebooks) for n in args.only}
                        if args.only else None)
            run_notebooks(notebooks, params, selected, args.force)
            if selected is None:
                # The scale page's fixed-n vs sequential table: a seeded simulation (about a second).
                subprocess.run([sys.executable, "benchmarks/sequential.py", "--out",
                                "data/results/scale_sequential.csv"], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        if not args.no_build:
            build_book()
    except ReproduceError as exc:
        print(f"\nreproduce.py: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted: rerun reproduce.py to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
