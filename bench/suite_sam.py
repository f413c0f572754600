"""Suite 4: the real cost of SAM — one full training step, SGD vs SAM variants.

One jitted training step (gradient of a softmax cross-entropy MLP loss on a fixed batch, optimizer
update, ``optax.apply_updates``), parameters and optimizer state donated, for:
plain ``optax.sgd``; ``optax.chain(optareg.sam_perturb(0.05, reuse_every=k), optax.sgd)`` with
``k = 1`` and ``k = 5`` (the base gradient is passed as ``updates`` and ``grad_fn`` closes over
the batch); ``optax.contrib.sam(sgd, chain(normalize(), sgd(ρ)), opaque_mode=True)`` (sync
period 2: one adversarial gradient inside ``update``). Each timed repetition runs 5 consecutive
steps (a whole ``reuse_every=5`` cycle) and reports the time per step; ratios to SGD are pairwise.
Gradient evaluations per step are *counted*, not assumed: every gradient call carries a
``jax.debug.callback`` counter, read after 10 untimed steps of a separate jitted copy.
"""

from __future__ import annotations

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
    fmt_stats,
    ratios,
    time_interleaved,
    tree_size,
    try_build,
)

LR, RHO, INNER, COUNT_STEPS = 0.1, 0.05, 5, 10

# (label, input dim, hidden widths, classes, batch)
MODELS = {
    "tiny": [("digits-sized MLP", 64, (32,), 10, 32), ("mid-size MLP", 128, (64, 64), 10, 32)],
    "small": [
        ("digits-sized MLP", 64, (128,), 10, 128),
        ("mid-size MLP", 784, (1024, 1024), 10, 256),
    ],
    "full": [
        ("digits-sized MLP", 64, (128,), 10, 128),
        ("mid-size MLP", 784, (1024, 1024), 10, 256),
    ],
}


def init_mlp(key, d_in: int, hidden: tuple[int, ...], d_out: int) -> list[dict[str, jax.Array]]:
    dims = (d_in, *hidden, d_out)
    keys = jax.random.split(key, len(dims) - 1)
    return [
        {
            "w": jax.random.normal(k, (a, b), jnp.float32) / np.sqrt(a),
            "b": jnp.zeros((b,), jnp.float32),
        }
        for k, a, b in zip(keys, dims[:-1], dims[1:], strict=True)
    ]


def loss_fn(params, x, y):
    h = x
    for layer in params[:-1]:
        h = jax.nn.relu(h @ layer["w"] + layer["b"])
    logits = h @ params[-1]["w"] + params[-1]["b"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def _counted_grad(counter: list[int] | None) -> Callable:
    def grad(params, x, y):
        if counter is not None:
            jax.debug.callback(lambda: counter.__setitem__(0, counter[0] + 1))
        return jax.grad(loss_fn)(params, x, y)

    return grad


def variants() -> list[tuple[str, Callable[[], Any], str]]:
    """(label, optimizer factory, how its update is called)."""
    return [
        ("optax.sgd", lambda: optax.sgd(LR), "plain"),
        (
            "sam_perturb(reuse_every=1) + sgd",
            lambda: optax.chain(optareg.sam_perturb(RHO), optax.sgd(LR)),
            "grad_fn",
        ),
        (
            "sam_perturb(reuse_every=5) + sgd",
            lambda: optax.chain(optareg.sam_perturb(RHO, reuse_every=5), optax.sgd(LR)),
            "grad_fn",
        ),
        (
            "optax.contrib.sam (opaque)",
            lambda: optax.contrib.sam(
                optax.sgd(LR),
                optax.chain(optax.contrib.normalize(), optax.sgd(RHO)),
                opaque_mode=True,
            ),
            "grad_fn_i",
        ),
    ]


def train_step(tx, mode: str, counter: list[int] | None = None):
    grad = _counted_grad(counter)

    def step(carry, x, y):
        params, state = carry
        g = grad(params, x, y)
        if mode == "plain":
            updates, state = tx.update(g, state, params)
        elif mode == "grad_fn":
            updates, state = tx.update(g, state, params, grad_fn=lambda p: grad(p, x, y))
        else:
            updates, state = tx.update(g, state, params, grad_fn=lambda p, i: grad(p, x, y))
        return optax.apply_updates(params, updates), state

    return step


def _runner(factory, mode, params0, x, y, counter=None) -> StepRunner:
    tx = factory()
    params = jax.tree.map(lambda a: jnp.array(a, copy=True), params0)
    return StepRunner(train_step(tx, mode, counter), (params, tx.init(params)), (x, y))


def _count(factory, mode, params0, x, y) -> float:
    counter = [0]
    r = _runner(factory, mode, params0, x, y, counter)
    for _ in range(COUNT_STEPS):
        r()
    jax.effects_barrier()
    return counter[0] / COUNT_STEPS


def run(ctx: Context) -> list[Section]:
    rows: list[list[str]] = []
    for label, d_in, hidden, d_out, batch in MODELS[ctx.size]:
        kp, kx, ky = jax.random.split(jax.random.key(0), 3)
        params0 = init_mlp(kp, d_in, hidden, d_out)
        x = jax.random.normal(kx, (batch, d_in), jnp.float32)
        y = jax.random.randint(ky, (batch,), 0, d_out)
        model = f"{label} {d_in}-{'-'.join(map(str, hidden))}-{d_out}, batch {batch} ({tree_size(params0) / 1e6:.2g}M params)"
        ctx.log(f"[sam] {model}")
        # At size "tiny" (the smoke test) the timed runner also counts, to save compilations.
        counting_in_timed = ctx.size == "tiny"
        built, names, counters = [], [], []
        for name, factory, mode in variants():
            counter = [0] if counting_in_timed else None
            r, err = try_build(
                lambda f=factory, m=mode, c=counter: _runner(f, m, params0, x, y, c), ctx.log
            )
            if err is not None:
                rows.append([model, name, err, "—", "—"])
                continue
            evals = None
            if not counting_in_timed:
                n_eval, err = try_build(
                    lambda f=factory, m=mode: _count(f, m, params0, x, y), ctx.log
                )
                evals = err if err else f"{n_eval:.2f}"
            built.append(r)
            names.append(name)
            counters.append((counter, evals))
        if not built:
            continue
        times = time_interleaved(built, ctx.reps, ctx.warmup * INNER, inner=INNER)
        jax.effects_barrier()
        sgd_t = times[0] if names[0] == "optax.sgd" else None
        for name, r, (counter, evals), t in zip(names, built, counters, times, strict=True):
            if evals is None:
                evals = f"{counter[0] / r.calls:.2f}"
            if t is sgd_t:
                ratio = "1 (reference)"
            else:
                ratio = fmt_stats(ratios(t, sgd_t), "ratio") if sgd_t is not None else "—"
            rows.append([model, name, fmt_stats(t), ratio, evals])
    return [
        Section(
            title="4. SAM: one training step",
            headers=[
                "model",
                "optimizer",
                "time per step median [min–max]",
                "ratio to SGD",
                "gradient evaluations / step",
            ],
            rows=rows,
            intro=" ".join(__doc__.split("\n\n")[1].split()),
            notes=[
                f"ρ = {RHO}, learning rate {LR}; {ctx.reps} timed repetitions of {INNER} steps "
                f"each after {ctx.warmup * INNER} warm-up steps; evaluations counted over "
                f"{COUNT_STEPS} steps"
                + (" (size tiny: counted during the timed steps)." if ctx.size == "tiny" else "."),
            ],
        )
    ]


__all__ = ["run"]
