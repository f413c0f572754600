"""Suite 5: optimizer-state memory of each transform, exactly, from its state pytree.

``jax.eval_shape(tx.init, params)`` gives the state's shapes and dtypes without allocating
anything; the bytes of its array leaves are summed and divided by the parameter bytes. "alone"
is the transform's own state; "with adamw" is the whole ``optax.chain`` with
``optax.adamw(1e-3, weight_decay=0.1)`` (adamw alone is ≈ 2× params: mu and nu).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import optax

import optareg
from bench._common import Context, Section, fmt_bytes, gpt2_shapes, tree_bytes, try_build
from bench.suite_overhead import LR, baseline

_SAM_ADV = lambda: optax.chain(optax.contrib.normalize(), optax.sgd(0.05))  # noqa: E731

# (label, factory, placement relative to adamw)
ROWS: list[tuple[str, Callable[[], Any], str]] = [
    ("optax.adamw (baseline)", baseline, "alone"),
    ("add_decayed_weights(1e-4)", lambda: optareg.add_decayed_weights(1e-4), "first"),
    (
        'add_decayed_weights(1e-4, reference="init")',
        lambda: optareg.add_decayed_weights(1e-4, reference="init"),
        "first",
    ),
    ("decoupled_weight_decay(1e-4)", lambda: optareg.decoupled_weight_decay(1e-4), "last"),
    ("prox_l1", lambda: optareg.prox_l1(1e-4, LR), "last"),
    ("prox_elastic_net", lambda: optareg.prox_elastic_net(1e-4, 1e-4, LR), "last"),
    ("prox_group_lasso", lambda: optareg.prox_group_lasso(1e-4, LR), "last"),
    ("prox_nuclear", lambda: optareg.prox_nuclear(1e-4, LR), "last"),
    ("prox_adam (complete optimizer)", lambda: optareg.prox_adam(LR, 1e-4), "alone"),
    ("track()", lambda: optareg.track(), "last"),
    ("track(per_leaf=True)", lambda: optareg.track(per_leaf=True), "last"),
    ('spectral_clip("power")', lambda: optareg.spectral_clip(1.0, method="power"), "last"),
    ('spectral_clip("exact")', lambda: optareg.spectral_clip(1.0, method="exact"), "last"),
    (
        'spectral_clip("newton_schulz")',
        lambda: optareg.spectral_clip(1.0, method="newton_schulz"),
        "last",
    ),
    ("sam_perturb(reuse_every=1)", lambda: optareg.sam_perturb(0.05), "first"),
    ("sam_perturb(reuse_every=5)", lambda: optareg.sam_perturb(0.05, reuse_every=5), "first"),
    (
        "optax.contrib.sam(adamw, …, opaque)",
        lambda: optax.contrib.sam(baseline(), _SAM_ADV(), opaque_mode=True),
        "alone",
    ),
]


def _state_bytes(tx, shapes) -> int:
    return tree_bytes(jax.eval_shape(tx.init, shapes))


def run(ctx: Context) -> list[Section]:
    shapes = gpt2_shapes(ctx.size)
    pbytes = tree_bytes(shapes)
    rows: list[list[str]] = []
    for label, factory, placement in ROWS:
        ctx.log(f"[memory] {label}")

        def measure(f=factory, p=placement):
            t = f()
            alone = _state_bytes(t, shapes)
            if p == "alone":
                return alone, alone
            chain = optax.chain(t, baseline()) if p == "first" else optax.chain(baseline(), t)
            return alone, _state_bytes(chain, shapes)

        res, err = try_build(measure, ctx.log)
        if err is not None:
            rows.append([label, err, "—", "—"])
            continue
        alone, total = res
        rows.append([label, fmt_bytes(alone), f"{alone / pbytes:.4f}", f"{total / pbytes:.4f}"])
    return [
        Section(
            title="5. Optimizer-state memory (multiple of parameter bytes)",
            headers=[
                "transform",
                "state bytes (alone)",
                "× params (alone)",
                "× params (with adamw)",
            ],
            rows=rows,
            intro=" ".join(__doc__.split("\n\n")[1].split()),
            notes=[
                f"GPT-2-shaped tree, size `{ctx.size}`: {fmt_bytes(pbytes)} of float32 parameters. "
                "Exact: computed from the state pytree's shapes and dtypes, nothing allocated.",
            ],
        )
    ]


__all__ = ["ROWS", "run"]
