"""Conformance entries for the weight-decay transforms."""

import jax
import optax

import optareg
from registry._entry import Entry

_MASK = {"conv": {"kernel": True}, "dense": {"bias": False, "kernel": True}, "scale": False}


def _matrices(params):
    return jax.tree.map(lambda x: x.ndim > 1, params)


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
        "add_decayed_weights-schedule",
        optareg.add_decayed_weights,
        {"weight_decay": optax.linear_schedule(1e-2, 1e-3, 10)},
        position="any",
    ),
]
