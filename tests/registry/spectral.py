"""Conformance entries for optareg.spectral (filled in by its issue)."""

from registry._entry import Entry

ENTRIES: list[Entry] = []
