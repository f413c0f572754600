"""Suite 7: what each form of a per-step statistic costs, on its own, under ``jit``.

The statistics of ``track`` and of the ``prox_*`` family are sums and exact counts over every
parameter. The same number can be written in forms XLA compiles very differently; this suite
times each form, interleaved, on a tree of ``(768, 3072)`` float32 leaves ``x`` (and a second
tree ``y`` of the same shape, for the statistics of ``x + y``), and reports the pairwise ratio
to ``Σx²`` (one plain pass over ``x``), the minor page faults per call (a temporary as large as
the input is fresh memory on every call under XLA:CPU) and what the compiled HLO holds
(YNNPACK fusions, variadic reductions, temporaries as large as a leaf).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from bench._common import Context, PureRunner, Section, ratio_rows, time_interleaved
from optareg import _numerics

LEAVES = {"tiny": 1, "small": 4, "full": 12}  # (768, 3072) leaves: 2.4M, 9.4M, 28.3M entries
SHAPE = {"tiny": (64, 96), "small": (768, 3072), "full": (768, 3072)}


def _i32(b):
    return b.astype(jnp.int32)


def _track_terms(x, y):
    """The per-entry terms of ``track`` (θ = x, u = y): 5 float sums and 4 exact counts."""
    z = x + y
    d = z - x
    down = jnp.float32(2.0**-100)
    return [
        d * d,
        y * y,
        x * x,
        jnp.square(y * down),
        jnp.square(x * down),
        _i32(z == 0),
        _i32(jnp.isfinite(y)),
        _i32(y != 0),
        _i32((d == 0) | (y == 0)),
    ]


# (row, what it computes, per-leaf function of (x, y))
FORMS: list[tuple[str, str, Callable[..., Any]]] = [
    ("Σx²", "reference: one plain pass", lambda x, y: jnp.sum(x * x)),
    ("Σ|x|", "one plain pass", lambda x, y: jnp.sum(jnp.abs(x))),
    ("Σ|sign(x)|", "non-zeros of x (NaN → NaN)", lambda x, y: jnp.sum(jnp.abs(jnp.sign(x)))),
    (
        "Σ|sign(x + y)|",
        "non-zeros of x + y (NaN → NaN)",
        lambda x, y: jnp.sum(jnp.abs(jnp.sign(x + y))),
    ),
    ("Σ(x == 0)", "zeros of x, summed predicate", lambda x, y: jnp.sum(x == 0, dtype=jnp.int32)),
    (
        "Σ((x + y) != 0)",
        "non-zeros of x + y, summed predicate",
        lambda x, y: jnp.sum((x + y) != 0, dtype=jnp.int32),
    ),
    (
        "Σ min(|x + y|·2¹²⁶, 1)",
        "non-zeros of x + y, arithmetic (NaN → NaN)",
        lambda x, y: jnp.sum(jnp.minimum(jnp.abs(x + y) * jnp.float32(2.0**126), 1.0)),
    ),
    (
        "zeros_fraction([x])",
        "optareg: exact zero count (int32), one variadic pass",
        lambda x, y: _numerics.zeros_fraction([x]),
    ),
    (
        "fused_sums: zeros(x+y), Σ|x+y|",
        "optareg (prox_* stats): exact count + penalty sum, one pass",
        lambda x, y: _numerics.fused_sums([_i32((x + y) == 0), jnp.abs(x + y)]),
    ),
    (
        "separate: zeros(x+y), Σ|x+y|",
        "the same two numbers as two reductions",
        lambda x, y: (jnp.sum((x + y) == 0, dtype=jnp.int32), jnp.sum(jnp.abs(x + y))),
    ),
    (
        "fused_sums: track's 9 terms",
        "optareg (track): 5 float sums + 4 exact counts of (x, y), one pass",
        lambda x, y: _numerics.fused_sums(_track_terms(x, y)),
    ),
    (
        "separate: track's 9 terms",
        "the same nine numbers as nine reductions",
        lambda x, y: [jnp.sum(t, dtype=t.dtype) for t in _track_terms(x, y)],
    ),
]


def _hlo_notes(text: str, shape: tuple[int, ...]) -> str:
    """YNNPACK fusions, variadic reductions and leaf-sized temporaries of the compiled step."""
    entry = text[text.index("ENTRY") :]
    dims = ",".join(str(d) for d in shape)
    big = len(re.findall(rf"= [a-z0-9]+\[{dims}\]\S* (?!parameter)", entry))
    variadic = len(re.findall(r"= \([^=]*\) fusion\(", entry))
    ynn = entry.count("__ynn_fusion")
    return f"{ynn} YNN, {variadic} variadic, {big} leaf-sized temporaries"


def run(ctx: Context) -> list[Section]:
    n_leaves, shape = LEAVES[ctx.size], SHAPE[ctx.size]
    rng = np.random.default_rng(0)
    xs = [jnp.asarray(rng.standard_normal(shape, dtype=np.float32)) for _ in range(n_leaves)]
    ys = [jnp.asarray(1e-3 * rng.standard_normal(shape, dtype=np.float32)) for _ in xs]
    entries = n_leaves * int(np.prod(shape))
    ctx.log(f"[stats] {n_leaves} leaves of {shape}: {entries / 1e6:.1f}M entries")
    runners = []
    for name, _, form in FORMS:
        ctx.log(f"[stats] {name}")
        per_leaf = lambda xs, ys, f=form: [f(x, y) for x, y in zip(xs, ys, strict=True)]  # noqa: E731
        runners.append(PureRunner(per_leaf, xs, ys))
    times = time_interleaved(runners, ctx.reps, ctx.warmup)
    rows = ratio_rows(
        [(name, what) for name, what, _ in FORMS],
        runners,
        times,
        lambda runner: _hlo_notes(runner.compiled.as_text(), shape),
    )
    notes = [
        f"{n_leaves} float32 leaves of {shape} ({entries / 1e6:.1f}M entries, "
        f"{entries * 4 / 2**20:.0f} MiB per tree); y = 1e-3·N(0, 1); {ctx.reps} timed calls "
        f"per form after {ctx.warmup} warm-up calls, interleaved; JAX backend "
        f"{jax.default_backend()}.",
        "Page faults: minor faults per call (fresh pages of a temporary; 4 KiB each).",
        "optareg's forms (``optareg/_numerics.py``: ``fused_sums``): on CPU, one variadic "
        "reduction over the rows with int32 counts and the float terms stacked into one "
        "accumulator operand; elsewhere, and with several devices, one plain reduction per term "
        "(XLA:GPU/TPU fuse sibling reductions; SPMD splits them over any sharding).",
    ]
    return [
        Section(
            title="7. Statistics: the cost of each form (ratio to one pass of Σx²)",
            headers=[
                "form",
                "computes",
                "time median [min–max]",
                "ratio to Σx²",
                "page faults / call",
                "compiled HLO",
            ],
            rows=rows,
            intro=__doc__.split("\n\n")[1].replace("\n", " "),
            notes=notes,
        )
    ]


__all__ = ["FORMS", "run"]
