"""Conformance entries for optareg.spectral: spectral_clip, each method, the default, a mask,
stacked axes, the torch layout and metrics_every; and the spectral control of issue 30
(soft cap, spectral_hammer, spectral_weight_decay, qk_clip)."""

import numpy as np
import optax
from optax.contrib import MuonDimensionNumbers

import optareg
from registry._entry import Entry

_MASK = {"conv": {"kernel": True}, "dense": {"bias": False, "kernel": True}, "scale": False}
# The conv kernel (3, 3, 2, 4) viewed as a stack of 3 matrices of shape (3·2, 4) (axis 0 = batch);
# the Dense kernel keeps the default view.
_STACKED = {
    "conv": {"kernel": MuonDimensionNumbers(reduction_axis=(1, 2), output_axis=3)},
    "dense": {"bias": None, "kernel": None},
    "scale": None,
}
# A prefix tree with the int shorthand: conv kernel = 3 matrices (3·2, 4); the rest default.
_STACKED_PREFIX = {"conv": 1, "dense": None, "scale": None}
# Integer arguments are listed so that `optax.inject_hyperparams` treats them as static
# (it would otherwise inject their defaults as traced numbers).
_INTS = {"num_iters": 1, "init_iters": 15, "ns_steps": 8, "metrics_every": 1}
# Small radius so that clipping is active on the suite's N(0, 1) params.
_C = 0.5

ENTRIES: list[Entry] = [
    Entry(
        "spectral_clip-power",
        optareg.spectral_clip,
        {**_INTS, "max_norm": _C, "method": "power"},
        inject=("max_norm",),
        atol=1e-5,
    ),
    Entry(
        "spectral_clip-exact",
        optareg.spectral_clip,
        {**_INTS, "max_norm": _C, "method": "exact"},
        inject=("max_norm",),
        # eigh of a sharded Gram matrix sums in another order: measured 1.3e-5 relative on the
        # 72x16 conv view on a 2x4 mesh.
        atol=5e-5,
    ),
    Entry(
        "spectral_clip-newton_schulz",
        optareg.spectral_clip,
        {**_INTS, "max_norm": _C, "method": "newton_schulz"},
        inject=("max_norm",),
        atol=1e-4,
    ),
    Entry(
        "spectral_clip-mask",
        optareg.spectral_clip,
        {**_INTS, "max_norm": _C, "method": "power", "mask": _MASK},
        atol=1e-5,
    ),
    Entry(
        "spectral_clip-stacked",
        optareg.spectral_clip,
        {**_INTS, "max_norm": _C, "method": "exact", "matrix_axes": _STACKED},
        atol=1e-5,
    ),
    Entry(  # the conv kernel as 3 layers (3, 2, 4), a pytree prefix matched by path
        "spectral_clip-stack_axes",
        optareg.spectral_clip,
        {**_INTS, "max_norm": _C, "method": "power", "stack_axes": {"conv": 1}},
        atol=1e-5,
    ),
    Entry(
        "spectral_clip-stacked_int",
        optareg.spectral_clip,
        {**_INTS, "max_norm": _C, "method": "newton_schulz", "matrix_axes": _STACKED_PREFIX},
        atol=1e-4,
    ),
    Entry(
        "spectral_clip-exact-default",  # every argument but the radius at its default
        optareg.spectral_clip,
        {"max_norm": _C, "init_iters": 100, "metrics_every": 1, "num_iters": 1, "ns_steps": 8},
        inject=("max_norm",),
        atol=5e-5,
    ),
    Entry(
        "spectral_clip-exact-torch_layout",  # unit axis first: conv (3·2·4, 3), dense (6, 4)ᵀ
        optareg.spectral_clip,
        {**_INTS, "max_norm": _C, "method": "exact", "layout": "torch"},
        atol=5e-5,
    ),
    Entry(
        "spectral_clip-newton_schulz-metrics_every",  # σ̂ tracked every 3rd step only
        optareg.spectral_clip,
        {**_INTS, "max_norm": _C, "method": "newton_schulz", "metrics_every": 3},
        atol=1e-4,
    ),
]

# --------------------------------------------------------------------------------------------
# spectral control for Muon (issue 30): soft cap, hammer, spectral weight decay, QK-Clip
# --------------------------------------------------------------------------------------------

_ITERS = {"num_iters": 1, "init_iters": 15, "metrics_every": 1}
# QK-Clip on the conformance tree: the Dense kernel (6, 4) as the query projection and the conv
# kernel (3, 3, 2, 4) as the key projection, 2 heads of 2 on their output axis; the attention
# module's path is "" (the matched component is the first one); the number of heads is the
# logits' length. Head 0 is over τ, head 1 not.
_QK = {"query": "dense", "key": "conv", "qkv": None, "metrics_every": 1}
_QK_LOGITS = {"": np.array([3.0, 0.25], np.float32)}


def _conv_is_a_stack(path, leaf):
    """The callable form of ``stack_axes``: the conv kernel's first axis indexes 3 layers."""
    del leaf
    return 1 if path.startswith("conv") else None


def qk_clip_with_fixed_logits(
    threshold=1.0,
    *,
    alpha=0.5,
    query=None,
    key=None,
    qkv=None,
    num_heads=None,
    mask=None,
    metrics_every=1,
):
    """``optareg.qk_clip`` whose ``update`` is always handed the same per-head logits (the suite
    passes no ``max_logits``); init, state and the chain tag are qk_clip's own. The parameters
    are spelled out for ``optax.inject_hyperparams``."""
    tx = optareg.qk_clip(
        threshold,
        alpha=alpha,
        query=query,
        key=key,
        qkv=qkv,
        num_heads=num_heads,
        mask=mask,
        metrics_every=metrics_every,
    )

    def update_fn(updates, state, params=None, **extra_args):
        # test_no_nan's trees also have output axes of size 1 and 3: one head there
        leaves = (params["dense"]["kernel"], params["dense"]["bias"], params["conv"]["kernel"])
        two = all(p.ndim and p.shape[-1] % 2 == 0 for p in leaves if hasattr(p, "ndim"))
        logits = _QK_LOGITS if two else {"": _QK_LOGITS[""][:1]}
        return tx.update(updates, state, params, max_logits=logits, **extra_args)

    return optax.GradientTransformationExtraArgs(tx.init, update_fn)


# optareg.chain sees through optax.inject_hyperparams only for optareg's own factories (it
# rebuilds the transform to read its tag); this one is qk_clip with its logits bound.
qk_clip_with_fixed_logits.__module__ = "optareg.qk_clipping"


ENTRIES += [
    Entry(
        "spectral_clip-soft_cap",
        optareg.spectral_clip,
        {**_INTS, "max_norm": _C, "method": "soft_cap"},
        inject=("max_norm",),
        atol=1e-5,
    ),
    Entry(
        "spectral_clip-soft_cap-max_update_norm",
        optareg.spectral_clip,
        {**_INTS, "max_norm": _C, "method": "soft_cap", "max_update_norm": 0.1},
        inject=("max_norm", "max_update_norm"),
        atol=1e-5,
    ),
    Entry(
        "spectral_hammer",
        optareg.spectral_hammer,
        {**_ITERS, "max_norm": _C},
        inject=("max_norm",),
        atol=1e-5,
    ),
    Entry(
        "spectral_hammer-mask-stacked",  # conv kernel = 3 layers of (3·2, 4); dense bias masked
        optareg.spectral_hammer,
        {**_ITERS, "max_norm": _C, "mask": _MASK, "stack_axes": _conv_is_a_stack},
        atol=1e-5,
    ),
    Entry(
        "spectral_weight_decay",
        optareg.spectral_weight_decay,
        {**_ITERS, "weight_decay": 0.1},
        inject=("weight_decay",),
        atol=1e-5,
    ),
    Entry(
        "spectral_weight_decay-learning_rate",  # λ·η_t/η_max ("paper") of a cosine schedule
        optareg.spectral_weight_decay,
        {
            **_ITERS,
            "weight_decay": 0.1,
            "learning_rate": optax.cosine_decay_schedule(0.1, 20),
            "convention": "paper",
            "layout": "torch",
        },
        atol=1e-5,
    ),
    Entry(
        "qk_clip",
        qk_clip_with_fixed_logits,
        {**_QK, "threshold": 1.0},
        inject=("threshold",),
    ),
    Entry(
        "qk_clip-mask",  # the Dense bias is masked out; alpha shifts the scale onto the key
        qk_clip_with_fixed_logits,
        {**_QK, "threshold": 1.0, "mask": _MASK, "alpha": 0.25},
    ),
]
