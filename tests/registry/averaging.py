"""Conformance entries for optareg.averaging (pass-through parameter averages).

They go after everything else in a chain, ``low_precision_updates`` included (they average the
parameters the final update lands on), hence ``position="last"`` and their place after the
low-precision family in the registry. One entry per code path: the debiased EMA (constant β, its
injected form), the plain EMA with a start / period (the ``jnp.where`` of the non-averaging
steps) and an explicit dtype, a timescale schedule (the running product) with a mask, and SWA.
"""

import optax

import optareg
from registry._entry import MASK as _MASK
from registry._entry import Entry

# The updates pass through bit for bit; the metric is a global-norm ratio (summation order on a
# mesh), hence 1e-5 like the other norm-based entries.
_NORMS = 1e-5

ENTRIES: list[Entry] = [
    Entry("ema_params", optareg.ema_params, {"decay": 0.9}, inject=("decay",), atol=_NORMS),
    Entry(
        "ema_params-nodebias-every",
        optareg.ema_params,
        {"decay": 0.8, "debias": False, "start_step": 1, "every": 2, "dtype": "float32"},
        atol=_NORMS,
    ),
    Entry(
        "ema_params-schedule-mask",
        optareg.ema_params,
        {
            "timescale": optax.linear_schedule(2.0, 10.0, 4),
            "mask": _MASK,
            "metrics_every": 2,
            "name": "ema_sched",
        },
        atol=_NORMS,
    ),
    Entry("swa", optareg.swa, {"start_step": 1}, atol=_NORMS),
]
