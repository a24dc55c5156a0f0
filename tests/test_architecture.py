"""The package's layering, read from its source (CONTRIBUTING.md, "Architecture").

* no import circle among hybridrs modules (module-level and function-level imports alike);
* the core (kernels → stats → certify → smoothing and their helpers) imports nothing above it;
* the book's supporting code (``experiments``) is never imported by the library;
* no package module finds files through its own location (``__file__``) or the checkout;
* no module is over 400 lines unless it is listed below with its reason.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "hybridrs"

CORE = {"hybridrs", "hybridrs._validate", "hybridrs._progress", "hybridrs._paths", "hybridrs._solver",
        "hybridrs.seeds", "hybridrs.kernels", "hybridrs.stats", "hybridrs.certify", "hybridrs.sequential",
        "hybridrs.estimators", "hybridrs.threats", "hybridrs.smoothing", "hybridrs.analysis"}

#: Modules allowed past 400 lines, with the reason a reader would accept.
LONG: dict[str, str] = {}


def _modules() -> dict[str, Path]:
    out = {}
    for path in PKG.rglob("*.py"):
        parts = path.relative_to(PKG.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """hybridrs modules that ``name`` imports anywhere in its source (resolved to known modules)."""
    pkg = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = pkg.split(".")
                up = up[: len(up) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            # ``from hybridrs import x`` loads the top-level package first, as every import does: not an edge.
            if t and t != name and t != "hybridrs":
                found.add(t)
    return found


MODULES = _modules()
GRAPH = {m: _imports(m, p, set(MODULES)) for m, p in MODULES.items()}


def test_graph_is_read():
    assert "hybridrs.certify" in GRAPH["hybridrs.smoothing"]
    assert "hybridrs.kernels" in GRAPH["hybridrs.certify"]


def test_no_import_circle():
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(m, stack):
        state[m] = 1
        for n in sorted(GRAPH[m]):
            if state.get(n) == 1:
                cycle.extend(stack[stack.index(n):] + [n] if n in stack else [m, n])
                return True
            if state.get(n) is None and visit(n, stack + [n]):
                return True
        state[m] = 2
        return False

    for m in sorted(GRAPH):
        if state.get(m) is None and visit(m, [m]):
            break
    assert not cycle, " -> ".join(cycle)


@pytest.mark.parametrize("module", sorted(CORE & set(MODULES)))
def test_core_imports_only_core(module):
    above = GRAPH[module] - CORE
    assert not above, f"{module} imports {sorted(above)} from above the core"


def test_library_never_imports_the_book_support():
    for m, deps in GRAPH.items():
        if not m.startswith("hybridrs.experiments"):
            assert not {d for d in deps if d.startswith("hybridrs.experiments")}, m


def test_no_module_finds_files_through_the_checkout():
    for m, path in MODULES.items():
        src = path.read_text()
        assert "__file__" not in src, f"{m} uses __file__ (paths come from arguments or hybridrs._paths)"


def test_module_sizes():
    for m, path in MODULES.items():
        n = len(path.read_text().splitlines())
        assert n <= 400 or m in LONG, f"{m} has {n} lines (split it by concern, or list it in LONG with a reason)"
