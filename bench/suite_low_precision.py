"""Suite 6: the cost of ``low_precision_updates`` on bfloat16 parameters, as a time ratio.

A (baseline) is one jitted step of ``optax.adamw(1e-3, weight_decay=0.1)`` on a GPT-2-shaped
*bfloat16* parameter tree (Adam's moments in bfloat16 too, optax's default) with fixed bfloat16
gradients: ``updates, state = tx.update(g, state, params); params = apply_updates(params,
updates)``; B is ``optareg.chain(adamw, low_precision_updates(method))`` for ``"kahan"`` and
``"stochastic"``. Both donate params and state. A and B are interleaved and the reported ratio is
the median (min–max) of the pairwise ratios ``t_B,i / t_A,i``, the baseline re-timed beside
every row. Two context rows: ``adamw`` on float32 parameters (the float32-master-weights
alternative), and ``adamw`` plus one ``jax.random.bits(uint16)`` draw per parameter (threefry:
what drawing the stochastic bits with ``jax.random`` would cost; the transform expands one key
per leaf with a counter hash instead).
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import optareg
from bench._common import (
    Context,
    Section,
    StepRunner,
    describe_error,
    fmt_stats,
    gpt2_shapes,
    random_like,
    ratios,
    time_interleaved,
    tree_size,
    try_build,
)

LR, TARGET = 1e-3, 1.15


def adamw() -> optax.GradientTransformation:
    return optax.adamw(LR, weight_decay=0.1)


def update_step(tx: optax.GradientTransformation) -> Callable:
    def step(carry, grads):
        params, state = carry
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return step


def threefry_step(tx: optax.GradientTransformation) -> Callable:
    """adamw, plus 16 threefry bits per parameter folded into the update (times 0)."""

    def step(carry, grads):
        params, state, key = carry
        updates, state = tx.update(grads, state, params)
        key, sub = jax.random.split(key)
        leaves, treedef = jax.tree.flatten(updates)
        keys = jax.random.split(sub, len(leaves))
        leaves = [
            u + (jax.random.bits(k, u.shape, jnp.uint16).astype(jnp.float32) * 0.0).astype(u.dtype)
            for u, k in zip(leaves, keys, strict=True)
        ]
        return optax.apply_updates(params, treedef.unflatten(leaves)), state, key

    return step


def _runner(kind: str, tx: optax.GradientTransformation, shapes: Any, grads: Any) -> StepRunner:
    params = random_like(shapes, 0, 0.02)
    state = jax.jit(tx.init)(params)
    if kind == "threefry":
        return StepRunner(threefry_step(tx), (params, state, jax.random.PRNGKey(0)), (grads,))
    return StepRunner(update_step(tx), (params, state), (grads,))


# (row name, dtype of the parameters, kind of step, factory, target ratio or None)
ROWS: list[tuple[str, Any, str, Callable[[], Any], float | None]] = [
    (
        'adamw + low_precision_updates("kahan")',
        jnp.bfloat16,
        "plain",
        lambda: optareg.chain(adamw(), optareg.low_precision_updates("kahan")),
        TARGET,
    ),
    (
        'adamw + low_precision_updates("stochastic")',
        jnp.bfloat16,
        "plain",
        lambda: optareg.chain(adamw(), optareg.low_precision_updates("stochastic")),
        TARGET,
    ),
    ("adamw on float32 params (context)", jnp.float32, "plain", adamw, None),
    ("adamw + jax.random.bits per param (context)", jnp.bfloat16, "threefry", adamw, None),
]


def run(ctx: Context) -> list[Section]:
    shapes = gpt2_shapes(ctx.size, jnp.bfloat16)
    grads = random_like(shapes, 1, 1e-3)
    n = tree_size(shapes)
    ctx.log(f"[low_precision] GPT-2 tree '{ctx.size}': {n / 1e6:.2f}M bfloat16 params")
    base = _runner("plain", adamw(), shapes, grads)
    rows: list[list[str]] = []
    base_times: list[np.ndarray] = []
    for name, dtype, kind, factory, target in ROWS:
        ctx.log(f"[low_precision] {name}")
        sh = jax.tree.map(lambda s, d=dtype: jax.ShapeDtypeStruct(s.shape, d), shapes)
        g = jax.tree.map(lambda x, d=dtype: x.astype(d), grads)
        runner, err = try_build(lambda f=factory, k=kind, s=sh, g=g: _runner(k, f(), s, g), ctx.log)
        tgt = f"≤ {target:.2f}" if target else "—"
        if err is not None:
            rows.append([name, err, err, tgt, "—", "—"])
            continue
        try:
            t_a, t_b = time_interleaved([base, runner], ctx.reps, ctx.warmup)
        except Exception as e:  # noqa: BLE001 - a failing row must not stop the report
            rows.append([name, describe_error(e), describe_error(e), tgt, "—", "—"])
            continue
        base_times.append(t_a)
        r = ratios(t_b, t_a)
        med = float(np.median(r))
        ctx.log(f"[low_precision]   ratio {med:.3f}")
        met = "—" if not target else ("yes" if med <= target else "**no**")
        rows.append(
            [name, fmt_stats(t_b), fmt_stats(r, "ratio"), tgt, met, f"{runner.compile_s:.2f}"]
        )
        del runner
        gc.collect()
    all_a = np.concatenate(base_times) if base_times else None
    rows.insert(
        0,
        [
            "optax.adamw(1e-3, weight_decay=0.1), bf16 params",
            fmt_stats(all_a) if all_a is not None else "—",
            "1 (reference)",
            "—",
            "—",
            f"{base.compile_s:.2f}",
        ],
    )
    return [
        Section(
            title="6. low_precision_updates on bfloat16 parameters",
            headers=[
                "transform",
                "time per step median [min–max]",
                "ratio to adamw (bf16) median [min–max]",
                "target",
                "met",
                "compile s",
            ],
            rows=rows,
            intro=" ".join(__doc__.split("\n\n")[1].split()),
            notes=[
                f"Parameter tree: GPT-2-shaped, size `{ctx.size}`, {n / 1e6:.2f}M parameters; "
                f"{ctx.reps} timed steps per row after {ctx.warmup} warm-up steps, A/B "
                "interleaved, pairwise ratios.",
            ],
        )
    ]
