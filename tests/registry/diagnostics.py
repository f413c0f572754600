"""Conformance entries for optareg.diagnostics."""

import optareg
from registry._entry import Entry

ENTRIES: list[Entry] = [
    Entry("track", optareg.track, {}, position="any"),
    Entry("track-per_leaf", optareg.track, {"per_leaf": True, "name": "step"}, position="any"),
    # statistics every 3 steps behind a lax.cond (the conformance steps cross a metrics step)
    Entry("track-every3", optareg.track, {"metrics_every": 3, "name": "every3"}, position="any"),
]
