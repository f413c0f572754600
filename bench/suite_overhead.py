"""Suite 1: the cost of each optareg transform chained to ``optax.adamw``, as a time ratio.

A (baseline) is one jitted training-step update ``optax.adamw(1e-3, weight_decay=0.1)`` on a
GPT-2-shaped float32 parameter tree with fixed gradients: ``updates, state = tx.update(g, state,
params); params = optax.apply_updates(params, updates)``; B is the same step with one optareg
transform chained in its natural place (gradient-side first, post-step and ``track`` last). Both
donate params and optimizer state, so both update in place. A and B are interleaved and the
reported ratio is the median (min–max) of the pairwise ratios ``t_B,i / t_A,i``; the baseline is
re-timed beside every row.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Callable
from typing import Any

import jax
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

LR = 1e-3


def baseline() -> optax.GradientTransformation:
    return optax.adamw(LR, weight_decay=0.1)


# (row name, placement, factory of the *optareg* transform, target ratio or None)
TRANSFORMS: list[tuple[str, str, Callable[[], Any], float | None]] = [
    (
        "add_decayed_weights(0.1) inside adamw",
        "inside",
        lambda: optareg.add_decayed_weights(0.1),
        1.05,
    ),
    ("add_decayed_weights(1e-4)", "first", lambda: optareg.add_decayed_weights(1e-4), None),
    ("decoupled_weight_decay(1e-4)", "last", lambda: optareg.decoupled_weight_decay(1e-4), 1.05),
    ("prox_l1(1e-4, lr)", "last", lambda: optareg.prox_l1(1e-4, LR), 1.05),
    (
        "prox_l1(1e-4, lr, metrics_every=10)",
        "last",
        lambda: optareg.prox_l1(1e-4, LR, metrics_every=10),
        1.03,
    ),
    ("prox_group_lasso(1e-4, lr)", "last", lambda: optareg.prox_group_lasso(1e-4, LR), 1.15),
    ("track()", "last", lambda: optareg.track(), 1.15),
    ("track() first", "first", lambda: optareg.track(), 1.15),
    ("track(metrics_every=10)", "last", lambda: optareg.track(metrics_every=10), 1.05),
    ("track(metrics_every=10) first", "first", lambda: optareg.track(metrics_every=10), 1.05),
    # one read of the average and one write per step (+ θ + u, fused): ~1.2x is its byte floor
    ("ema_params()", "last", lambda: optareg.ema_params(), None),
    ("ema_params(metrics_every=10)", "last", lambda: optareg.ema_params(metrics_every=10), None),
    (
        'spectral_clip(1.0, "power")',
        "last",
        lambda: optareg.spectral_clip(1.0, method="power"),
        1.30,
    ),
    (
        'spectral_clip(1.0, "exact")',
        "last",
        lambda: optareg.spectral_clip(1.0, method="exact"),
        None,
    ),
    (
        'spectral_clip(1.0, "newton_schulz")',
        "last",
        lambda: optareg.spectral_clip(1.0, method="newton_schulz"),
        None,
    ),
]


def chained(placement: str, t: optax.GradientTransformation) -> optax.GradientTransformation:
    """``first``: before adamw; ``last``: after it; ``inside``: in place of adamw's own decay."""
    if placement == "inside":  # adamw rebuilt with optareg's decay instead of optax's
        return optax.chain(optax.scale_by_adam(), t, optax.scale_by_learning_rate(LR))
    return optax.chain(t, baseline()) if placement == "first" else optax.chain(baseline(), t)


def update_step(tx: optax.GradientTransformation):
    """``(params, state), grads -> (params, state)``: one optimizer step."""

    def step(carry, grads):
        params, state = carry
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return step


def make_runner(tx: optax.GradientTransformation, shapes: Any, grads: Any) -> StepRunner:
    """A donated, compiled step of ``tx`` on its own fresh copy of the parameters (seed 0)."""
    params = random_like(shapes, 0, 0.02)
    state = jax.jit(tx.init)(params)
    return StepRunner(update_step(tx), (params, state), (grads,))


def problem(ctx: Context) -> tuple[Any, Any]:
    """The GPT-2-shaped tree's shapes and fixed gradients (N(0, 1e-3²)); cached in ``ctx``.

    Every runner draws its own parameters (N(0, 0.02²), seed 0) so that none shares a buffer.
    """
    if "problem" not in ctx.cache:
        shapes = gpt2_shapes(ctx.size)
        ctx.cache["problem"] = (shapes, random_like(shapes, 1, 1e-3))
    return ctx.cache["problem"]


def cached_runner(ctx: Context, key: str, factory: Callable[[], optax.GradientTransformation]):
    """``make_runner`` for ``factory()``, kept in ``ctx.cache[key]`` for the other suites."""
    if key not in ctx.cache:
        shapes, grads = problem(ctx)
        ctx.cache[key] = make_runner(factory(), shapes, grads)
    return ctx.cache[key]


def prox_l1_chain() -> optax.GradientTransformation:
    return optax.chain(baseline(), optareg.prox_l1(1e-4, LR))


def _dump(ctx: Context, name: str, runner: StepRunner) -> None:
    if not ctx.dump_hlo:
        return
    os.makedirs(ctx.dump_hlo, exist_ok=True)
    safe = "".join(c if c.isalnum() else "_" for c in name).strip("_")
    with open(os.path.join(ctx.dump_hlo, f"overhead_{safe}.hlo.txt"), "w") as f:
        f.write(runner.hlo_text())


def run(ctx: Context) -> list[Section]:
    shapes, grads = problem(ctx)
    n = tree_size(shapes)
    ctx.log(f"[overhead] GPT-2 tree '{ctx.size}': {n / 1e6:.2f}M params")
    base = cached_runner(ctx, "runner/adamw", baseline)
    _dump(ctx, "adamw", base)
    rows: list[list[str]] = []
    base_times: list[np.ndarray] = []
    misses: list[str] = []
    for name, placement, factory, target in TRANSFORMS:
        ctx.log(f"[overhead] {name}")
        if name == "prox_l1(1e-4, lr)":  # the roofline suite times this chain too
            build = lambda: cached_runner(ctx, "runner/prox_l1", prox_l1_chain)  # noqa: E731
        else:
            build = lambda f=factory, p=placement: make_runner(chained(p, f()), shapes, grads)  # noqa: E731
        runner, err = try_build(build, ctx.log)
        tgt = f"≤ {target:.2f}" if target else "—"
        if ctx.excluded(name):
            rows.append([name, placement, "skipped (--exclude)", "—", tgt, "—", "—"])
            continue
        if err is not None:
            rows.append([name, placement, err, err, tgt, "—", "—"])
            continue
        _dump(ctx, name, runner)
        try:
            t_a, t_b = time_interleaved([base, runner], ctx.reps, ctx.warmup)
        except Exception as e:  # noqa: BLE001
            cell = describe_error(e)
            rows.append([name, placement, cell, cell, tgt, "—", "—"])
            continue
        base_times.append(t_a)
        r = ratios(t_b, t_a)
        med = float(np.median(r))
        ctx.log(f"[overhead]   ratio {med:.3f} (compile {runner.compile_s:.1f} s)")
        met = "—"
        if target:
            met = "yes" if med <= target else f"**no** (+{(med - target) * 100:.1f} pts)"
            if med > target:
                misses.append(name)
        rows.append(
            [
                name,
                placement,
                fmt_stats(t_b),
                fmt_stats(r, "ratio"),
                tgt,
                met,
                f"{runner.compile_s:.2f}",
            ]
        )
        del runner
        gc.collect()
    if base_times:
        all_a = np.concatenate(base_times)
        base_row = ["optax.adamw(1e-3, weight_decay=0.1)", "baseline", fmt_stats(all_a)]
    else:
        base_row = ["optax.adamw(1e-3, weight_decay=0.1)", "baseline", "—"]
    base_row += ["1 (reference)", "—", "—", f"{base.compile_s:.2f}"]
    rows.insert(0, base_row)
    notes = [
        f"Parameter tree: GPT-2-shaped, size `{ctx.size}`, {n / 1e6:.2f}M float32 parameters; "
        f"{ctx.reps} timed steps per row after {ctx.warmup} warm-up steps, A/B interleaved.",
        "Placement: `first` = `optax.chain(T, adamw)` (gradient-side: an L2 penalty fed "
        "through Adam), `last` = `optax.chain(adamw, T)` (post-step / diagnostics), `inside` = "
        "adamw rebuilt as `optax.chain(optax.scale_by_adam(), T, optax.scale_by_learning_rate(1e-3))` "
        "with `T = optareg.add_decayed_weights(0.1)` in place of optax's decay (same update as the "
        "baseline: the drop-in comparison).",
        "Baseline time: all baseline repetitions pooled (it is re-timed beside every row).",
    ]
    if misses:
        notes.append("Targets missed: " + ", ".join(misses) + " — see the analysis section.")
    return [
        Section(
            title="1. Overhead over optax (time ratio to `optax.adamw`)",
            headers=[
                "transform",
                "placement",
                "step time median [min–max]",
                "ratio to adamw median [min–max]",
                "target (CPU)",
                "met",
                "compile s",
            ],
            rows=rows,
            intro=__doc__.split("\n\n")[1].replace("\n", " "),
            notes=notes,
        )
    ]


__all__ = ["TRANSFORMS", "baseline", "cached_runner", "chained", "make_runner", "problem", "run"]
