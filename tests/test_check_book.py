"""scripts/check_book.py fails on the rendering defects a reader sees: a raw {cite} role inside
math, raw directives and directive options, a fence swallowed into a code block, TeX
sub/superscripts in plain text, error outputs, and elements wider than the column."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("check_book", ROOT / "scripts" / "check_book.py")
check_book = importlib.util.module_from_spec(spec)
sys.modules.setdefault("check_book", check_book)  # dataclasses look their module up there
spec.loader.exec_module(check_book)

DEFECTS = """<!DOCTYPE html><html><head><style>article { width: 300px; }</style></head><body>
<article class="bd-article">
<p>The ceiling is α^{1/n}, and r*_{d} is a radius.</p>
<div class="math notranslate nohighlight">\\[ R \\ge \\frac{M}{\\sqrt2 L}\\qquad\\text{{cite}`tsuzuku2018lipschitz`} \\]</div>
<p>See {glue:text}`cra_1.0:.3f`.</p>
<div class="cell_output"><div class="output traceback highlight-ipythontb"><pre>ValueError</pre></div></div>
<div class="wide" style="width: 800px">a table whose last column is cut off</div>
<mjx-container display="true" style="display: block; overflow-x: auto; max-width: 100%"><span style="display: inline-block; width: 700px">F(u) = ... G(u) = ...</span></mjx-container>
</article></body></html>"""

# What the "Certifying at scale" page rendered to when a csv-table's caption held backticks (an
# info string with a backtick is not a fence): the directive as a paragraph, the text after it
# swallowed into a code block up to the next fence.
BROKEN_DIRECTIVE = """<!DOCTYPE html><html><body><article class="bd-article">
<p>```{csv-table} Fixed-n against sequential certification (from <code class="docutils literal
notranslate"><span class="pre">data/results/scale_sequential.csv</span></code>)
:file: ../data/results/scale_sequential.csv
:header-rows: 1</p>
<div class="highlight-default notranslate"><div class="highlight"><pre><span></span>
The gain depends on how many inputs sit close to the threshold.

```python
from hybridrs import HybridSmooth
</pre></div></div>
</article></body></html>"""

# One defect each: a figure directive behind a colon fence, a lone :name: option, a bare
# {glue:figure} directive name, a raw {glue:text} role.
ONE_DEFECT_EACH = {
    "colon fence": "<p>:::{figure} frontier.png</p>",
    ":name:": "<p>The frontier.\n:name: fig-frontier</p>",
    "bare directive": "<p>{glue:figure} fig_frontier</p>",
    "glue role": "<p>certified at {glue:text}`cra_1:.3f`</p>",
}

CLEAN = """<!DOCTYPE html><html><head><style>article { width: 300px; }</style></head><body>
<article class="bd-article">
<p>The ceiling is a power of alpha, written in dollar math in the source.</p>
<div style="overflow-x: auto; max-width: 100%"><div style="width: 800px">a scrollable table</div></div>
</article></body></html>"""


def test_raw_roles_pseudo_tex_and_errors_are_reported():
    tree = check_book.parse_html(DEFECTS)
    roles = check_book.check_roles(tree, tree)
    assert any("inside math" in p and "{cite}" in p for p in roles)
    assert any("in the page" in p for p in roles)
    assert any("^{1/n}" in p for p in check_book.check_pseudo_tex(tree))
    assert any("error output" in p for p in check_book.check_outputs(tree))


def test_raw_directive_options_and_swallowed_fence_are_reported():
    problems = check_book.check_raw_markup(check_book.parse_html(BROKEN_DIRECTIVE))
    assert any("raw MyST directive" in p and "{csv-table}" in p for p in problems), problems
    assert any("raw directive option" in p and ":file:" in p for p in problems), problems
    assert any("fence inside a code block" in p and "```python" in p for p in problems), problems


@pytest.mark.parametrize("defect", sorted(ONE_DEFECT_EACH))
def test_each_kind_of_raw_markup_is_reported(defect):
    tree = check_book.parse_html(f"<html><body>{ONE_DEFECT_EACH[defect]}</body></html>")
    assert check_book.check_raw_markup(tree) + check_book.check_roles(tree, tree), defect


def test_clean_snippet_passes_the_text_checks():
    tree = check_book.parse_html(CLEAN)
    assert check_book.check_raw_markup(tree) == []
    assert check_book.check_roles(tree, tree) == []
    assert check_book.check_pseudo_tex(tree) == []
    assert check_book.check_outputs(tree) == []


def _browser():
    for name in check_book.BROWSERS:
        if shutil.which(name):
            return shutil.which(name)
    return None


@pytest.mark.skipif(_browser() is None, reason="no Chromium on PATH")
def test_wide_element_is_reported_and_scrollable_one_is_not(tmp_path):
    results = {}
    for name, html in (("defects", DEFECTS), ("clean", CLEAN)):
        page = tmp_path / f"{name}.html"
        page.write_text(html)
        dom = check_book.parse_html(check_book.render(_browser(), page, tmp_path / f"{name}.png", 60))
        results[name] = check_book.check_overflow(dom)
    assert any("div.wide" in p for p in results["defects"]), results["defects"]
    assert any("display equation" in p for p in results["defects"]), results["defects"]
    assert results["clean"] == [], results["clean"]
