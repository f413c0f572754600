"""Argument validation, table-driven: every public constructor rejects bad arguments early.

One row per (constructor, argument, bad value). Each row must raise ``ValueError`` or
``TypeError`` at construction — or, for what can only be checked against the params (a mask whose
tree structure does not match), at ``init`` — with a message that names the argument (in
backticks, as ``_base.check_*`` writes it) and says what is allowed.

A schedule is checked at construction by evaluating it at step 0 (``_base.check_scalar``); its
values at later steps are the schedule's responsibility (it cannot be checked earlier without
running it over the whole horizon).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optareg
from optareg import masks, operators

NAN, INF = math.nan, math.inf

# Words that say what is allowed (every message must contain at least one).
_ALLOWED = re.compile(r"must|one of|allowed|expects|needs|valid|pass |>=|<=|> |< ", re.IGNORECASE)


def _params():
    return {
        "conv": {"kernel": jnp.ones((3, 3, 2, 4))},
        "dense": {"bias": jnp.ones(4), "kernel": jnp.ones((6, 4))},
        "scale": jnp.ones(()),
    }


# A pytree mask whose structure is not a prefix of ``_params()`` (unknown / missing keys).
_BAD_MASK = {"encoder": {"kernel": True}, "head": False}


@dataclasses.dataclass(frozen=True)
class Row:
    """One bad call: ``factory(*args, **kwargs)``, then ``init(_params())`` when ``at_init``."""

    name: str  # constructor name (test id)
    factory: Callable[..., Any]
    kwargs: dict
    arg: str  # the argument the message must name
    args: tuple = ()
    at_init: bool = False
    xfail: str | None = None  # reason, when the current code accepts the bad value

    @property
    def id(self) -> str:
        bad = self.kwargs.get(self.arg, self.args[-1] if self.args else "?")
        label = getattr(bad, "__name__", None) or repr(bad)
        return f"{self.name}-{self.arg}={label[:24]}"


def _strength_rows(name, factory, base: dict, arg: str, *, positive=False, upper=None):
    """Negative, NaN, +inf, -inf and wrong-type values of a real hyperparameter."""
    bads: list[Any] = [-1.0, NAN, INF, -INF, "0.1", None, True]
    if positive:
        bads += [0.0]
    if upper is not None:
        bads += [upper * 1.5]
    return [Row(name, factory, {**base, arg: b}, arg) for b in bads]


def _bad_schedule(count):
    return -0.5 + 0.0 * count  # negative at step 0


def _nan_schedule(count):
    return jnp.nan + 0.0 * count


ROWS: list[Row] = []

# --- weight decay -----------------------------------------------------------------------------
for _name, _f, _upper in (
    ("add_decayed_weights", optareg.add_decayed_weights, None),
    ("decoupled_weight_decay", optareg.decoupled_weight_decay, 1.0),
):
    ROWS += _strength_rows(_name, _f, {}, "weight_decay", upper=_upper)
    ROWS += [
        Row(_name, _f, {"weight_decay": _bad_schedule}, "weight_decay"),
        Row(_name, _f, {"weight_decay": _nan_schedule}, "weight_decay"),
        Row(_name, _f, {"weight_decay": 0.1, "mask": {"a": 3}}, "mask"),
        Row(_name, _f, {"weight_decay": 0.1, "mask": _BAD_MASK}, "mask", at_init=True),
        Row(_name, _f, {"weight_decay": 0.1, "reference": "zero"}, "reference"),
        Row(_name, _f, {"weight_decay": 0.1, "reference": {}}, "reference"),
        Row(
            _name,
            _f,
            {"weight_decay": 0.1, "reference": {"a": jnp.ones(2)}},
            "reference",
            at_init=True,
        ),
        Row(_name, _f, {"weight_decay": 0.1, "cautious": "yes"}, "cautious"),
    ]

_LR = optax.cosine_decay_schedule(1e-3, 100)
_DS = optareg.decay_schedule
ROWS += _strength_rows(
    "decay_schedule", _DS, {"learning_rate": 1e-3, "convention": "paper"}, "weight_decay"
)
ROWS += _strength_rows(
    "decay_schedule", _DS, {"weight_decay": 0.1, "convention": "pytorch"}, "learning_rate"
)
ROWS += (
    [
        Row(
            "decay_schedule",
            _DS,
            {"weight_decay": 0.1, "learning_rate": _LR, "convention": c},
            "convention",
        )
        for c in ("torch", "PAPER", "", None, 3)
    ]
    + [
        Row(
            "decay_schedule",
            _DS,
            {"weight_decay": 0.1, "learning_rate": _LR, "convention": "paper", "horizon": h},
            "horizon",
        )
        for h in (0, -5, 2.5, "10")
    ]
    + [
        Row(
            "decay_schedule",
            _DS,
            {"weight_decay": 0.1, "learning_rate": _LR, "convention": "adamc", "peak_value": v},
            "peak_value",
        )
        for v in (0.0, -1.0, NAN, INF)
    ]
)

# --- masks ------------------------------------------------------------------------------------
_P = _params()
ROWS += [
    Row("decay_mask", masks.decay_mask, {"exclude": [1]}, "exclude", args=(_P,)),
    Row("decay_mask", masks.decay_mask, {"exclude": [""]}, "exclude", args=(_P,)),
    Row("decay_mask", masks.decay_mask, {"min_ndim": -1}, "min_ndim", args=(_P,)),
    Row("decay_mask", masks.decay_mask, {"min_ndim": 1.5}, "min_ndim", args=(_P,)),
    Row("decay_mask", masks.decay_mask, {"min_ndim": "2"}, "min_ndim", args=(_P,)),
    Row("decay_mask", masks.decay_mask, {"stacked": "("}, "stacked", args=(_P,)),
    Row("decay_mask", masks.decay_mask, {"stacked": [3]}, "stacked", args=(_P,)),
    Row("decay_mask", masks.decay_mask, {"stacked": []}, "stacked", args=(_P,)),
    Row("by_path", masks.by_path, {"pattern": "("}, "pattern"),
    Row("by_path", masks.by_path, {"pattern": []}, "pattern"),
    Row("by_path", masks.by_path, {"pattern": [b"x"]}, "pattern"),
]

# --- proximal ---------------------------------------------------------------------------------
_PROX = (
    ("prox_l1", optareg.prox_l1, {"l1": 0.1, "learning_rate": 0.1}, ("l1",)),
    (
        "prox_elastic_net",
        optareg.prox_elastic_net,
        {"l1": 0.1, "l2": 0.1, "learning_rate": 0.1},
        ("l1", "l2"),
    ),
    (
        "prox_group_lasso",
        optareg.prox_group_lasso,
        {"strength": 0.1, "learning_rate": 0.1},
        ("strength",),
    ),
    ("prox_nuclear", optareg.prox_nuclear, {"strength": 0.1, "learning_rate": 0.1}, ("strength",)),
    ("prox_adam", optareg.prox_adam, {"learning_rate": 0.1, "l1": 0.1}, ("l1", "weight_decay")),
)
for _name, _f, _ok, _strengths in _PROX:
    for _s in _strengths:
        ROWS += _strength_rows(_name, _f, _ok, _s)
    ROWS += _strength_rows(_name, _f, _ok, "learning_rate", positive=True)
    ROWS += [
        Row(_name, _f, {**_ok, "learning_rate": _bad_schedule}, "learning_rate"),
        Row(_name, _f, {**_ok, "mask": {"a": "yes"}}, "mask"),
        Row(_name, _f, {**_ok, "mask": _BAD_MASK}, "mask", at_init=True),
    ]
_GL = {"strength": 0.1, "learning_rate": 0.1}
ROWS += [
    Row("prox_group_lasso", optareg.prox_group_lasso, {**_GL, "axis": a}, "axis")
    for a in (1.5, "0", True)  # None is the default: the unit axis from `layout`
]
_PA = {"learning_rate": 0.1, "l1": 0.1}
ROWS += [
    Row("prox_adam", optareg.prox_adam, {**_PA, arg: v}, arg)
    for arg, vals in (
        ("b1", (-0.1, 1.0, 1.5, NAN, _bad_schedule)),
        ("b2", (-0.1, 1.0, NAN, INF)),
        ("eps", (-1e-8, NAN, INF, "1e-8")),
    )
    for v in vals
]

# --- sam --------------------------------------------------------------------------------------
_SAM = optareg.sam_perturb
for _a in ("rho", "adaptive_eta", "gsam_alpha", "reuse_alpha", "eps"):
    ROWS += _strength_rows("sam_perturb", _SAM, {}, _a)
ROWS += [
    Row("sam_perturb", _SAM, {"rho": _bad_schedule}, "rho"),
    *[Row("sam_perturb", _SAM, {"reuse_every": k}, "reuse_every") for k in (0, -1, 1.5, "2", None)],
    *[Row("sam_perturb", _SAM, {"norm": n}, "norm") for n in ("l1", "L2", "inf", None)],
    Row("sam_perturb", _SAM, {"adaptive": "yes"}, "adaptive"),
    Row("sam_perturb", _SAM, {"adaptive": 1}, "adaptive"),
    Row("sam_perturb", _SAM, {"axis_name": 3}, "axis_name"),
    Row("sam_perturb", _SAM, {"axis_name": ()}, "axis_name"),
    Row("sam_perturb", _SAM, {"mask": {"a": 1.0}}, "mask"),
    Row("sam_perturb", _SAM, {"mask": _BAD_MASK}, "mask", at_init=True),
]

# --- spectral ---------------------------------------------------------------------------------
_SC = optareg.spectral_clip
ROWS += _strength_rows("spectral_clip", _SC, {}, "max_norm", positive=True)
ROWS += [
    Row("spectral_clip", _SC, {"max_norm": _bad_schedule}, "max_norm"),
    *[Row("spectral_clip", _SC, {"method": m}, "method") for m in ("svd", "Power", "", None)],
    *[Row("spectral_clip", _SC, {"num_iters": k}, "num_iters") for k in (0, -1, 1.5, "1")],
    *[Row("spectral_clip", _SC, {"init_iters": k}, "init_iters") for k in (-1, 2.0)],
    *[Row("spectral_clip", _SC, {"ns_steps": k}, "ns_steps") for k in (0, -3, 8.0)],
    Row("spectral_clip", _SC, {"matrix_axes": -1}, "matrix_axes"),
    Row("spectral_clip", _SC, {"matrix_axes": "rows"}, "matrix_axes"),
    Row("spectral_clip", _SC, {"matrix_axes": {"conv": 3}}, "matrix_axes", at_init=True),
    Row("spectral_clip", _SC, {"matrix_axes": {"x": {"y": 0}}}, "matrix_axes", at_init=True),
    Row("spectral_clip", _SC, {"mask": {"a": 0}}, "mask"),
    Row("spectral_clip", _SC, {"mask": _BAD_MASK}, "mask", at_init=True),
    Row("spectral_norms", optareg.spectral_norms, {"matrix_axes": -2}, "matrix_axes", args=(_P,)),
    Row("spectral_norms", optareg.spectral_norms, {"matrix_axes": 2.5}, "matrix_axes", args=(_P,)),
]

# --- diagnostics and early stopping -----------------------------------------------------------
ROWS += [
    Row("track", optareg.track, {"per_leaf": "yes"}, "per_leaf"),
    Row("track", optareg.track, {"per_leaf": 1}, "per_leaf"),
    Row("track", optareg.track, {"name": ""}, "name"),
    Row("track", optareg.track, {"name": 3}, "name"),
]
_ES = optareg.early_stopping
ROWS += [
    *[Row("early_stopping", _ES, {"patience": p}, "patience") for p in (-1, 2.5, "3", None)],
    *[
        Row("early_stopping", _ES, {"patience": 3, "min_delta": v}, "min_delta")
        for v in (NAN, INF, "0")
    ],
    *[
        Row("early_stopping", _ES, {"patience": 3, "mode": m}, "mode")
        for m in ("auto", "up", "MIN", None)
    ],
    *[
        Row("early_stopping", _ES, {"patience": 3, "baseline": v}, "baseline")
        for v in (NAN, -INF, "1")
    ],
    *[
        Row("early_stopping", _ES, {"patience": 3, "start_from_step": v}, "start_from_step")
        for v in (-1, 0.5)
    ],
]

# --- metrics_every and layout (every transform that records statistics / knows units) ---------
_EVERY = {
    "prox_l1": (optareg.prox_l1, {"l1": 0.1, "learning_rate": 0.1}),
    "prox_elastic_net": (optareg.prox_elastic_net, {"l1": 0.1, "l2": 0.1, "learning_rate": 0.1}),
    "prox_group_lasso": (optareg.prox_group_lasso, {"strength": 0.1, "learning_rate": 0.1}),
    "prox_nuclear": (optareg.prox_nuclear, {"strength": 0.1, "learning_rate": 0.1}),
    "prox_adam": (optareg.prox_adam, {"learning_rate": 0.1, "l1": 0.1}),
}
ROWS += [
    Row(_n, _f, {**_kw, "metrics_every": _bad}, "metrics_every")
    for _n, (_f, _kw) in _EVERY.items()
    for _bad in (0, -1, 1.5, True, "10")
]
ROWS += [
    Row(
        "prox_group_lasso",
        optareg.prox_group_lasso,
        {**_EVERY["prox_group_lasso"][1], "layout": _bad},
        "layout",
    )
    for _bad in ("keras", None, 0)
]

# --- chain ------------------------------------------------------------------------------------
ROWS += [
    Row("chain", optareg.chain, {}, "prox_l1", args=(optareg.prox_l1(0.1, 0.1), optax.sgd(0.1))),
    Row("chain", optareg.chain, {}, "sam_perturb", args=(optax.sgd(0.1), optareg.sam_perturb())),
]

# --- constraints, penalties, low precision, sharpness, NNX helper ------------------------------
ROWS += _strength_rows("max_norm", optareg.max_norm, {}, "max_value", positive=True)
ROWS += [
    Row("max_norm", optareg.max_norm, {"max_value": 1.0, "layout": "keras"}, "layout"),
    Row("max_norm", optareg.max_norm, {"max_value": 1.0, "metrics_every": 0}, "metrics_every"),
    Row("unit_norm", optareg.unit_norm, {"layout": "keras"}, "layout"),
    Row("unit_norm", optareg.unit_norm, {"metrics_every": -1}, "metrics_every"),
    Row("non_neg", optareg.non_neg, {"mask": {"a": 3}}, "mask"),
    Row("non_neg", optareg.non_neg, {"metrics_every": 1.5}, "metrics_every"),
    Row("project", optareg.project, {"projection": "l1_ball"}, "projection"),
    Row("project", optareg.project, {"projection": lambda t: t, "per_leaf": "yes"}, "per_leaf"),
    Row("add_penalty", optareg.add_penalty, {"penalty": 3.0, "strength": 0.1}, "penalty"),
]
ROWS += _strength_rows(
    "add_penalty", optareg.add_penalty, {"penalty": optareg.penalties.l2}, "strength"
)
ROWS += [
    Row("low_precision_updates", optareg.low_precision_updates, {"method": m}, "method")
    for m in ("nearest", None, 3)
]
ROWS += [
    Row("low_precision_updates", optareg.low_precision_updates, {"seed": s}, "seed")
    for s in (1.5, "0")
]
ROWS += [
    Row("sharpness_monitor", optareg.sharpness_monitor, {"num_iters": n}, "num_iters")
    for n in (0, -1, 2.5)
]
ROWS += [
    Row("sharpness_monitor", optareg.sharpness_monitor, {"metrics_every": 0}, "metrics_every"),
    Row("sharpness_monitor", optareg.sharpness_monitor, {"learning_rate": -1.0}, "learning_rate"),
    Row(
        "hessian_top_eigenvalue",
        optareg.hessian_top_eigenvalue,
        {"grad_fn": None, "params": {}},
        "grad_fn",
    ),
    Row(
        "hessian_top_eigenvalue",
        optareg.hessian_top_eigenvalue,
        {"grad_fn": lambda p: p, "params": {"w": jnp.ones(2)}, "num_iters": 0},
        "num_iters",
    ),
    Row("nnx_sam_grad_fn", optareg.nnx_sam_grad_fn, {"loss_fn": 3, "model": None}, "loss_fn"),
]

# --- parameter averaging and decay timescales -------------------------------------------------
_EMA, _SWA, _WDT, _DT = (
    optareg.ema_params,
    optareg.swa,
    optareg.weight_decay_for_timescale,
    optareg.decay_timescale,
)
_RBS = optareg.recompute_batch_stats
ROWS += _strength_rows("ema_params", _EMA, {}, "decay", upper=1.0)
ROWS += [
    Row("ema_params", _EMA, {"decay": 1.0}, "decay"),
    Row("ema_params", _EMA, {"decay": _bad_schedule}, "decay"),
    Row("ema_params", _EMA, {"timescale": 0.5}, "timescale"),
    Row("ema_params", _EMA, {"timescale": NAN}, "timescale"),
    Row("ema_params", _EMA, {"timescale": "10"}, "timescale"),
    Row("ema_params", _EMA, {"decay": 0.9, "timescale": 10.0}, "timescale"),
    Row("ema_params", _EMA, {"debias": "yes"}, "debias"),
    Row("ema_params", _EMA, {"dtype": jnp.int32}, "dtype"),
    Row("ema_params", _EMA, {"name": ""}, "name"),
    Row("ema_params", _EMA, {"metrics_every": 0}, "metrics_every"),
    Row("ema_params", _EMA, {"mask": {"a": 3}}, "mask"),
    Row("ema_params", _EMA, {"mask": _BAD_MASK}, "mask", at_init=True),
]
ROWS += [Row(n, f, {"start_step": v}, "start_step") for n, f in (("ema_params", _EMA), ("swa", _SWA))
         for v in (-1, 1.5)]  # fmt: skip
ROWS += [Row(n, f, {"every": v}, "every") for n, f in (("ema_params", _EMA), ("swa", _SWA))
         for v in (0, "2")]  # fmt: skip
ROWS += [
    Row("swa", _SWA, {"dtype": "int8"}, "dtype"),
    Row("swa", _SWA, {"name": "a/b"}, "name"),
    Row("swa", _SWA, {"mask": _BAD_MASK}, "mask", at_init=True),
    Row("averaged_params", optareg.averaged_params, {"opt_state": (), "params": _P}, "opt_state"),
    Row(
        "averaged_params",
        optareg.averaged_params,
        {"opt_state": optareg.swa().init(_P), "params": _P, "name": "ema"},
        "name",
    ),
    Row("recompute_batch_stats", _RBS, {"model": 3, "batches": ()}, "model"),
]
ROWS += _strength_rows("weight_decay_for_timescale", _WDT, {"learning_rate": 1e-3}, "timescale",
                       positive=True)  # fmt: skip
ROWS += _strength_rows("weight_decay_for_timescale", _WDT, {"timescale": 10.0}, "learning_rate",
                       positive=True)  # fmt: skip
ROWS += [
    Row("weight_decay_for_timescale", _WDT, {"timescale": 1.0, "learning_rate": 1e-3,
                                             "steps_per_epoch": 0}, "steps_per_epoch"),
]  # fmt: skip
ROWS += _strength_rows("decay_timescale", _DT, {"learning_rate": 1e-3}, "weight_decay",
                       positive=True)  # fmt: skip
ROWS += _strength_rows("decay_timescale", _DT, {"weight_decay": 0.1}, "learning_rate",
                       positive=True)  # fmt: skip

# --- min_max_norm, Muon-era spectral control, QK-Clip, state shardings -----------------------
_MMN, _HAM, _SWD, _QK = (
    optareg.min_max_norm,
    optareg.spectral_hammer,
    optareg.spectral_weight_decay,
    optareg.qk_clip,
)
ROWS += _strength_rows("min_max_norm", _MMN, {}, "min_value")
ROWS += _strength_rows("min_max_norm", _MMN, {}, "max_value", positive=True)
ROWS += _strength_rows("min_max_norm", _MMN, {}, "rate", positive=True, upper=1.0)
ROWS += [
    Row("min_max_norm", _MMN, {"min_value": 2.0, "max_value": 1.0}, "min_value"),
    Row("min_max_norm", _MMN, {"layout": "keras"}, "layout"),
    Row("min_max_norm", _MMN, {"stack_axes": -1}, "stack_axes"),
    Row("min_max_norm", _MMN, {"metrics_every": 0}, "metrics_every"),
    Row("min_max_norm", _MMN, {"mask": _BAD_MASK}, "mask", at_init=True),
]
ROWS += _strength_rows("spectral_hammer", _HAM, {}, "max_norm", positive=True)
ROWS += [
    Row("spectral_hammer", _HAM, {"num_iters": 0}, "num_iters"),
    Row("spectral_hammer", _HAM, {"init_iters": -1}, "init_iters"),
    Row("spectral_hammer", _HAM, {"stack_axes": 1.5}, "stack_axes"),
    Row("spectral_hammer", _HAM, {"layout": "keras"}, "layout"),
]
ROWS += _strength_rows("spectral_weight_decay", _SWD, {}, "weight_decay")
ROWS += [
    Row("spectral_weight_decay", _SWD, {"learning_rate": -1.0}, "learning_rate"),
    Row("spectral_weight_decay", _SWD, {"convention": "keras"}, "convention"),
    Row("spectral_weight_decay", _SWD, {"num_iters": 0}, "num_iters"),
]
ROWS += _strength_rows("qk_clip", _QK, {}, "threshold", positive=True)
ROWS += [
    Row("qk_clip", _QK, {"alpha": 2.0}, "alpha"),
    Row("qk_clip", _QK, {"alpha": NAN}, "alpha"),
    Row("qk_clip", _QK, {"num_heads": 0}, "num_heads"),
    Row("state_shardings", optareg.state_shardings,
        {"tx": optax.sgd(0.1), "params_or_shapes": _P, "param_shardings": None, "mesh": None},
        "mesh"),
    Row("attention_max_logits", optareg.attention_max_logits,
        {"query": jnp.ones((2, 3, 4)), "key": jnp.ones((2, 3, 4)), "scale": -1.0}, "scale"),
    Row("attention_max_logits", optareg.attention_max_logits,
        {"query": jnp.ones((3, 4)), "key": jnp.ones((3, 4))}, "query"),
]  # fmt: skip

# --- operators (scalar arguments given as Python / NumPy numbers are checked eagerly) ----------
_X = jnp.ones((3, 4))
_OPS_FIX = None  # fixed: operators validate their scalar arguments
ROWS += [
    *[
        Row(
            "soft_threshold",
            operators.soft_threshold,
            {"tau": t},
            "tau",
            args=(_X,),
            xfail=_OPS_FIX,
        )
        for t in (-1.0, NAN)
    ],
    Row(
        "elastic_net_threshold",
        operators.elastic_net_threshold,
        {"tau_l1": -1.0, "tau_l2": 0.1},
        "tau_l1",
        args=(_X,),
        xfail=_OPS_FIX,
    ),
    Row(
        "elastic_net_threshold",
        operators.elastic_net_threshold,
        {"tau_l1": 0.1, "tau_l2": -2.0},
        "tau_l2",
        args=(_X,),
        xfail=_OPS_FIX,
    ),
    Row(
        "group_soft_threshold",
        operators.group_soft_threshold,
        {"tau": -1.0},
        "tau",
        args=(_X,),
        xfail=_OPS_FIX,
    ),
    Row(
        "group_soft_threshold",
        operators.group_soft_threshold,
        {"tau": 0.1, "axis": 2},
        "axis",
        args=(_X,),
    ),
    Row(
        "group_soft_threshold",
        operators.group_soft_threshold,
        {"tau": 0.1, "axis": 0.5},
        "axis",
        args=(_X,),
    ),
    Row(
        "singular_value_threshold",
        operators.singular_value_threshold,
        {"tau": -1.0},
        "tau",
        args=(_X,),
        xfail=_OPS_FIX,
    ),
    Row(
        "singular_value_threshold",
        operators.singular_value_threshold,
        {"tau": 0.1},
        "x",
        args=(jnp.ones(3),),
    ),
    *[Row("msign", operators.msign, {"steps": s}, "steps", args=(_X,)) for s in (0, 1.5, True)],
    *[
        Row(
            "spectral_clip_matrix",
            operators.spectral_clip_matrix,
            {"c": c},
            "c",
            args=(_X,),
            xfail=_OPS_FIX,
        )
        for c in (0.0, -1.0, NAN)
    ],
    Row(
        "spectral_clip_matrix",
        operators.spectral_clip_matrix,
        {"method": "power"},
        "method",
        args=(_X,),
    ),
    Row(
        "spectral_clip_matrix",
        operators.spectral_clip_matrix,
        {"ns_steps": 0},
        "ns_steps",
        args=(_X,),
    ),
]


def _check_message(exc: BaseException, arg: str) -> None:
    msg = str(exc)
    assert f"`{arg}`" in msg or re.search(rf"\b{re.escape(arg)}\b", msg), (
        f"the message does not name `{arg}`: {msg!r}"
    )
    assert _ALLOWED.search(msg), f"the message does not say what is allowed: {msg!r}"


# Transforms whose mask goes through ``_base.masked_if`` (``optax.masked``): a mismatched mask
# surfaces as optax's generic "pytree structure error" that does not name `mask`.
_MASKED_IF: set[str] = set()  # fixed: _base.masked_if checks the mask at init
_MASK_FIX = (
    "_base.masked_if does not call check_mask_matches at init: optax's pytree error does not "
    "name `mask` (fix in the report)"
)


def _marks(row: Row):
    reason = row.xfail
    if row.at_init and row.arg == "mask" and row.name in _MASKED_IF:
        reason = _MASK_FIX
    return [pytest.mark.xfail(strict=True, reason=reason)] if reason else []


@pytest.mark.parametrize("row", [pytest.param(r, id=r.id, marks=_marks(r)) for r in ROWS])
def test_bad_argument_raises_early_and_names_it(row: Row):
    if not row.at_init:
        with pytest.raises((ValueError, TypeError)) as info:
            row.factory(*row.args, **row.kwargs)
        _check_message(info.value, row.arg)
        return
    tx = row.factory(*row.args, **row.kwargs)  # accepted at construction ...
    with pytest.raises((ValueError, TypeError)) as info:  # ... and rejected at init
        tx.init(_params())
    _check_message(info.value, row.arg)


def test_table_covers_every_public_constructor():
    """Every public constructor and operator has at least one row."""
    names = {r.name for r in ROWS}
    public = {
        n
        for n in optareg.__all__
        if callable(getattr(optareg, n)) and not isinstance(getattr(optareg, n), type)
    } - {"metrics", "collect_max_logits", "max_logit_attention_fn"}  # read-outs, a layer hook
    public |= {"decay_mask", "by_path"} | set(operators.__all__)
    assert public <= names, sorted(public - names)


@pytest.mark.parametrize(
    "factory, kwargs",
    [
        (optareg.add_decayed_weights, {"weight_decay": 0.0}),
        (optareg.decoupled_weight_decay, {"weight_decay": 1.0}),
        (optareg.prox_l1, {"l1": 0.0, "learning_rate": np.float32(1e-3)}),
        (optareg.prox_adam, {"learning_rate": 1e-3, "l1": 0.0, "b1": 0.0, "eps": 0.0}),
        (optareg.sam_perturb, {"rho": 0.0, "reuse_every": np.int64(2)}),
        (optareg.spectral_clip, {"max_norm": 1e-6, "init_iters": 0}),
        (optareg.early_stopping, {"patience": 0, "min_delta": -1.0, "baseline": 0.0}),
    ],
    ids=lambda x: getattr(x, "__name__", ""),
)
def test_boundary_values_are_accepted(factory, kwargs):
    """The edges of each allowed range are accepted (the table rejects only what is outside)."""
    out = factory(**kwargs)
    if isinstance(out, optax.GradientTransformation):
        out.init(_params())
