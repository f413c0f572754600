"""Griffe extension: render optareg's house docstrings well in the API reference.

The docstrings follow the Optax house style (Google sections, a singular ``Example:`` section with
``>>>`` lines, Sphinx roles such as ``:func:`track```, ``.. math::`` blocks). This extension only
rewrites the text handed to the renderer; the source docstrings (and their doctests) are untouched:

* ``Example:`` becomes ``Examples:`` so griffe parses the ``>>>`` lines as highlighted code;
* Sphinx roles ``:func:`x``` / ``:class:`x``` / ``:mod:`x``` ... become inline code ``x``;
* a ``.. math::`` directive becomes a ``$$ ... $$`` display block, the math syntax of the
  pages (``pymdownx.arithmatex``), typeset by the MathJax copy the site ships; a body with
  ``&`` / ``\\`` (several aligned lines, as Sphinx allows) is wrapped in ``aligned``;
* each public transform gets a ``Metrics:`` section: the keys it records in
  ``optareg.metrics``, with meaning, unit and when computed, from ``docs/metric_catalog.py``
  (the rows of the Metric catalog page).
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from typing import Any

import griffe

_CATALOG_MODULE = "optareg_docs_metric_catalog"  # the name docs/hooks.py loads it under

_EXAMPLE = re.compile(r"^(\s*)Example:\s*$", re.MULTILINE)
_ROLE = re.compile(r":(?:func|class|meth|mod|attr|data|obj|exc):`~?([^`]+)`")
_MATH = re.compile(r"^(\s*)\.\. math::\s*$")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _math_blocks(text: str) -> str:
    lines, out, i = text.split("\n"), [], 0
    while i < len(lines):
        m = _MATH.match(lines[i])
        if not m:
            out.append(lines[i])
            i += 1
            continue
        base, j, body = len(m.group(1)), i + 1, []
        while j < len(lines) and (not lines[j].strip() or _indent(lines[j]) > base):
            body.append(lines[j])
            j += 1
        while body and not body[-1].strip():
            body.pop()
        pad = " " * base
        out += ["", f"{pad}$$", *(pad + b for b in display([b.strip() for b in body])), f"{pad}$$"]
        out.append("")
        i = j
    return "\n".join(out)


_TEXT_ARG = re.compile(r"\\(texttt|text)\{([^{}]*)\}")
# Where one equation ends and the next begins, in bodies written for help(): "..., \qquad x = ..."
# on one line, or a line ending in \quad / \qquad, or the next line starting with \qquad.
_SEPARATOR = re.compile(r",[ \t]*\\qquad\b[ \t]*\n?|[ \t]*\\q?quad[ \t]*\n|\n[ \t]*\\qquad\b[ \t]*")


def _top_level(text: str) -> list[bool]:
    r"""For each character: is it outside every ``{...}`` group and ``\begin ... \end``?"""
    depth, out = 0, []
    for k, ch in enumerate(text):
        if text.startswith("\\begin{", k):
            depth += 1
        elif text.startswith("\\end{", k):
            depth -= 1
        if ch == "{":
            depth += 1
        out.append(depth == 0)
        if ch == "}":
            depth -= 1
    return out


def display(body: list[str]) -> list[str]:
    r"""The lines of a ``.. math::`` body as MathJax reads them best.

    ``\_`` is LaTeX's underscore in text mode, but MathJax shows it verbatim inside ``\text{}`` /
    ``\texttt{}``, where a plain ``_`` is already literal. A body with ``&`` or ``\\`` (several
    aligned lines, as Sphinx allows) is set in ``aligned``. Several equations written side by
    side with ``\quad`` / ``\qquad`` (readable in ``help()``) are stacked with ``gathered``
    rather than set as one line too wide for the page.
    """
    body = [
        _TEXT_ARG.sub(lambda m: f"\\{m[1]}{{{m[2].replace(chr(92) + '_', '_')}}}", b) for b in body
    ]
    body = [b for b in body if b]
    nested = any("\\begin{" in b for b in body)
    if not nested and any("&" in b or b.endswith("\\\\") for b in body):
        return ["\\begin{aligned}", *body, "\\end{aligned}"]
    text = "\n".join(body)
    top = _top_level(text)
    cuts = [m for m in _SEPARATOR.finditer(text) if top[m.start()]]
    if not cuts:
        return body
    pieces, last = [], 0
    for m in cuts:
        comma = "," if m.group(0).startswith(",") else ""
        pieces.append(text[last : m.start()] + comma + " \\\\\n")
        last = m.end()
    pieces.append(text[last:])
    return ["\\begin{gathered}", *"".join(pieces).split("\n"), "\\end{gathered}"]


def _catalog():
    """``docs/metric_catalog.py`` (loaded once, shared with ``docs/hooks.py``)."""
    if _CATALOG_MODULE not in sys.modules:
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "metric_catalog.py")
        spec = importlib.util.spec_from_file_location(_CATALOG_MODULE, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[_CATALOG_MODULE] = module
        spec.loader.exec_module(module)
    return sys.modules[_CATALOG_MODULE]


def with_metrics(text: str, section: str | None) -> str:
    """``section`` inserted before the ``Examples:`` section (else at the end)."""
    if section is None:
        return text
    m = re.search(r"^Examples:\s*$", text, re.MULTILINE)
    if m is None:
        return text.rstrip("\n") + "\n\n" + section
    return text[: m.start()] + section + "\n" + text[m.start() :]


def rewrite(text: str) -> str:
    text = _EXAMPLE.sub(r"\1Examples:", text)
    text = _ROLE.sub(r"`\1`", text)
    return _math_blocks(text)


class HouseStyleDocstrings(griffe.Extension):
    """Rewrite each docstring once, when griffe creates the object."""

    def on_instance(self, *, obj: Any, **kwargs: Any) -> None:
        del kwargs
        if getattr(obj, "docstring", None) is None:
            return
        text = rewrite(obj.docstring.value)
        if obj.is_function and obj.path.startswith("optareg.") and obj.parent.is_module:
            text = with_metrics(text, _catalog().docstring_section(obj.name))
        obj.docstring.value = text
