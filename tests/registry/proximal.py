"""Conformance entries for optareg.proximal (filled in by its issue)."""

from registry._entry import Entry

ENTRIES: list[Entry] = []
