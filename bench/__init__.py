"""Benchmarks for optareg: overhead over optax, roofline, spectral methods, SAM, memory.

Run ``python -m bench --help``. Each suite module exposes ``run(ctx) -> list[Section]``; the
entry point (:mod:`bench.run`) assembles the sections into one markdown report.
"""
