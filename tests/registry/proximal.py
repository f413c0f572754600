"""Conformance entries for the proximal transforms (optareg.proximal)."""

import jax
import optax

import optareg
from registry._entry import MASK as _MASK
from registry._entry import Entry

# A mask that also selects a 1-D leaf and the scalar (group lasso then acts per entry there).
_MASK_WITH_VECTORS = {
    "conv": {"kernel": False},
    "dense": {"bias": True, "kernel": True},
    "scale": True,
}
_LR_SCHEDULE = optax.linear_schedule(0.1, 0.01, 10)
_STRENGTH_SCHEDULE = optax.linear_schedule(1.0, 0.5, 10)


def _matrices(params):
    return jax.tree.map(lambda x: x.ndim > 1, params)


ENTRIES: list[Entry] = [
    # prox_l1
    Entry(
        "prox_l1",
        optareg.prox_l1,
        {"l1": 1.0, "learning_rate": 0.1},
        inject=("l1", "learning_rate"),
    ),
    Entry(
        "prox_l1-mask",
        optareg.prox_l1,
        {"l1": 1.0, "learning_rate": 0.1, "mask": _MASK},
        inject=("l1", "learning_rate"),
    ),
    Entry("prox_l1-mask_fn", optareg.prox_l1, {"l1": 1.0, "learning_rate": 0.1, "mask": _matrices}),
    Entry(  # statistics every 3 steps behind a lax.cond; metrics_every static under injection
        "prox_l1-every3",
        optareg.prox_l1,
        {"l1": 1.0, "learning_rate": 0.1, "metrics_every": 3},
        inject=("l1", "learning_rate"),
    ),
    Entry(
        "prox_l1-schedule",
        optareg.prox_l1,
        {"l1": _STRENGTH_SCHEDULE, "learning_rate": _LR_SCHEDULE},
    ),
    # prox_elastic_net
    Entry(
        "prox_elastic_net",
        optareg.prox_elastic_net,
        {"l1": 1.0, "l2": 0.5, "learning_rate": 0.1},
        inject=("l1", "l2", "learning_rate"),
    ),
    Entry(
        "prox_elastic_net-mask",
        optareg.prox_elastic_net,
        {"l1": 1.0, "l2": 0.5, "learning_rate": 0.1, "mask": _MASK},
    ),
    Entry(
        "prox_elastic_net-schedule",
        optareg.prox_elastic_net,
        {"l1": _STRENGTH_SCHEDULE, "l2": 0.5, "learning_rate": _LR_SCHEDULE},
    ),
    # prox_group_lasso (``axis`` passed explicitly: it is static under optax.inject_hyperparams)
    Entry(
        "prox_group_lasso",
        optareg.prox_group_lasso,
        {"strength": 1.0, "learning_rate": 0.1, "axis": -1},
        inject=("strength", "learning_rate"),
    ),
    Entry(
        "prox_group_lasso-axis0",
        optareg.prox_group_lasso,
        {"strength": 1.0, "learning_rate": 0.1, "axis": 0},
        inject=("strength", "learning_rate"),
    ),
    Entry(
        "prox_group_lasso-mask",
        optareg.prox_group_lasso,
        {"strength": 1.0, "learning_rate": 0.1, "axis": -1, "mask": _MASK_WITH_VECTORS},
        inject=("strength", "learning_rate"),
    ),
    Entry(  # a stack of 3 conv layers (3, 2, 4): one group per layer and output channel
        "prox_group_lasso-stack_axes",
        optareg.prox_group_lasso,
        {"strength": 1.0, "learning_rate": 0.1, "stack_axes": {"conv": 1}},
    ),
    Entry(
        "prox_group_lasso-schedule",
        optareg.prox_group_lasso,
        {"strength": _STRENGTH_SCHEDULE, "learning_rate": _LR_SCHEDULE},
    ),
    # prox_nuclear
    Entry(
        "prox_nuclear",
        optareg.prox_nuclear,
        {"strength": 1.0, "learning_rate": 0.1},
        inject=("strength", "learning_rate"),
        atol=1e-5,
    ),
    Entry(
        "prox_nuclear-mask",
        optareg.prox_nuclear,
        {"strength": 1.0, "learning_rate": 0.1, "mask": _MASK},
        atol=1e-5,
    ),
    Entry(  # the conv kernel as 3 layers (3, 2, 4), each 3 matrices (2, 4)
        "prox_nuclear-stack_axes",
        optareg.prox_nuclear,
        {"strength": 1.0, "learning_rate": 0.1, "stack_axes": {"conv": 1}},
        atol=1e-5,
    ),
    Entry(
        "prox_nuclear-schedule",
        optareg.prox_nuclear,
        {"strength": _STRENGTH_SCHEDULE, "learning_rate": _LR_SCHEDULE},
        atol=1e-5,
    ),
    # prox_adam (a complete optimizer; the suite's chain puts a base optimizer before it)
    Entry(
        "prox_adam",
        optareg.prox_adam,
        {"learning_rate": 1e-2, "l1": 1e-3},
        inject=("learning_rate", "l1"),
    ),
    Entry(
        "prox_adam-wd",
        optareg.prox_adam,
        {"learning_rate": 1e-2, "l1": 1e-3, "weight_decay": 0.1},
        inject=("learning_rate", "l1", "weight_decay"),
    ),
    Entry("prox_adam-mask", optareg.prox_adam, {"learning_rate": 1e-2, "l1": 1e-3, "mask": _MASK}),
    Entry(
        "prox_adam-mask_fn",
        optareg.prox_adam,
        {"learning_rate": 1e-2, "l1": 1e-3, "mask": _matrices},
    ),
    Entry(
        "prox_adam-schedule",
        optareg.prox_adam,
        {
            "learning_rate": optax.linear_schedule(1e-2, 1e-3, 10),
            "l1": optax.linear_schedule(1e-3, 1e-2, 10),
        },
        skip={
            "converge": "the learning rate decays to 1e-3 within 10 steps: 400 Adam steps move "
            "a weight by at most ~0.4, short of the minimizer (the constant-lr entries converge)"
        },
    ),
]
