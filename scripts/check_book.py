"""Open every chapter of the built book in headless Chromium and check what a reader would see.

    .venv/bin/python scripts/check_book.py [--html book/_build/html] [--browser chromium] [PAGE ...]

For each page listed in ``_toc.yml`` (or each PAGE given, e.g. ``book/scale``) (``book/_build/html/<entry>.html``) one Chromium run, offline
and with a fresh profile, dumps the DOM after the page's scripts ran and takes a 1280x2400
screenshot into ``book/_build/screenshots/<page>.png``. Then:

- pages with mathematics have it typeset by MathJax: every Sphinx math element holds an
  ``mjx-container``, MathJax reported no TeX error (``mjx-merror``), and no raw TeX delimiters
  (``\\(``, ``\\[``, ``$$``, ``$\\cmd ...$``) are left in the visible text;
- no MyST role is left unprocessed, in the prose or inside the TeX of a math element (a literal
  ``{cite}`...``` or ``{glue:text}`...``` means the role sat where MyST does not parse roles);
- no MyST markup is left unprocessed: no directive (```` ```{csv-table} ````, ``:::{figure}``, a
  bare ``{figure}``) and no directive option (``:file:``, ``:name:``, ``:header-rows:``, ...) in
  the prose, and no Markdown fence line inside a code block (a fence that MyST did not recognise,
  e.g. because its caption holds backticks, swallows the text up to the next fence);
- no pseudo-TeX in the prose: ``_{`` or ``^{`` outside typeset math (Unicode stand-ins such as
  ``α^{1/n}`` instead of dollar math);
- nothing is wider than the column of text: an injected script measures, once MathJax has
  typeset the page, every element of the article whose right edge passes the article's right edge
  and that no horizontally scrollable box inside the article contains (a display equation or a
  table that is cut off, or that spills over the margin), and every display equation that needs
  horizontal scrolling (tables and code may scroll; equations must be broken into lines);
- no cell output is an error (a traceback) or text written to stderr (warnings);
- every ``<img>`` points to an existing, non-empty file of the build (or a non-empty data URI);
- no page loads a script or stylesheet over http(s).

Exits 1 with the list of problems, 0 when every page passes.
"""

from __future__ import annotations

import argparse
import base64
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

ROOT = Path(__file__).resolve().parent.parent
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
    "--virtual-time-budget=15000", "--window-size=1280,2400", "--hide-scrollbars",
)
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param",
        "source", "track", "wbr"}
# Text inside these is code or machinery, not prose: a `$` or `\(` there is not unrendered math.
NOT_PROSE = {"script", "style", "pre", "code", "textarea", "noscript", "mjx-container",
             "mjx-assistive-mml", "svg", "math", "template", "kbd", "samp"}
RAW_TEX = re.compile(r"\\\(|\\\)|\\\[|\\\]|\$\$|\$[^$\n]{0,200}?\\[A-Za-z]+[^$\n]{0,200}?\$")
EXTERNAL = re.compile(r"^(https?:)?//", re.IGNORECASE)
# A MyST role that was not parsed: {cite}`key`, {glue:text}`key`, {ref}`label`, ...
RAW_ROLE = re.compile(r"\{(cite|glue|ref|numref|eq|doc|term|index|math|download)(:[a-z]+)?\}`?")
# A directive MyST did not parse: its fence and name (```{csv-table}, :::{figure}) or a bare name.
DIRECTIVES = ("admonition|attention|bibliography|caution|code|code-block|code-cell|csv-table|danger|"
              "div|dropdown|epigraph|error|eval-rst|exercise|figure|glue|glue:any|glue:figure|"
              "glue:math|glue:md|glue:text|hint|image|important|include|index|list-table|"
              "literalinclude|margin|math|note|raw|seealso|sidebar|solution|table|tab-set|"
              "tab-item|tip|toctree|topic|warning")
RAW_DIRECTIVE = re.compile(r"(`{3,}|~{3,}|:{3,})\s*\{[A-Za-z][\w:.-]*\}|\{(%s)\}(?!`)" % DIRECTIVES)
# A directive option shown as text: ":file: ../data/x.csv", ":name: fig-frontier", ":header-rows: 1".
RAW_OPTION = re.compile(r"(?:^|\s):(align|alt|caption|class|delim|figclass|figwidth|file|header-rows|"
                        r"height|label|name|numbered|scale|stub-columns|tags|target|width|widths):"
                        r"(?=\s|$)", re.MULTILINE)
# A fence line inside rendered code: the block that holds it swallowed text up to the next fence.
CODE_FENCE = re.compile(r"^\s*(`{3,}|~{3,}|:{3,})", re.MULTILINE)
# Sub- and superscripts written as TeX in plain text (α^{1/n}, r*_{d}): only MathJax may show them.
PSEUDO_TEX = re.compile(r"[_^]\{")
# Where the page's own content sits (sphinx-book-theme), and boxes deliberately outside the column.
ARTICLE_SELECTOR = "article.bd-article, main, body"
OVERFLOW_ATTR = "data-check-overflow"
OVERFLOW_SCRIPT = """
<script>
(function () {
  function describe(el) {
    var cls = (el.getAttribute('class') || '').trim().split(/\\s+/).slice(0, 3).join('.');
    var text = (el.textContent || '').replace(/\\s+/g, ' ').trim().slice(0, 60);
    return el.tagName.toLowerCase() + (cls ? '.' + cls : '') + ' ' + JSON.stringify(text);
  }
  function measure() {
    var article = document.querySelector('%(selector)s');
    var box = article.getBoundingClientRect();
    var found = [], reported = [];
    var all = article.querySelectorAll('*');
    for (var i = 0; i < all.length; i++) {
      var el = all[i];
      if (el.closest('mjx-assistive-mml, .margin, .sidebar, aside')) continue;
      var r = el.getBoundingClientRect();
      if (r.width === 0 || r.height === 0 || r.right <= box.right + 2) continue;
      var reachable = false;
      for (var a = el.parentElement; a && a !== article; a = a.parentElement) {
        var style = getComputedStyle(a);
        if ((style.overflowX === 'auto' || style.overflowX === 'scroll') &&
            a.getBoundingClientRect().right <= box.right + 2) { reachable = true; break; }
      }
      if (reachable || reported.some(function (p) { return p.contains(el); })) continue;
      reported.push(el);
      found.push(describe(el) + ' ends at ' + Math.round(r.right) + ' px, the column at ' +
                 Math.round(box.right) + ' px');
    }
    // A display equation may scroll, but then the reader sees it cut at the right edge (the
    // scrollbar is easy to miss): display equations must be broken into lines that fit.
    var displays = article.querySelectorAll('mjx-container[display="true"]');
    for (var j = 0; j < displays.length; j++) {
      var d = displays[j];
      if (d.scrollWidth > d.clientWidth + 2) {
        found.push('display equation needs horizontal scrolling (' + d.scrollWidth + ' px in ' +
                   d.clientWidth + ' px; break it into lines): ' + describe(d));
      }
    }
    document.documentElement.setAttribute('%(attr)s', JSON.stringify(found));
  }
  window.addEventListener('load', function () {
    var mj = window.MathJax;
    if (mj && mj.startup && mj.startup.promise) { mj.startup.promise.then(measure, measure); }
    else { measure(); }
  });
})();
</script>
""" % {"selector": ARTICLE_SELECTOR.split(",")[0], "attr": OVERFLOW_ATTR}


# --------------------------------------------------------------------------------------------
# A small DOM
# --------------------------------------------------------------------------------------------
@dataclass
class Node:
    tag: str
    attrs: dict
    parent: "Node | None" = None
    children: list = field(default_factory=list)  # Node or str

    def classes(self) -> set[str]:
        return set((self.attrs.get("class") or "").split())

    def iter(self):
        yield self
        for child in self.children:
            if isinstance(child, Node):
                yield from child.iter()

    def text(self, skip: set[str] = frozenset()) -> str:
        parts = []
        for child in self.children:
            if isinstance(child, str):
                parts.append(child)
            elif child.tag not in skip and not (child.classes() & {"highlight"}):
                parts.append(child.text(skip))
        return "".join(parts)


class _TreeBuilder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {})
        self.current = self.root

    def handle_starttag(self, tag, attrs):
        node = Node(tag, {k: (v or "") for k, v in attrs}, self.current)
        self.current.children.append(node)
        if tag not in VOID:
            self.current = node

    def handle_startendtag(self, tag, attrs):
        self.current.children.append(Node(tag, {k: (v or "") for k, v in attrs}, self.current))

    def handle_endtag(self, tag):
        node = self.current
        while node is not None and node.tag != tag:
            node = node.parent
        if node is not None and node.parent is not None:  # unmatched end tags are ignored
            self.current = node.parent

    def handle_data(self, data):
        self.current.children.append(data)


def parse_html(text: str) -> Node:
    builder = _TreeBuilder()
    builder.feed(text)
    builder.close()
    return builder.root


def math_elements(root: Node) -> list[Node]:
    """Sphinx writes inline and display math as ``span.math`` / ``div.math`` holding raw TeX."""
    return [n for n in root.iter() if n.tag in ("span", "div") and "math" in n.classes()]


# --------------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------------
def check_math(raw: Node, dom: Node) -> list[str]:
    problems = []
    expected = len(math_elements(raw))
    typeset = [n for n in math_elements(dom)]
    bare = [n for n in typeset if not any(c.tag == "mjx-container" for c in n.iter())]
    if expected and not any(n.tag == "mjx-container" for n in dom.iter()):
        problems.append(f"{expected} math elements but nothing typeset by MathJax "
                        "(no mjx-container: MathJax missing or not loaded)")
    elif bare:
        sample = bare[0].text().strip()[:80]
        problems.append(f"{len(bare)} of {len(typeset)} math elements not typeset, e.g. {sample!r}")
    errors = [n for n in dom.iter() if n.tag == "mjx-merror"]
    if errors:
        problems.append(f"{len(errors)} MathJax TeX errors, e.g. {errors[0].text().strip()[:80]!r}")
    body = next((n for n in dom.iter() if n.tag == "body"), dom)
    for match in RAW_TEX.finditer(body.text(NOT_PROSE)):
        start = max(0, match.start() - 30)
        context = body.text(NOT_PROSE)[start:match.end() + 30].replace("\n", " ")
        problems.append(f"raw TeX left in the page: ...{context}...")
        break
    return problems


def _context(text: str, match: re.Match, width: int = 40) -> str:
    return text[max(0, match.start() - width):match.end() + width].replace("\n", " ")


def check_roles(raw: Node, dom: Node) -> list[str]:
    """Unparsed MyST roles: in the TeX of a math element (MathJax would typeset the role as
    text), or anywhere in the visible prose."""
    problems = []
    for node in math_elements(raw):
        tex = node.text()
        match = RAW_ROLE.search(tex)
        if match:
            problems.append(f"raw MyST role inside math: ...{_context(tex, match)}...")
            break
    body = next((n for n in dom.iter() if n.tag == "body"), dom)
    text = body.text(NOT_PROSE)
    match = RAW_ROLE.search(text)
    if match:
        problems.append(f"raw MyST role in the page: ...{_context(text, match)}...")
    return problems


def check_raw_markup(dom: Node) -> list[str]:
    """MyST directives and directive options left as text in the prose, and Markdown fence lines
    inside code blocks (the sign of a fence that did not close where the author meant)."""
    problems = []
    body = next((n for n in dom.iter() if n.tag == "body"), dom)
    text = body.text(NOT_PROSE - {"code"})
    for pattern, what in ((RAW_DIRECTIVE, "raw MyST directive"), (RAW_OPTION, "raw directive option")):
        match = pattern.search(text)
        if match:
            problems.append(f"{what} in the page: ...{_context(text, match)}...")
    for node in body.iter():
        if node.tag == "pre":
            code = node.text()
            match = CODE_FENCE.search(code)
            if match:
                problems.append("Markdown fence inside a code block (an unclosed or unrecognised "
                                f"fence swallowed the text after it): ...{_context(code, match)}...")
                break
    return problems


def check_pseudo_tex(dom: Node) -> list[str]:
    """``_{`` or ``^{`` in visible text outside typeset math and code."""
    body = next((n for n in dom.iter() if n.tag == "body"), dom)
    text = body.text(NOT_PROSE)
    match = PSEUDO_TEX.search(text)
    if match:
        return [f"TeX sub/superscript outside math (use dollar math): ...{_context(text, match)}..."]
    return []


def check_overflow(dom: Node) -> list[str]:
    """Elements wider than the text column, as measured in the browser by OVERFLOW_SCRIPT."""
    import json

    root = next((n for n in dom.iter() if n.tag == "html"), None)
    if root is None or OVERFLOW_ATTR not in root.attrs:
        return ["the width check did not run (no measurement in the rendered page)"]
    try:
        found = json.loads(root.attrs[OVERFLOW_ATTR] or "[]")
    except ValueError:
        return [f"unreadable width measurement: {root.attrs[OVERFLOW_ATTR][:80]!r}"]
    return [f"too wide for the column: {item}" for item in found[:5]] + (
        [f"... and {len(found) - 5} more elements wider than the column"] if len(found) > 5 else [])


def check_outputs(raw: Node) -> list[str]:
    """Cell outputs that are errors or stderr text (myst-nb: ``div.output.traceback`` /
    ``div.output.stderr``)."""
    problems = []
    for node in raw.iter():
        classes = node.classes()
        if node.tag == "div" and "output" in classes and classes & {"traceback", "error", "stderr"}:
            kind = "error" if classes & {"traceback", "error"} else "stderr"
            problems.append(f"{kind} output in a cell: {node.text().strip()[:100]!r}")
    return problems


def check_images(dom: Node, page: Path, html_root: Path) -> list[str]:
    problems = []
    for img in (n for n in dom.iter() if n.tag == "img"):
        src = img.attrs.get("src", "")
        if not src:
            problems.append("<img> without src")
        elif src.startswith("data:"):
            payload = src.split(",", 1)[1] if "," in src else ""
            try:
                empty = len(base64.b64decode(payload, validate=False)) == 0
            except ValueError:
                empty = not payload
            if empty:
                problems.append("<img> with an empty data URI")
        elif EXTERNAL.match(src):
            problems.append(f"<img> loaded from the network: {src}")
        else:
            target = (page.parent / unquote(urlsplit(src).path)).resolve()
            if not target.is_file():
                problems.append(f"<img> src does not exist: {src}")
            elif target.stat().st_size == 0:
                problems.append(f"<img> src is an empty file: {src}")
            elif html_root.resolve() not in target.parents:
                problems.append(f"<img> src outside the built book: {src}")
    return problems


def check_external(tree: Node, where: str) -> list[str]:
    problems = []
    for node in tree.iter():
        if node.tag == "script" and EXTERNAL.match(node.attrs.get("src", "")):
            problems.append(f"{where}: script from the network: {node.attrs['src']}")
        rel = node.attrs.get("rel", "").lower().split()
        if node.tag == "link" and ("stylesheet" in rel or node.attrs.get("as") in ("script", "style")):
            if EXTERNAL.match(node.attrs.get("href", "")):
                problems.append(f"{where}: stylesheet from the network: {node.attrs['href']}")
    return problems


# --------------------------------------------------------------------------------------------
# Driving Chromium
# --------------------------------------------------------------------------------------------
def find_browser(name: str | None) -> str:
    for candidate in ([name] if name else []) + [os.environ.get("CHROMIUM", "")] + list(BROWSERS):
        if candidate and shutil.which(candidate):
            return shutil.which(candidate)
    sys.exit("check_book.py: no Chromium found (apt-get install chromium, or set CHROMIUM=...)")


def with_measurement(html: str) -> str:
    """The page with OVERFLOW_SCRIPT added at the end of its body."""
    at = html.lower().rfind("</body>")
    return html + OVERFLOW_SCRIPT if at < 0 else html[:at] + OVERFLOW_SCRIPT + html[at:]


def render(browser: str, page: Path, screenshot: Path, timeout: float) -> str:
    """The DOM after the page's scripts ran, measured by OVERFLOW_SCRIPT; the screenshot is written
    as a side effect.  Chromium opens a copy of the page, next to it (so that relative links
    resolve), with the measuring script added."""
    profile = tempfile.mkdtemp(prefix="check-book-chromium-")
    copy = page.with_name(f".check-{os.getpid()}-{page.name}")
    copy.write_text(with_measurement(page.read_text(errors="replace")))
    try:
        cmd = [browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
               f"--screenshot={screenshot}", "--dump-dom", copy.resolve().as_uri()]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0 or not result.stdout.strip():
            tail = "\n".join(result.stderr.strip().splitlines()[-5:])
            raise RuntimeError(f"chromium exited {result.returncode}: {tail}")
        return result.stdout
    finally:
        copy.unlink(missing_ok=True)
        shutil.rmtree(profile, ignore_errors=True)


def toc_pages(root: Path) -> list[str]:
    sys.path.insert(0, str(root))
    from reproduce import toc_entries  # the same reading of _toc.yml as the build

    return toc_entries(root / "_toc.yml")


def check_page(entry: str, html_root: Path, shots: Path, browser: str, timeout: float):
    page = html_root / f"{entry}.html"
    if not page.is_file():
        return entry, [f"page missing: {page}"], 0.0
    start = time.perf_counter()
    raw = parse_html(page.read_text(errors="replace"))
    shot = shots / f"{Path(entry).name}.png"
    try:
        dom = parse_html(render(browser, page, shot, timeout))
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        return entry, [f"could not render: {exc}"], time.perf_counter() - start
    problems = check_math(raw, dom) + check_roles(raw, dom) + check_raw_markup(dom)
    problems += check_pseudo_tex(dom)
    problems += check_overflow(dom) + check_outputs(raw) + check_images(dom, page, html_root)
    problems += check_external(raw, "html") + check_external(dom, "after scripts")
    if not shot.is_file() or shot.stat().st_size == 0:
        problems.append(f"no screenshot written to {shot}")
    return entry, problems, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("pages", nargs="*", help="_toc.yml entries to check (default: all)")
    parser.add_argument("--html", type=Path, default=ROOT / "book" / "_build" / "html")
    parser.add_argument("--screenshots", type=Path, default=ROOT / "book" / "_build" / "screenshots")
    parser.add_argument("--browser", help="Chromium executable (default: $CHROMIUM or PATH)")
    parser.add_argument("--jobs", type=int, default=2, help="pages rendered at once")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per page")
    args = parser.parse_args(argv)

    if not (args.html / "index.html").is_file():
        print(f"check_book.py: {args.html}/index.html missing; build the book first "
              "(.venv/bin/python reproduce.py --build-only)", file=sys.stderr)
        return 1
    browser = find_browser(args.browser)
    args.screenshots.mkdir(parents=True, exist_ok=True)
    entries = toc_pages(ROOT)
    unknown = [p for p in args.pages if p not in entries]
    if unknown:
        print(f"check_book.py: not in _toc.yml: {', '.join(unknown)}", file=sys.stderr)
        return 1
    entries = [e for e in entries if e in args.pages] if args.pages else entries
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        results = list(pool.map(
            lambda e: check_page(e, args.html, args.screenshots, browser, args.timeout), entries))
    failed = 0
    for entry, problems, seconds in results:
        status = "ok" if not problems else f"{len(problems)} problem(s)"
        print(f"{entry:40s} {status:14s} {seconds:5.1f} s")
        for problem in problems:
            print(f"    - {problem}")
        failed += bool(problems)
    total = time.perf_counter() - start
    print(f"\n{len(entries)} pages checked in {total:.0f} s; screenshots in {args.screenshots}")
    if failed:
        print(f"check_book.py: {failed} page(s) with problems", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
