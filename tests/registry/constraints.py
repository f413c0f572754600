"""Conformance entries for the constraints and explicit penalties (optareg.constraints)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

import optareg
from optareg import penalties
from registry._entry import Entry

_MASK = {"conv": {"kernel": True}, "dense": {"bias": False, "kernel": True}, "scale": False}
# Also selects the 1-D bias and the scalar (max_norm clips them entry by entry, unit_norm: sign).
_MASK_WITH_VECTORS = {
    "conv": {"kernel": False},
    "dense": {"bias": True, "kernel": True},
    "scale": True,
}
_SCHEDULE = optax.linear_schedule(2.0, 0.5, 10)


def _matrices(params):
    return jax.tree.map(lambda x: x.ndim > 1, params)


def _l1_ball(tree):
    return optax.projections.projection_l1_ball(tree, 3.0)


def _l2_ball(x):
    return optax.projections.projection_l2_ball(x, 1.0)


# The conformance tree's shapes (tests/helpers.py make_params), for l2_to's reference.
_REFERENCE = {
    "conv": {"kernel": jnp.full((3, 3, 2, 4), 0.5)},
    "dense": {"bias": jnp.zeros(4), "kernel": jnp.asarray(np.eye(6, 4))},
    "scale": jnp.ones(()),
}


ENTRIES: list[Entry] = [
    # max_norm
    # (metrics_every listed: `optax.inject_hyperparams` would otherwise inject its default)
    Entry(
        "max_norm",
        optareg.max_norm,
        {"max_value": 1.0, "metrics_every": 1},
        inject=("max_value",),
    ),
    Entry("max_norm-torch", optareg.max_norm, {"max_value": 1.0, "layout": "torch"}),
    Entry("max_norm-axis0", optareg.max_norm, {"max_value": 1.0, "axis": 0}),
    Entry(
        "max_norm-mask",
        optareg.max_norm,
        {"max_value": 0.5, "mask": _MASK_WITH_VECTORS, "metrics_every": 1},
        inject=("max_value",),
    ),
    Entry("max_norm-mask_fn", optareg.max_norm, {"max_value": 1.0, "mask": _matrices}),
    Entry("max_norm-schedule", optareg.max_norm, {"max_value": _SCHEDULE}),
    Entry("max_norm-every3", optareg.max_norm, {"max_value": 1.0, "metrics_every": 3}),
    Entry(  # the conv kernel as 3 layers of (3, 2, 4); the bias as 4 layers: entry by entry
        "max_norm-stack_axes",
        optareg.max_norm,
        {
            "max_value": 1.0,
            "stack_axes": {"conv": 1, "dense": 1},
            "mask": {
                "conv": {"kernel": True},
                "dense": {"bias": True, "kernel": False},
                "scale": False,
            },
        },
    ),
    # min_max_norm
    Entry(
        "min_max_norm",
        optareg.min_max_norm,
        {"min_value": 0.5, "max_value": 1.0, "rate": 1.0, "metrics_every": 1},
        inject=("min_value", "max_value", "rate"),
    ),
    Entry("min_max_norm-rate", optareg.min_max_norm, {"min_value": 0.2, "rate": 0.5}),
    Entry(
        "min_max_norm-mask",
        optareg.min_max_norm,
        {"min_value": 0.25, "max_value": 0.5, "mask": _MASK_WITH_VECTORS, "layout": "torch"},
    ),
    Entry("min_max_norm-schedule", optareg.min_max_norm, {"max_value": _SCHEDULE}),
    # unit_norm
    Entry("unit_norm", optareg.unit_norm),
    Entry("unit_norm-axis0", optareg.unit_norm, {"axis": 0}),  # the torch layout's unit axis
    Entry("unit_norm-mask", optareg.unit_norm, {"mask": _MASK_WITH_VECTORS}),
    Entry("unit_norm-stack_axes", optareg.unit_norm, {"stack_axes": {"conv": 2}}),
    # non_neg
    Entry("non_neg", optareg.non_neg),
    Entry("non_neg-mask", optareg.non_neg, {"mask": _MASK}),
    # project: the whole tree at once, and leaf by leaf
    Entry("project", optareg.project, {"projection": _l1_ball}),
    Entry("project-mask", optareg.project, {"projection": _l1_ball, "mask": _MASK_WITH_VECTORS}),
    Entry("project-per_leaf", optareg.project, {"projection": _l2_ball, "per_leaf": True}),
    Entry("project-every2", optareg.project, {"projection": _l1_ball, "metrics_every": 2}),
    # add_penalty (gradient-side: any position before the learning rate). The suite also applies
    # it alone, i.e. as gradient *ascent* on R: the quartic orthogonality gets a small strength.
    Entry(
        "add_penalty",
        optareg.add_penalty,
        {"penalty": penalties.l2, "strength": 0.1},
        inject=("strength",),
        position="any",
    ),
    Entry(
        "add_penalty-l1",
        optareg.add_penalty,
        {"penalty": penalties.l1, "strength": 0.1},
        inject=("strength",),
        position="any",
    ),
    Entry(
        "add_penalty-orthogonality",
        optareg.add_penalty,
        {"penalty": penalties.orthogonality, "strength": 1e-4},
        inject=("strength",),
        position="any",
        atol=1e-5,
    ),
    Entry(
        "add_penalty-l2_to",
        optareg.add_penalty,
        {"penalty": penalties.l2_to(_REFERENCE), "strength": 0.1},
        position="any",
    ),
    Entry(
        "add_penalty-mask",
        optareg.add_penalty,
        {"penalty": penalties.orthogonality(layout="torch"), "strength": 1e-4, "mask": _MASK},
        position="any",
        atol=1e-5,
    ),
    Entry(
        "add_penalty-schedule",
        optareg.add_penalty,
        {"penalty": penalties.l2, "strength": optax.linear_schedule(0.1, 0.0, 10)},
        position="any",
    ),
]
