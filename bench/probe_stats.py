"""Profile of the suite-1 misses: what the per-step statistics cost on XLA:CPU.

Times, interleaved, ``optax.adamw`` alone and chained with: ``prox_l1`` as shipped; the same
operator through ``optareg._poststep.transformation`` *without* its ``zeros_fraction``
statistic; ``track()``; ``decoupled_weight_decay``. Prints the number of XLA fusions and
``reduce-window`` ops of each compiled step (XLA:CPU rewrites every large reduction into a tree
of ``reduce-window`` passes) and the pairwise time ratios to adamw.

    python -m bench.probe_stats --size small --reps 20
"""

from __future__ import annotations

import argparse

import jax.numpy as jnp
import optax

import optareg
from bench import suite_overhead as so
from bench._common import Context, fmt_stats, markdown_table, ratios, time_interleaved
from optareg import _poststep
from optareg.operators import soft_threshold


def prox_l1_without_stats() -> optax.GradientTransformation:
    return _poststep.transformation(
        lambda leaf, l1, learning_rate: soft_threshold(
            leaf.x, jnp.asarray(l1 * learning_rate, leaf.x.dtype)
        ),
        name="prox_l1",
        hyperparams={"l1": 1e-4, "learning_rate": so.LR},
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.probe_stats")
    p.add_argument("--size", choices=("tiny", "small", "full"), default="small")
    p.add_argument("--reps", type=int, default=20)
    args = p.parse_args(argv)
    ctx = Context(size=args.size, reps=args.reps)
    shapes, grads = so.problem(ctx)
    cands = {
        "adamw": so.baseline(),
        "adamw + prox_l1 (as shipped)": optax.chain(so.baseline(), optareg.prox_l1(1e-4, so.LR)),
        "adamw + prox_l1 without zeros_fraction": optax.chain(
            so.baseline(), prox_l1_without_stats()
        ),
        "adamw + track()": optax.chain(so.baseline(), optareg.track()),
        "adamw + decoupled_weight_decay": optax.chain(
            so.baseline(), optareg.decoupled_weight_decay(1e-4)
        ),
    }
    runners = {k: so.make_runner(tx, shapes, grads) for k, tx in cands.items()}
    times = time_interleaved(list(runners.values()), args.reps, 2)
    rows = []
    for (k, r), t in zip(runners.items(), times, strict=True):
        hlo = r.hlo_text()
        rows.append(
            [
                k,
                str(hlo.count(" fusion(")),
                str(hlo.count("reduce-window(")),
                fmt_stats(t),
                fmt_stats(ratios(t, times[0]), "ratio"),
            ]
        )
    headers = [
        "step",
        "XLA fusions",
        "reduce-window ops",
        "time median [min–max]",
        "ratio to adamw",
    ]
    print(markdown_table(headers, rows))
    print(f"\nsize {args.size}, {args.reps} reps")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
