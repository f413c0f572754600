"""Conformance entries for optareg.sam (filled in by its issue)."""

from registry._entry import Entry

ENTRIES: list[Entry] = []
