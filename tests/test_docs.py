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


@pytest.mark.skipif(
    importlib.util.find_spec("mkdocs") is None
    or importlib.util.find_spec("mkdocstrings") is None
    or importlib.util.find_spec("material") is None,
    reason="mkdocs, mkdocs-material or mkdocstrings is not installed (pip install -e '.[docs]')",
)
def test_mkdocs_build_strict(tmp_path):
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    cmd = [
        sys.executable,
        "-m",
        "mkdocs",
        "build",
        "--strict",
        "--site-dir",
        str(tmp_path / "site"),
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    assert (tmp_path / "site" / "api" / "transforms" / "index.html").exists()
    html = (tmp_path / "site" / "api" / "transforms" / "index.html").read_text()
    assert "prox_nuclear" in html and "add_decayed_weights" in html


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
