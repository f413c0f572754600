"""Suite 3c: the spectral control of issue 30 chained after ``optax.contrib.muon`` and after
``optax.adamw``, on the suite-3b kernels (768×3072 at size small/full), as time ratios.

One timed training step ``chain(base, method)`` against ``base`` alone (the same jitted
``lax.scan`` of steps, interleaved repetitions): ``spectral_clip(1.0, method="soft_cap")``
(four matrix products per matrix), ``spectral_hammer(1.0)`` and ``spectral_weight_decay(0.1)``
(one warm-started power iteration, i.e. two matrix-vector products, and a rank-one update per
matrix) and ``qk_clip(τ)`` (half the kernels are query projections, half key projections,
8 heads on their output axis, the logits of half the heads over τ; one multiply).
Muon's own step is dominated by its Newton–Schulz iterations, so the same absolute cost is a
smaller ratio after Muon than after AdamW.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from bench._common import (
    Context,
    Section,
    fmt_stats,
    ratios,
    time_interleaved,
    try_build,
)
from bench.suite_spectral import STEP_TREES, _step_runner

HEADS = 8


def _with_logits(tx, logits):
    """``tx`` whose ``update`` is handed fixed per-head logits (a step's forward pass would)."""

    def update_fn(updates, state, params=None, **extra):
        return tx.update(updates, state, params, max_logits=logits, **extra)

    return optax.GradientTransformationExtraArgs(tx.init, update_fn)


def _methods(count: int):
    import optareg

    half = count // 2
    query = "|".join(f"h{i}" for i in range(half))
    key = "|".join(f"h{i}" for i in range(half, count))
    over = jnp.where(jnp.arange(HEADS) % 2 == 0, 50.0, 5.0)  # τ = 10: every other head clipped
    return {
        'spectral_clip(1.0, method="soft_cap")': lambda: optareg.spectral_clip(
            1.0, method="soft_cap"
        ),
        "spectral_hammer(1.0)": lambda: optareg.spectral_hammer(1.0),
        "spectral_weight_decay(0.1)": lambda: optareg.spectral_weight_decay(0.1),
        "qk_clip(10.0)": lambda: _with_logits(
            optareg.qk_clip(10.0, query=query, key=key, qkv=None), {"": over}
        ),
    }


def _bases():
    return {
        "optax.contrib.muon(1e-3)": lambda: optax.contrib.muon(1e-3),
        "optax.adamw(1e-3, weight_decay=0.1)": lambda: optax.adamw(1e-3, weight_decay=0.1),
    }


def run(ctx: Context) -> list[Section]:
    from bench._common import random_like

    count, m, n = STEP_TREES[ctx.size]
    shapes = {f"h{i}": jax.ShapeDtypeStruct((m, n), jnp.float32) for i in range(count)}
    grads = random_like(shapes, 1, 1e-3)
    reps = ctx.reps if ctx.size == "tiny" or ctx.platform != "cpu" else min(ctx.reps, 5)
    rows = []
    for base_name, base_fn in _bases().items():
        base = _step_runner(base_fn(), shapes, grads)
        pooled = []
        for name, make in _methods(count).items():
            label = f"{base_name.split('(')[0]} + {name}"
            ctx.log(f"[spectral_control] {label}")
            runner, err = try_build(
                lambda make=make, base_fn=base_fn: _step_runner(
                    optax.chain(base_fn(), make()), shapes, grads
                ),
                ctx.log,
            )
            if err is not None:
                rows.append([label, err, err, "—"])
                continue
            t_a, t_b = time_interleaved([base, runner], reps, min(ctx.warmup, reps))
            pooled.append(t_a)
            rows.append([label, fmt_stats(t_b), fmt_stats(ratios(t_b, t_a), "ratio"), str(reps)])
            del runner
        base_t = fmt_stats(np.concatenate(pooled)) if pooled else "—"
        rows.append([f"{base_name} alone", base_t, "1 (reference)", ""])
    return [
        Section(
            title=f"3c. spectral control after muon and adamw ({count} kernels {m}×{n}, "
            f"{count * m * n / 1e6:.1f}M params)",
            headers=["step", "time median [min–max]", "ratio to the base optimizer", "reps"],
            rows=rows,
            intro=" ".join(__doc__.split("\n\n")[1].split()),
            notes=[
                "Each ratio is against its own base optimizer, re-timed beside every row; the "
                "base rows pool those repetitions.",
            ],
        )
    ]


__all__ = ["run"]
