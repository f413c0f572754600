"""Conformance entries for optareg.diagnostics (filled in by its issue)."""

from registry._entry import Entry

ENTRIES: list[Entry] = []
