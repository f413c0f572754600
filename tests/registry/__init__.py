"""The conformance registry: every public transform, with the arguments the suite builds it with.

Each family keeps its entries in its own module (``tests/registry/<family>.py``) as a list named
``ENTRIES``; this package gathers them. Add an entry for every public transform and for each
variant whose code path differs (mask, schedule, method ...).
"""

from registry._entry import Entry
from registry.averaging import ENTRIES as _AVERAGING
from registry.constraints import ENTRIES as _CONSTRAINTS
from registry.decay import ENTRIES as _DECAY
from registry.diagnostics import ENTRIES as _DIAGNOSTICS
from registry.low_precision import ENTRIES as _LOW_PRECISION
from registry.proximal import ENTRIES as _PROXIMAL
from registry.sam import ENTRIES as _SAM
from registry.sharpness import ENTRIES as _SHARPNESS
from registry.spectral import ENTRIES as _SPECTRAL

ENTRIES: list[Entry] = [
    *_DECAY,
    *_PROXIMAL,
    *_SAM,
    *_SHARPNESS,
    *_SPECTRAL,
    *_CONSTRAINTS,
    *_DIAGNOSTICS,
    *_LOW_PRECISION,  # low_precision_updates: the last transform that changes the update
    *_AVERAGING,  # last: the averages see the final update (pass-through, after everything)
]

__all__ = ["ENTRIES", "Entry"]
