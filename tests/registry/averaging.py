"""Conformance entries for optareg.averaging (pass-through parameter averages).

They go after everything else in a chain, ``low_precision_updates`` included (they average the
parameters the final update lands on), hence ``position="last"`` and their place after the
low-precision family in the registry. Three entries cover the code paths: the debiased EMA
(constant β, its injected form), one EMA with every variant, and SWA.
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
    # every other code path in one entry: no debias, a start and period (the jnp.where of the
    # non-averaging steps), a timescale schedule (the running product), a mask, a dtype, and
    # the metric behind a lax.cond
    Entry(
        "ema_params-variants",
        optareg.ema_params,
        {
            "timescale": optax.linear_schedule(2.0, 10.0, 4),
            "debias": False,
            "start_step": 1,
            "every": 2,
            "dtype": "float32",
            "mask": _MASK,
            "metrics_every": 2,
            "name": "ema_variants",
        },
        atol=_NORMS,
    ),
    Entry("swa", optareg.swa, {"start_step": 1}, atol=_NORMS),
]
