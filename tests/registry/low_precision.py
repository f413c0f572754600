"""Conformance entries for optareg.low_precision (the last family: the transform goes last).

The suite's params are float32 (pass through, no buffer), bfloat16 (rounded, a bf16 buffer for
"kahan") and float64 under x64 (pass through): every code path runs in the dtype checks.
"""

import optareg
from registry._entry import MASK as _MASK
from registry._entry import Entry

ENTRIES: list[Entry] = [
    Entry("low_precision_updates-kahan", optareg.low_precision_updates, {"method": "kahan"}),
    Entry(
        "low_precision_updates-stochastic",
        optareg.low_precision_updates,
        {"method": "stochastic", "seed": 0},
    ),
    Entry(
        "low_precision_updates-mask",
        optareg.low_precision_updates,
        {"method": "kahan", "mask": _MASK},
    ),
]
