"""Shared test configuration: hypothesis profiles, x64 opt-in, and the conformance summary line."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "thorough", max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


def pytest_configure(config):
    """Profile: ``--hypothesis-profile=thorough`` wins, else $HYPOTHESIS_PROFILE, else "ci"."""
    if config.getoption("hypothesis_profile", default=None) is None:
        settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Print how many conformance test cases ran, and over how many transforms."""
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    for key in counts:
        for rep in terminalreporter.stats.get(key, []):
            if "test_conformance.py" in getattr(rep, "nodeid", "") and rep.when in (
                "call",
                "setup",
            ):
                if key == "skipped" or rep.when == "call":
                    counts[key] += 1
    total = sum(counts.values())
    if total:
        try:
            from registry import ENTRIES

            n = len(ENTRIES)
        except Exception:  # noqa: BLE001
            n = "?"
        terminalreporter.write_line(
            f"conformance suite: {total} test cases over {n} registered transforms "
            f"({counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped)"
        )
