"""Conformance entries for the weight-decay transforms."""

import jax
import numpy as np
import optax

import optareg
from registry._entry import MASK as _MASK
from registry._entry import Entry


def _matrices(params):
    return jax.tree.map(lambda x: x.ndim > 1, params)


def _reference():
    """A fixed params-shaped reference (the structure of the suite's ``make_params``)."""
    rng = np.random.default_rng(123)
    shapes = {
        "conv": {"kernel": (3, 3, 2, 4)},
        "dense": {"bias": (4,), "kernel": (6, 4)},
        "scale": (),
    }
    return jax.tree.map(
        lambda s: np.asarray(rng.normal(size=s), np.float32),
        shapes,
        is_leaf=lambda x: isinstance(x, tuple),
    )


_LR = optax.warmup_cosine_decay_schedule(0.0, 0.1, 3, 20)

ENTRIES: list[Entry] = [
    Entry(
        "add_decayed_weights",
        optareg.add_decayed_weights,
        {"weight_decay": 1e-2},
        inject=("weight_decay",),
        position="any",
    ),
    Entry(
        "add_decayed_weights-mask",
        optareg.add_decayed_weights,
        {"weight_decay": 1e-2, "mask": _MASK},
        inject=("weight_decay",),
        position="any",
    ),
    Entry(
        "add_decayed_weights-mask_fn",
        optareg.add_decayed_weights,
        {"weight_decay": 1e-2, "mask": _matrices},
        inject=("weight_decay",),
        position="any",
    ),
    Entry(
        "add_decayed_weights-decay_mask",
        optareg.add_decayed_weights,
        {"weight_decay": 1e-2, "mask": optareg.masks.decay_mask},
        inject=("weight_decay",),
        position="any",
    ),
    Entry(
        "add_decayed_weights-schedule",
        optareg.add_decayed_weights,
        {"weight_decay": optax.linear_schedule(1e-2, 1e-3, 10)},
        position="any",
    ),
    Entry(
        "add_decayed_weights-init",
        optareg.add_decayed_weights,
        {"weight_decay": 1e-2, "reference": "init"},
        inject=("weight_decay",),
        position="any",
    ),
    Entry(
        "add_decayed_weights-reference_tree",
        optareg.add_decayed_weights,
        {"weight_decay": 1e-2, "reference": _reference()},
        inject=("weight_decay",),
        position="any",
    ),
    Entry(
        "add_decayed_weights-cautious",
        optareg.add_decayed_weights,
        {"weight_decay": 1e-2, "cautious": True},
        inject=("weight_decay",),
        position="any",
    ),
    Entry(
        "add_decayed_weights-init_cautious_mask",
        optareg.add_decayed_weights,
        {"weight_decay": 1e-2, "reference": "init", "cautious": True, "mask": _matrices},
        inject=("weight_decay",),
        position="any",
    ),
    Entry(
        "decoupled_weight_decay",
        optareg.decoupled_weight_decay,
        {"weight_decay": 1e-2},
        inject=("weight_decay",),
    ),
    Entry(
        "decoupled_weight_decay-mask",
        optareg.decoupled_weight_decay,
        {"weight_decay": 1e-2, "mask": _MASK},
        inject=("weight_decay",),
    ),
    Entry(
        "decoupled_weight_decay-decay_mask",
        optareg.decoupled_weight_decay,
        {"weight_decay": 1e-2, "mask": optareg.masks.decay_mask},
        inject=("weight_decay",),
    ),
    Entry(
        "decoupled_weight_decay-schedule_paper",
        optareg.decoupled_weight_decay,
        {"weight_decay": optareg.decay_schedule(1e-2, _LR, "paper")},
    ),
    Entry(
        "decoupled_weight_decay-schedule_adamc",
        optareg.decoupled_weight_decay,
        {"weight_decay": optareg.decay_schedule(1e-2, _LR, "adamc")},
    ),
    Entry(
        "decoupled_weight_decay-init",
        optareg.decoupled_weight_decay,
        {"weight_decay": 1e-2, "reference": "init"},
        inject=("weight_decay",),
    ),
    Entry(
        "decoupled_weight_decay-reference_tree",
        optareg.decoupled_weight_decay,
        {"weight_decay": 1e-2, "reference": _reference()},
        inject=("weight_decay",),
    ),
    Entry(
        "decoupled_weight_decay-cautious",
        optareg.decoupled_weight_decay,
        {"weight_decay": 1e-2, "cautious": True},
        inject=("weight_decay",),
    ),
    Entry(
        "decoupled_weight_decay-init_cautious_mask",
        optareg.decoupled_weight_decay,
        {"weight_decay": 1e-2, "reference": "init", "cautious": True, "mask": _matrices},
        inject=("weight_decay",),
    ),
]
