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
"""

from __future__ import annotations

import glob
import os
import posixpath
import re

from mkdocs.structure.files import File

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


def on_files(files, config):
    root = os.path.dirname(os.path.abspath(config["config_file_path"]))
    for path in sorted(glob.glob(os.path.join(root, "examples", "figures", "*.png"))):
        uri = f"figures/{os.path.basename(path)}"
        if files.get_file_from_path(uri) is None:
            files.append(File.generated(config, uri, abs_src_path=path))
    return files
