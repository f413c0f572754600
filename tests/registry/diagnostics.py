"""Conformance entries for optareg.diagnostics."""

import optareg
from registry._entry import Entry

ENTRIES: list[Entry] = [
    Entry("track", optareg.track, {}, position="any"),
    Entry("track-per_leaf", optareg.track, {"per_leaf": True, "name": "step"}, position="any"),
]
