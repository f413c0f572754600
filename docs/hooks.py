"""MkDocs hooks for the optareg site (registered in ``mkdocs.yml`` under ``hooks:``).

``add_example_figures``: every PNG that the example scripts commit under ``examples/figures/`` is
served as ``figures/<name>.png`` (pages link ``figures/...`` / ``../figures/...``), so the docs
always show the figures the examples last produced, with no copy to keep in sync. A page that
links a figure no example has produced fails ``mkdocs build --strict``.

``include_bench_results``: the Performance page embeds ``bench/RESULTS.md``, which the benchmark
script writes outside ``docs/``. A plain snippet include would let the report's relative links
(``ANALYSIS.md``, ``../optareg/...``) break ``mkdocs build --strict``, and the file may not exist
yet on a fresh clone. So the hook reads it if present, demotes its headings below the page's own,
turns relative links into inline code naming the repository path, and otherwise says how to
generate it. Absolute links (``https://...``) and anchors are kept.

``mathjax_sources`` (in ``on_files``): MathJax 3 (``es5/tex-svg.js``, one self-contained file: SVG
output, no web fonts) is copied into the site as ``assets/mathjax/tex-svg.js`` from the
``django-static-mathjax`` wheel of the ``docs`` extra (a plain copy of MathJax's release files, no
Django needed), with its license. ``mkdocs.yml`` loads it after ``javascripts/mathjax-config.js``:
the site renders its math with no network at view time.

``metric_catalog_page`` (in ``on_files``): the page ``metrics.md`` is generated from the
conformance registry by ``docs/metric_catalog.py``; a key without a meaning there is a warning, so
``--strict`` fails.
"""

from __future__ import annotations

import glob
import importlib.util
import logging
import os
import posixpath
import re
import sys

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File

log = logging.getLogger("mkdocs.plugins.optareg_hooks")
# site path -> path inside the installed `mathjax` package (the django-static-mathjax wheel)
MATHJAX_FILES = {
    "assets/mathjax/tex-svg.js": ("static", "mathjax", "es5", "tex-svg.js"),
    "assets/mathjax/LICENSE": ("static", "mathjax", "LICENSE"),
}
CATALOG_MODULE = "optareg_docs_metric_catalog"

MARKER = "<!-- include: bench/RESULTS.md -->"
_LINK = re.compile(r"(?<!!)\[([^\]]+)\]\(([^)\s]+)\)")
_HEADING = re.compile(r"^(#{1,5}) ", re.M)


def _rewrite_link(m: re.Match, base: str) -> str:
    text, target = m.group(1), m.group(2)
    if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
        return m.group(0)
    path = posixpath.normpath(posixpath.join(base, target.split("#")[0]))
    return f"{text} (`{path}`)"


def render_results(root: str) -> str:
    path = os.path.join(root, "bench", "RESULTS.md")
    if not os.path.exists(path):
        return (
            '!!! note "No results yet"\n    `bench/RESULTS.md` has not been generated in this '
            "checkout: run `python -m bench` (see above) and rebuild the site.\n"
        )
    with open(path, encoding="utf-8") as f:
        text = f.read()
    text = _LINK.sub(lambda m: _rewrite_link(m, "bench"), text)
    return _HEADING.sub(lambda m: "#" + m.group(1) + " ", text)


def on_page_markdown(markdown, page, config, files):  # noqa: ARG001 - mkdocs hook signature
    if MARKER not in markdown:
        return markdown
    root = os.path.dirname(os.path.abspath(config["config_file_path"]))
    return markdown.replace(MARKER, render_results(root))


def mathjax_sources() -> dict[str, str]:
    """Site path -> file of the installed MathJax copy (``PluginError`` if it is missing)."""
    spec = importlib.util.find_spec("mathjax")
    base = os.path.dirname(spec.origin) if spec is not None and spec.origin else None
    out = {uri: os.path.join(base or "", *parts) for uri, parts in MATHJAX_FILES.items()}
    if base is None or not all(os.path.isfile(p) for p in out.values()):
        raise PluginError(
            "MathJax is not installed: the site ships its own copy to render math offline. "
            'Install the docs extra: .venv/bin/python -m pip install -e ".[docs]"'
        )
    return out


def load_catalog(root: str):
    """``docs/metric_catalog.py`` as one module shared with the griffe extension."""
    if CATALOG_MODULE not in sys.modules:
        path = os.path.join(root, "docs", "metric_catalog.py")
        spec = importlib.util.spec_from_file_location(CATALOG_MODULE, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[CATALOG_MODULE] = module
        spec.loader.exec_module(module)
    return sys.modules[CATALOG_MODULE]


def metric_catalog_page(root: str) -> str:
    catalog = load_catalog(root)
    transforms = catalog.emitted()
    for key in catalog.missing_meanings(transforms):
        log.warning(f"metric catalog: no meaning for {key}; add it to docs/metric_catalog.py")
    return catalog.page(transforms)


def on_files(files, config):
    root = os.path.dirname(os.path.abspath(config["config_file_path"]))
    for path in sorted(glob.glob(os.path.join(root, "examples", "figures", "*.png"))):
        uri = f"figures/{os.path.basename(path)}"
        if files.get_file_from_path(uri) is None:
            files.append(File.generated(config, uri, abs_src_path=path))
    for uri, path in mathjax_sources().items():
        files.append(File.generated(config, uri, abs_src_path=path))
    files.append(File.generated(config, "metrics.md", content=metric_catalog_page(root)))
    return files
