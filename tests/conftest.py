"""Shared test configuration: hypothesis profiles, a compilation cache for the run and
the conformance summary line."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

import jax
from hypothesis import HealthCheck, settings


def _compilation_cache_for_this_run() -> None:
    """JAX's persistent compilation cache in a fresh directory, removed at exit.

    Eager tests run ``lax.cond`` / ``lax.fori_loop`` bodies that are traced afresh on every
    call, so the same program is compiled again and again (a ``sharpness_monitor`` update
    compiles its LOBPCG loop, about a second, on every eager call). Within one test process the
    cache turns every repeat into a load. Its key holds the program, the compile options (XLA's
    optimization level included) and the backend, so no test can be served another's executable;
    nothing persists between runs. A cache directory the user set is left alone.
    """
    if os.environ.get("JAX_COMPILATION_CACHE_DIR") or jax.config.values.get(
        "jax_compilation_cache_dir"
    ):
        return
    path = tempfile.mkdtemp(prefix="optareg-tests-jax-cache-")
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)


_compilation_cache_for_this_run()

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
