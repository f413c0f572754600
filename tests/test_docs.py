"""The documentation site: strict build, a complete API reference, and snippets that run.

Conventions checked here (also stated in ``docs/index.md`` for contributors):

* every fenced ```` ```python ```` block of a page under ``docs/`` (API pages excepted, they hold
  only ``:::`` directives) **runs**, in order, in one namespace per page, unless its first line
  is a comment starting with ``# not run`` (say why: ``# not run: needs torch``);
* ``>>>`` examples of the docstrings are not re-run here: pytest's ``--doctest-modules`` runs them
  over ``optareg/`` already;
* every public name of ``optareg``, ``optareg.operators`` and ``optareg.masks`` has a
  ``::: optareg.<name>`` (resp. ``::: optareg.operators.<name>``, ``::: optareg.masks.<name>``)
  directive in ``docs/api/`` -- or one naming the module that defines it
  (``::: optareg.early_stopping.early_stopping``, where the package attribute shadows the
  submodule) -- so mkdocstrings renders it from its docstring.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import re
import subprocess
import sys

import pytest

import optareg

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
API = DOCS / "api"
SKIP_MARK = "# not run"
_FENCE = re.compile(
    r"^(?P<indent>[ \t]*)```python[^\n]*\n(?P<body>.*?)^(?P=indent)```[ \t]*$", re.M | re.S
)


def _pages() -> list[pathlib.Path]:
    return sorted(p for p in DOCS.rglob("*.md") if API not in p.parents)


def python_blocks(text: str) -> list[str]:
    """The ```python blocks of a markdown page, dedented (also inside tabs/admonitions)."""
    blocks = []
    for m in _FENCE.finditer(text):
        indent = m.group("indent")
        lines = [
            ln[len(indent) :] if ln.startswith(indent) else ln for ln in m.group("body").split("\n")
        ]
        blocks.append("\n".join(lines))
    return blocks


def runnable_blocks(text: str) -> list[str]:
    return [b for b in python_blocks(text) if not b.lstrip().startswith(SKIP_MARK)]


# --------------------------------------------------------------------------------------------
# 1. the site builds in strict mode, offline
# --------------------------------------------------------------------------------------------


_DOCS_TOOLS = ("mkdocs", "mkdocstrings", "material", "pymdownx", "mathjax")
needs_docs_tools = pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in _DOCS_TOOLS),
    reason="mkdocs, mkdocs-material, mkdocstrings or django-static-mathjax is not installed "
    "(.venv/bin/python -m pip install -e '.[docs]')",
)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> pathlib.Path:
    """The site, built once per module with ``mkdocs build --strict``."""
    out = tmp_path_factory.mktemp("docs") / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    cmd = [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    return out


@needs_docs_tools
def test_mkdocs_build_strict(site):
    html = (site / "api" / "transforms" / "index.html").read_text()
    assert "prox_nuclear" in html and "add_decayed_weights" in html
    # the math assets are part of the site (no CDN): MathJax itself and the page config
    assert (site / "assets" / "mathjax" / "tex-svg.js").stat().st_size > 1_000_000
    assert (site / "javascripts" / "mathjax-config.js").exists()
    assert 'src="../../assets/mathjax/tex-svg.js"' in html
    assert not re.search(r'<script[^>]+src="https?://', html), "a script is loaded from the web"


# --------------------------------------------------------------------------------------------
# 2. every public name is in the API reference
# --------------------------------------------------------------------------------------------


def _directives() -> set[str]:
    found = set()
    for page in API.rglob("*.md"):
        found |= set(re.findall(r"^:::\s+([\w.]+)\s*$", page.read_text(), re.M))
    return found


@pytest.mark.parametrize(
    "module, prefix",
    [
        (optareg, "optareg"),
        (optareg.operators, "optareg.operators"),
        (optareg.masks, "optareg.masks"),
    ],
    ids=["optareg", "operators", "masks"],
)
def test_api_reference_lists_every_public_name(module, prefix):
    """``::: optareg.<name>``, or its defining path ``::: optareg.<module>.<name>``."""
    directives = _directives()

    def covered(name: str) -> bool:
        full = f"{prefix}.{name}"
        return full in directives or any(
            d.startswith(prefix + ".") and d.endswith("." + name) for d in directives
        )

    missing = sorted(n for n in module.__all__ if not covered(n))
    assert not missing, (
        f"public names of {prefix} without a `::: {prefix}.<name>` directive in docs/api/: "
        f"{missing}"
    )


def test_api_directives_resolve():
    """Every ``:::`` target imports (a renamed function breaks here with a clear message)."""
    import importlib

    for target in sorted(_directives()):
        mod, _, attr = target.rpartition(".")
        try:
            obj = importlib.import_module(target)
        except ImportError:
            obj = getattr(importlib.import_module(mod), attr, None)
        assert obj is not None, f"`::: {target}` in docs/api/ names nothing importable"


# --------------------------------------------------------------------------------------------
# 3. the snippets of the pages run
# --------------------------------------------------------------------------------------------


def test_block_extraction():
    page = (
        'text\n```python\nx = 1\n```\n\n=== "Tab"\n\n    ```python\n    y = x + 1\n    ```\n'
        "```python\n# not run: needs a GPU\nboom()\n```\n```bash\nls\n```\n"
    )
    assert python_blocks(page) == ["x = 1\n", "y = x + 1\n", "# not run: needs a GPU\nboom()\n"]
    assert runnable_blocks(page) == ["x = 1\n", "y = x + 1\n"]


@pytest.mark.parametrize("page", _pages(), ids=lambda p: str(p.relative_to(DOCS)))
def test_page_snippets_run(page, monkeypatch):
    blocks = runnable_blocks(page.read_text())
    if not blocks:
        pytest.skip("no runnable python blocks")
    monkeypatch.chdir(ROOT)
    namespace: dict = {"__name__": f"docs_{page.stem.replace('-', '_')}"}
    for i, block in enumerate(blocks):
        code = compile(block, f"{page.relative_to(ROOT)}[python block {i + 1}]", "exec")
        try:
            exec(code, namespace)  # noqa: S102 - the docs' own snippets
        except ModuleNotFoundError as e:  # an optional framework of the test extras is missing
            pytest.skip(f"block {i + 1} needs {e.name}, which is not installed")
        except NotImplementedError as e:  # a family still being implemented
            pytest.skip(f"block {i + 1} uses a transform that is not implemented yet: {e}")


# --------------------------------------------------------------------------------------------
# 4. math: one syntax, rendered by the MathJax copy the site ships
# --------------------------------------------------------------------------------------------

# LaTeX commands the docstrings and pages use; none may reach a reader as source text.
RAW_LATEX = re.compile(
    r"\\(?:frac|operatorname|lVert|rVert|mathrm|mathbb|texttt|text|sqrt|leftarrow|top|quad"
    r"|qquad|Big|big|cdot|sum|nabla|partial|varepsilon|lambda|theta|eta|tau|sigma|rho|beta"
    r"|alpha|max|min|begin|end|le|ge|odot|hat|tfrac|mathcal|infty)(?![a-zA-Z])|\\\||\\[(\[]"
)
_MATH_ELEMENT = re.compile(
    r'<(div|span) class="arithmatex">.*?</\1>|<script\b.*?</script>|<style\b.*?</style>', re.S
)


def _load_docs_module(name: str):
    key = f"_optareg_docs_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, DOCS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module  # before running it: dataclasses look their module up
        spec.loader.exec_module(module)
    return sys.modules[key]


def _raw_latex(html_text: str) -> list[str]:
    """LaTeX commands left in a page's text or code, outside the elements MathJax typesets."""
    import html as html_lib

    text = html_lib.unescape(re.sub(r"<[^>]+>", " ", _MATH_ELEMENT.sub(" ", html_text)))
    return sorted({m.group(0) for m in RAW_LATEX.finditer(text)})


def test_math_directive_becomes_display_math():
    griffe_ext = pytest.importorskip("griffe") and _load_docs_module("griffe_house_style")
    doc = (
        "Summary.\n\n.. math::\n\n    x = \\frac{a}{b}\n\nText.\n\n  .. math::\n\n"
        "      m &\\leftarrow g \\\\\n      v &\\leftarrow g^2\n"
    )
    out = griffe_ext.rewrite(doc)
    assert "$$\nx = \\frac{a}{b}\n$$" in out
    assert "  $$\n  \\begin{aligned}\n  m &\\leftarrow g \\\\\n  v &\\leftarrow g^2\n" in out
    assert ".. math::" not in out and "```" not in out
    assert griffe_ext.rewrite("See :func:`optareg.track`.") == "See `optareg.track`."


def test_side_by_side_equations_are_stacked():
    """``\\quad``-separated equations become lines of ``gathered``; braces/envs are not cut."""
    display = _load_docs_module("griffe_house_style").display
    assert display(["a = 1,\\quad", "\\texttt{b\\_c} = 2"]) == [
        "\\begin{gathered}",
        "a = 1, \\\\",
        "\\texttt{b_c} = 2",
        "\\end{gathered}",
    ]
    assert display(["x = f(y), \\qquad y = 2"]) == [
        "\\begin{gathered}",
        "x = f(y), \\\\",
        "y = 2",
        "\\end{gathered}",
    ]
    assert display(["\\min\\!\\Big(1, \\frac{c}{d}\\Big)", "\\qquad w = v"])[-2:] == [
        "w = v",
        "\\end{gathered}",
    ]
    inside = ["x = \\begin{cases} a, \\qquad b & c \\\\ d & e \\end{cases}"]
    assert display(inside) == inside  # the separator is inside an environment: kept
    assert display(["\\mathrm{grad\\_fn}(x)"]) == ["\\mathrm{grad\\_fn}(x)"]  # math mode: kept


def test_metrics_section_goes_before_examples():
    griffe_ext = _load_docs_module("griffe_house_style")
    text = "Summary.\n\nReturns:\n  A thing.\n\nExamples:\n  >>> 1\n  1\n"
    out = griffe_ext.with_metrics(text, "Metrics:\n  | a |\n")
    assert out.index("Metrics:") < out.index("Examples:") and out.index("Returns:") < out.index(
        "Metrics:"
    )
    assert griffe_ext.with_metrics("Summary.\n", "Metrics:\n  x\n").endswith("\n\nMetrics:\n  x\n")


@needs_docs_tools
def test_no_raw_latex_in_any_built_page(site):
    bad = {}
    for page in sorted(site.rglob("*.html")):
        found = _raw_latex(page.read_text())
        if found:
            bad[str(page.relative_to(site))] = found
    assert not bad, f"LaTeX source shown as text or code (write it as $...$ / .. math::): {bad}"
    for page in ("api/transforms", "api/operators", "families/proximal"):
        html = (site / page / "index.html").read_text()
        assert html.count('class="arithmatex"') >= 3, f"{page}: no math left to render"


def _chromium() -> str | None:
    import shutil

    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if shutil.which(name):
            return shutil.which(name)
    return None


# Injected into a copy of a page: once MathJax has typeset it, record the page's width and every
# display formula wider than its column (it would be cut off when printed).
_PROBE = """<script>
window.addEventListener("load", function () {
  var ready = window.MathJax && MathJax.startup ? MathJax.startup.promise : Promise.resolve();
  ready.then(function () {
    var over = [];
    document.querySelectorAll("div.arithmatex").forEach(function (d) {
      if (d.scrollWidth > d.clientWidth + 1) {
        over.push(d.scrollWidth + " px > " + d.clientWidth + " px: " + d.textContent.slice(0, 60));
      }
    });
    document.body.setAttribute("data-probe", JSON.stringify(
      {width: document.documentElement.scrollWidth, overflowing: over}));
  });
});
</script>"""


def _render(chromium: str, page: pathlib.Path) -> tuple[str, dict]:
    """The DOM of ``page`` after its scripts ran in headless Chromium (1280 px wide)."""
    import json

    probe = page.with_name("probe.html")
    probe.write_text(page.read_text().replace("</body>", _PROBE + "</body>"))
    cmd = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",  # containers with a small /dev/shm
        "--window-size=1280,1000",
        "--virtual-time-budget=15000",
        "--dump-dom",
        probe.as_uri(),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    m = re.search(r'data-probe="([^"]*)"', proc.stdout)
    assert m, f"{page}: the page's scripts did not finish (MathJax not loaded?)"
    import html as html_lib

    return proc.stdout, json.loads(html_lib.unescape(m.group(1)))


@needs_docs_tools
@pytest.mark.skipif(_chromium() is None, reason="no headless Chromium (apt-get install chromium)")
@pytest.mark.parametrize("page", ["api/transforms", "families/proximal"])
def test_browser_renders_math(site, page):
    """In a real browser, offline: every formula becomes MathJax output, none is left as source."""
    static = (site / page / "index.html").read_text()
    n_math = static.count('class="arithmatex"')
    dom, probe = _render(_chromium(), site / page / "index.html")
    rendered = len(re.findall(r"<mjx-container\b", dom))
    assert n_math >= 3 and rendered == n_math, f"{page}: {rendered} of {n_math} formulas rendered"
    body = re.sub(r"<mjx-container\b.*?</mjx-container>", " ", dom, flags=re.S)
    body = re.sub(r"<(script|style)\b.*?</\1>", " ", body, flags=re.S)
    assert 'data-mml-node="merror"' not in body and "merror" not in body
    import html as html_lib

    text = html_lib.unescape(re.sub(r"<[^>]+>", " ", body))
    left = sorted({m.group(0) for m in RAW_LATEX.finditer(text)})
    assert not left, f"{page}: LaTeX left as text after MathJax ran: {left}"
    assert probe["width"] <= 1280, f"{page} is {probe['width']} px wide at a 1280 px window"
    assert not probe["overflowing"], f"{page}: formulas wider than the column: {probe}"


# --------------------------------------------------------------------------------------------
# 5. the API reference reads like optax's: typed parameters, one Returns entry
# --------------------------------------------------------------------------------------------


def test_every_public_parameter_is_typed():
    griffe = pytest.importorskip("griffe")
    pkg = griffe.load("optareg", search_paths=[str(ROOT)])
    untyped = []
    for module, prefix in [
        (optareg, ""),
        (optareg.operators, "operators."),
        (optareg.masks, "masks."),
        (optareg.penalties, "penalties."),
    ]:
        for name in module.__all__:
            obj = pkg[prefix + name]
            obj = obj.final_target if obj.is_alias else obj
            if not obj.is_function:
                continue
            untyped += [
                f"{prefix}{name}({p.name})"
                for p in obj.parameters
                if p.annotation is None
                and p.name not in ("self", "cls")
                and p.kind.value not in ("variadic positional", "variadic keyword")
            ]
    assert not untyped, (
        f"parameters without a type annotation (shown untyped in the API): {untyped}"
    )


@needs_docs_tools
def test_api_returns_is_one_entry_and_types_are_filled(site):
    for page in ("transforms", "operators", "masks", "diagnostics"):
        html = (site / "api" / page / "index.html").read_text()
        returns = re.findall(
            r'doc-section-title">Returns:</span></p>\s*<table>.*?<tbody>(.*?)</tbody>', html, re.S
        )
        assert returns, page
        rows = [r.count('<tr class="doc-section-item">') for r in returns]
        assert set(rows) == {1}, f"api/{page}: a Returns table split into rows: {rows}"
        params = re.findall(
            r'doc-section-title">Parameters:</span></p>\s*<table>.*?<tbody>(.*?)</tbody>',
            html,
            re.S,
        )
        for body in params:
            for row in re.findall(r'<tr class="doc-section-item">(.*?)</tr>', body, re.S):
                cells = re.findall(r"<td>(.*?)</td>", row, re.S)
                assert re.sub(r"<[^>]+>|\s", "", cells[1]), f"api/{page}: untyped {cells[0]}"


# --------------------------------------------------------------------------------------------
# 6. the metric catalog is the registry's keys, each with a meaning
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def catalog():
    return _load_docs_module("metric_catalog")


def test_metric_catalog_has_a_meaning_for_every_emitted_key(catalog):
    transforms = catalog.emitted()
    missing = catalog.missing_meanings(transforms)
    assert not missing, (
        "keys that registry entries emit with no meaning in docs/metric_catalog.py MEANINGS "
        f"(add a (meaning, unit, when) row for each): {missing}"
    )
    stale = catalog.stale_meanings(transforms)
    assert not stale, f"MEANINGS rows for keys no registry entry emits (renamed?): {stale}"


def test_metric_catalog_keys_are_the_keys_after_a_step(catalog):
    """The catalog reads the init state; an (abstract) update emits exactly the same keys."""
    import jax
    from helpers import extra_args, grads_for, make_params
    from registry import ENTRIES

    by_name = {t.name: t for t in catalog.emitted()}
    params = make_params()
    grads = grads_for(params)
    paths = ["conv/kernel", "dense/bias", "dense/kernel", "scale"]
    for entry in ENTRIES:
        tx = entry.make()

        def keys_after_step(p, tx=tx, entry=entry):
            _, state = tx.update(grads, tx.init(p), p, **extra_args(entry))
            return optareg.metrics(state)

        keys = jax.eval_shape(keys_after_step, params)
        t = by_name[catalog._factory_name(entry.factory)]
        prefix = entry.kwargs.get("name", t.prefix)
        got = {catalog._normalize(k, prefix, paths) for k in keys}
        assert got <= set(t.metrics), f"{entry.id}: keys missing from the catalog: {got}"
        assert all(entry.id in t.entries[m] for m in got), entry.id


def test_metric_catalog_page_lists_every_key(catalog):
    transforms = catalog.emitted()
    text = catalog.page(transforms)
    for t in transforms:
        for metric in t.metrics:
            assert f"`{t.prefix}/{metric}`" in text, f"{t.prefix}/{metric}"
    assert "`prox_l1/zeros_fraction`" in text and "`optareg/lost_update_fraction`" in text
    assert "no meaning yet" not in text


@needs_docs_tools
def test_metric_catalog_page_and_docstring_sections_are_built(site):
    page = (site / "metrics" / "index.html").read_text()
    for key in ("prox_l1/penalty", "optareg/applied_update_ratio", "sam_perturb/cos"):
        assert f"<code>{key}</code>" in page, key
    api = (site / "api" / "transforms" / "index.html").read_text()
    start = api.index('id="optareg.prox_l1"')
    section = api[start : api.index('id="optareg.prox_elastic_net"')]
    assert "Metrics" in section and "<code>prox_l1/zeros_fraction</code>" in section
