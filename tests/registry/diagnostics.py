"""Conformance entries for optareg.diagnostics."""

import optareg
from registry._entry import Entry

# The updates pass through bit for bit; the metrics are global norms, whose float32 sums change
# order on a mesh (a sharded reduction): 3e-6 relative was measured on the 2x4 mesh of
# tests/test_multidevice.py, hence 1e-5 like the other norm-based entries.
_NORMS = 1e-5

ENTRIES: list[Entry] = [
    Entry("track", optareg.track, {}, position="any", atol=_NORMS),
    Entry(
        "track-per_leaf",
        optareg.track,
        {"per_leaf": True, "name": "step"},
        position="any",
        atol=_NORMS,
    ),
    # statistics every 3 steps behind a lax.cond (the conformance steps cross a metrics step)
    Entry(
        "track-every3",
        optareg.track,
        {"metrics_every": 3, "name": "every3"},
        position="any",
        atol=_NORMS,
    ),
]
