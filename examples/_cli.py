"""Command-line helpers shared by the example scripts (``examples/`` is not a package: a script
imports this module from its own directory).

* :func:`parser`: an ``argparse`` parser whose ``--help`` shows every default;
* validated argument types (:func:`int_at_least`, :func:`float_in` and the common cases
  :data:`positive_int`, :data:`positive_float`, ...): a bad value is a one-line argparse error
  naming the flag and the allowed range, never a traceback from inside the computation;
* :func:`add_out` / :func:`figure_path`: the ``--out`` directory figures are written to. Its
  default, ``examples/out``, is git-ignored, so running an example never changes a tracked
  file; ``scripts/figures.sh`` regenerates the figures the docs show (``examples/figures``) by
  passing ``--out examples/figures``.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable

DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "out")


def parser(doc: str | None) -> argparse.ArgumentParser:
    """A parser described by the first line of ``doc``, with every default shown in ``--help``."""
    first = (doc or "").strip().splitlines()[0] if doc and doc.strip() else None
    return argparse.ArgumentParser(
        description=first, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )


def int_at_least(low: int) -> Callable[[str], int]:
    """An argparse type: an integer ``>= low``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {value}")
        return value

    parse.__name__ = f"integer >= {low}"
    return parse


def float_in(
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> Callable[[str], float]:
    """An argparse type: a finite float in the interval given (``*_open``: bound excluded)."""
    parts = []
    if low is not None:
        parts.append(f"{'>' if low_open else '>='} {low:g}")
    if high is not None:
        parts.append(f"{'<' if high_open else '<='} {high:g}")
    allowed = "a finite number" + (" " + " and ".join(parts) if parts else "")

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        bad = not math.isfinite(value)
        if low is not None and (value < low or (low_open and value == low)):
            bad = True
        if high is not None and (value > high or (high_open and value == high)):
            bad = True
        if bad:
            raise argparse.ArgumentTypeError(f"must be {allowed}, got {text}")
        return value

    parse.__name__ = allowed
    return parse


positive_int = int_at_least(1)
nonnegative_int = int_at_least(0)
positive_float = float_in(0.0, low_open=True)
nonnegative_float = float_in(0.0)
probability = float_in(0.0, 1.0)  # [0, 1]
decay_rate = float_in(0.0, 1.0, high_open=True)  # [0, 1): an EMA coefficient, Adam's β


def add_out(p: argparse.ArgumentParser) -> None:
    """``--out DIR``: where the figures go (created if missing)."""
    p.add_argument(
        "--out",
        default=DEFAULT_OUT,
        metavar="DIR",
        help="directory the figures are written to (created if missing; the default is "
        "git-ignored, scripts/figures.sh writes the docs' figures to examples/figures)",
    )


def figure_path(out: str, filename: str) -> str:
    """``out/filename``, with ``out`` created."""
    os.makedirs(out, exist_ok=True)
    return os.path.join(out, filename)
