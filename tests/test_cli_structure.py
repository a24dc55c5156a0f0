"""Issue 9 (the command line's half): hybridrs/run is split by concern, with no import circle, no
module over ~400 lines, and nothing of it imported by the core package."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / "hybridrs" / "run"


def _imports(path: Path, *, top_level_only: bool) -> set[str]:
    """hybridrs modules imported by ``path`` (at module level only, or anywhere)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    out = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("hybridrs"):
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("hybridrs"))
    return out


def _module(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def test_no_import_circle_in_hybridrs_run():
    """Walks every import (also those inside functions) between the modules of hybridrs/run; the
    only allowed edge upwards is cli → distributed, made lazily (Ray is optional)."""
    mods = {_module(p): p for p in RUN.glob("*.py")}
    graph = {m: {d for d in _imports(p, top_level_only=False) if d in mods and d != m} for m, p in mods.items()}
    state: dict[str, int] = {}

    def visit(m, stack):
        state[m] = 1
        for d in graph[m]:
            if state.get(d) == 1:
                raise AssertionError(f"import circle: {' -> '.join(stack + [m, d])}")
            if d not in state:
                visit(d, stack + [m])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [])
    assert "hybridrs.run.cli" not in graph["hybridrs.run.distributed"]
    assert "hybridrs.run.distributed" not in _imports(mods["hybridrs.run.cli"], top_level_only=True)


def test_modules_are_small():
    for p in RUN.glob("*.py"):
        assert len(p.read_text().splitlines()) <= 400, p


def test_core_does_not_import_the_command_line():
    for p in (ROOT / "hybridrs").rglob("*.py"):
        if RUN in p.parents or p.name == "__main__.py":
            continue
        bad = {m for m in _imports(p, top_level_only=False) if m.startswith("hybridrs.run")}
        assert not bad, f"{p} imports {bad}"


def test_pyproject_declares_what_the_command_line_imports():
    """`pip install .` must give a CLI whose every subcommand works: each third-party module the
    command line (and the core it calls) imports is a declared dependency (Ray: the extra)."""
    import re
    import sys

    text = (ROOT / "pyproject.toml").read_text()
    deps = {re.split(r"[<>=!~\[ ;]", d)[0].lower()
            for d in re.findall(r'"([^"]+)"', text.split("dependencies = [", 1)[1].split("]", 1)[0])}
    dist = {"PIL": "pillow", "yaml": "pyyaml", "sklearn": "scikit-learn"}
    modules = set()
    for p in list(RUN.glob("*.py")) + [ROOT / "hybridrs" / f for f in
                                       ("smoothing.py", "kernels.py", "certify.py", "stats.py", "analysis.py",
                                        "estimators.py", "threats.py", "sequential.py", "seeds.py", "_progress.py")]:
        if not p.exists():
            continue
        for node in ast.walk(ast.parse(p.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else []
            modules.update(n.split(".")[0] for n in names)
    third = {m for m in modules if m not in sys.stdlib_module_names and m not in ("hybridrs", "ray")}
    missing = {m for m in third if dist.get(m, m).lower() not in deps}
    assert not missing, f"imported but not in pyproject dependencies: {missing}"
    assert '"ray"' in text.split("[project.optional-dependencies]", 1)[1]
