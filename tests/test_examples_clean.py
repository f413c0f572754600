"""Running an example leaves the checkout clean, and every flag is validated and documented.

Each example saves its figures under ``--out`` (``examples/_cli.add_out``), whose default,
``examples/out``, git ignores; the committed figures the docs show (``examples/figures``) are
written only by ``scripts/figures.sh``. The parser of every example is captured (its
``parse_args`` stops the run) and checked: defaults shown in ``--help``, a help text and a
validating type on every flag. One cheap example then runs with the default ``--out``, and
``git status`` of the examples' output paths must stay empty.
"""

from __future__ import annotations

import argparse
import pathlib
import subprocess

import pytest
from helpers import load_example

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
SCRIPTS = sorted(p.stem for p in EXAMPLES.glob("*.py") if not p.stem.startswith("_"))
OUTPUT_PATHS = ("examples/out", "examples/figures")


class _Captured(Exception):
    pass


def _parser_of(name: str, monkeypatch) -> argparse.ArgumentParser:
    """The parser ``main`` builds (its ``parse_args`` raises before anything runs)."""
    if name == "data_parallel":  # it sets XLA_FLAGS at import unless the flag is there
        monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
    mod = load_example(name)
    seen = {}

    def capture(self, args=None, namespace=None):
        seen["parser"] = self
        raise _Captured

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    with pytest.raises(_Captured):
        mod.main([])
    return seen["parser"]


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=ROOT, capture_output=True, text=True, check=False
    ).stdout


@pytest.mark.parametrize("name", SCRIPTS)
def test_flags_validated_documented_and_out_ignored(name, monkeypatch):
    parser = _parser_of(name, monkeypatch)
    import _cli  # examples/ is on sys.path once an example is loaded

    assert parser.formatter_class is argparse.ArgumentDefaultsHelpFormatter
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        flag = action.option_strings[0]
        assert action.help, f"{name} {flag}: no help text"
        # a bare int / float accepts 0, negatives and nan: every number goes through _cli
        assert action.type not in (int, float), f"{name} {flag}: type={action.type.__name__}"
    saves = "savefig(" in (EXAMPLES / f"{name}.py").read_text()
    outs = [a for a in parser._actions if "--out" in a.option_strings]
    assert bool(outs) == saves, f"{name}: --out iff it saves a figure"
    if outs:
        assert outs[0].default == _cli.DEFAULT_OUT == str(EXAMPLES / "out")
        # the default is ignored by git, whatever the figure is called
        probe = f"examples/out/{name}.png"
        assert _git("check-ignore", probe).strip() == probe


def test_a_run_with_the_default_out_leaves_git_status_empty(capsys):
    before = _git("status", "--porcelain", "--untracked-files=all", "--", *OUTPUT_PATHS)
    load_example("sparse_logistic").main(["--steps", "3", "--num-lambdas", "2"])
    written = EXAMPLES / "out" / "sparse_logistic_path.png"
    assert f"saved {written}" in capsys.readouterr().out and written.exists()
    after = _git("status", "--porcelain", "--untracked-files=all", "--", *OUTPUT_PATHS)
    assert after == before  # (before: empty, unless someone is regenerating the figures)
    assert _git("check-ignore", str(written)).strip() == str(written)
