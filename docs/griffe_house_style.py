"""Griffe extension: render optareg's house docstrings well in the API reference.

The docstrings follow the Optax house style (Google sections, a singular ``Example:`` section with
``>>>`` lines, Sphinx roles such as ``:func:`track```, ``.. math::`` blocks). This extension only
rewrites the text handed to the renderer; the source docstrings (and their doctests) are untouched:

* ``Example:`` becomes ``Examples:`` so griffe parses the ``>>>`` lines as highlighted code;
* Sphinx roles ``:func:`x``` / ``:class:`x``` / ``:mod:`x``` ... become inline code ``x``;
* a ``.. math::`` directive becomes a "Math" block showing its LaTeX body verbatim as code
  (the site loads no MathJax: it builds and reads offline).
"""

from __future__ import annotations

import re
from typing import Any

import griffe

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
        body = [b.strip() for b in body if b.strip()]
        pad = " " * base
        out += [f"{pad}```text", *(pad + b for b in body), f"{pad}```", ""]
        i = j
    return "\n".join(out)


def rewrite(text: str) -> str:
    text = _EXAMPLE.sub(r"\1Examples:", text)
    text = _ROLE.sub(r"`\1`", text)
    return _math_blocks(text)


class HouseStyleDocstrings(griffe.Extension):
    """Rewrite each docstring once, when griffe creates the object."""

    def on_instance(self, *, obj: Any, **kwargs: Any) -> None:
        del kwargs
        if getattr(obj, "docstring", None) is not None:
            obj.docstring.value = rewrite(obj.docstring.value)
