"""Conformance entries for optareg.spectral: spectral_clip, each method, the default, a mask,
stacked axes, the torch layout and metrics_every."""

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
