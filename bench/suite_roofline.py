"""Suite 2: how close the optimizer step gets to the device's memory bandwidth.

The minimum traffic of a step is every input read once and every output written once:
``bytes(params) + bytes(state) + bytes(grads)`` read, ``bytes(params) + bytes(state)`` written.
Divided by the measured step time it gives an achieved bandwidth, reported as a fraction of the
copy bandwidth measured in the same run, interleaved with the steps, on an array with as many
float32 elements as the model has parameters. Two copies are timed, and the faster one is the
reference: ``x + s`` with ``x`` donated (in place; ``s`` is a runtime scalar, so XLA cannot elide
the add) and ``jnp.copy(x)`` under jit (a distinct output buffer). Each moves ``2·bytes(x)``.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from bench._common import (
    Context,
    PureRunner,
    Section,
    StepRunner,
    fmt_bytes,
    fmt_stats,
    time_interleaved,
    tree_bytes,
    tree_size,
    try_build,
)
from bench.suite_overhead import baseline, cached_runner, problem, prox_l1_chain


def _copy_runners(n: int):
    x = jnp.zeros((n,), jnp.float32) + 1.0
    s = jnp.zeros((), jnp.float32)
    inplace = StepRunner(lambda x, s: x + s, x, (s,))
    distinct = PureRunner(jnp.copy, jnp.ones((n,), jnp.float32))
    return inplace, distinct


def run(ctx: Context) -> list[Section]:
    shapes, grads = problem(ctx)
    n = tree_size(shapes)
    ctx.log(f"[roofline] {n / 1e6:.2f}M params")
    inplace, distinct = _copy_runners(n)
    candidates = [
        ("optax.adamw", "runner/adamw", baseline),
        ("optax.adamw + prox_l1", "runner/prox_l1", prox_l1_chain),
    ]
    runners, labels, rows = [], [], []
    errors = []
    for label, key, factory in candidates:
        r, err = try_build(lambda k=key, f=factory: cached_runner(ctx, k, f), ctx.log)
        if err is None:
            runners.append(r)
            labels.append(label)
        else:
            errors.append([label, "—", err, "—", "—"])
    times = time_interleaved([inplace, distinct, *runners], ctx.reps, ctx.warmup)
    copy_bytes = 2 * 4 * n
    bw = {}
    for label, t in zip(
        ("copy: x + s, donated", "copy: jnp.copy, distinct"), times[:2], strict=True
    ):
        bw[label] = copy_bytes / float(np.median(t))
    ref = max(bw.values())
    for (label, b), t in zip(bw.items(), times[:2], strict=True):
        rows.append(
            [label, fmt_bytes(copy_bytes), fmt_stats(t), f"{b / 1e9:.1f}", f"{b / ref:.2f}"]
        )
    for label, r, t in zip(labels, runners, times[2:], strict=True):
        carry_bytes = tree_bytes(r.carry)
        min_bytes = 2 * carry_bytes + tree_bytes(grads)
        achieved = min_bytes / float(np.median(t))
        rows.append(
            [
                label,
                fmt_bytes(min_bytes),
                fmt_stats(t),
                f"{achieved / 1e9:.1f}",
                f"{achieved / ref:.2f}",
            ]
        )
    rows += errors
    return [
        Section(
            title="2. Roofline (minimum bytes per step / time, as a fraction of copy bandwidth)",
            headers=[
                "kernel",
                "min bytes moved",
                "time median [min–max]",
                "GB/s (at median)",
                "fraction of copy bandwidth",
            ],
            rows=rows,
            intro=" ".join(__doc__.split("\n\n")[1].split()),
            notes=[
                f"{n / 1e6:.2f}M float32 parameters; adamw state = mu + nu (2× params) + counts; "
                "grads read once. A step that reaches 1.0 moves its minimum bytes at copy speed.",
            ],
        )
    ]


__all__ = ["run"]
