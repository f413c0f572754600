"""Suite 3b: ``spectral_clip`` per method chained after ``optax.adamw`` on 768×3072 kernels.

The section is built by :func:`bench.suite_spectral.run_step` (see that module's docstring);
this module makes it a suite of its own: ``python -m bench --suites spectral_step`` (or ``3b``).
"""

from __future__ import annotations

from bench._common import Context, Section
from bench.suite_spectral import run_step


def run(ctx: Context) -> list[Section]:
    return [run_step(ctx)]


__all__ = ["run"]
