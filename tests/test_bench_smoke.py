"""Smoke test of the benchmarks: every suite at size tiny, 2 repetitions, no timing assertions.

Runs ``python -m bench`` in a subprocess (its own XLA flags: minimal LLVM optimization, since only
the code paths matter here) and checks that the markdown report has every expected row, that no
row failed, and that the counted gradient evaluations per step are those of each method.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench import suite_cond, suite_memory, suite_overhead, suite_sam, suite_spectral  # noqa: E402


def _rows(text: str, title_prefix: str) -> list[list[str]]:
    """The data rows of the table under the section whose title starts with ``title_prefix``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"### {title_prefix}"))
    rows, in_table = [], False
    for line in lines[start + 1 :]:
        if line.startswith("### "):
            break
        if line.startswith("|"):
            if in_table and not line.startswith("|---"):
                rows.append([c.strip() for c in line.strip().strip("|").split(" | ")])
            in_table = True
        elif in_table:
            break
    return rows[1:] if rows and rows[0][0] in ("transform", "kernel", "shape", "model") else rows


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("bench") / "RESULTS.md"
    env = dict(os.environ)
    env["XLA_FLAGS"] = (
        env.get("XLA_FLAGS", "")
        + " --xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
    )
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, "-m", "bench", "--size", "tiny", "--reps", "2", "--out", str(out)]
    proc = subprocess.run(
        cmd + ["--quiet"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    assert text.strip() in proc.stdout  # printed and written
    return text


def test_header(report):
    for key in ("CPU", "cores", "JAX backend / device", "versions", "date (UTC)", "command"):
        assert f"| {key} |" in report
    # the fixture's XLA_FLAGS are recorded (they change the timings)
    assert re.search(r"\| environment \(allocator, XLA\) \| `XLA_FLAGS=[^|]*--xla_backend", report)
    assert "python -m bench --size tiny --reps 2" in report
    assert re.search(r"jax \d+\.\d+", report) and "optax " in report


def test_no_row_failed(report):
    assert "error:" not in report, report
    assert "n/a (not implemented)" not in report, report


def test_overhead_rows(report):
    rows = _rows(report, "1.")
    names = [r[0] for r in rows]
    assert names == ["optax.adamw(1e-3, weight_decay=0.1)"] + [
        t[0] for t in suite_overhead.TRANSFORMS
    ]
    for r in rows[1:]:
        assert re.match(r"[\d.]+ \[[\d.]+–[\d.]+\]", r[3]), r  # median [min–max] ratio


def test_roofline_rows(report):
    rows = _rows(report, "2.")
    assert [r[0] for r in rows] == [
        "copy: x + s, donated",
        "copy: jnp.copy, distinct",
        "optax.adamw",
        "optax.adamw + prox_l1",
    ]
    for r in rows:
        assert 0 < float(r[4]) < 100, r


def test_spectral_rows(report):
    rows = _rows(report, "3.")
    shapes = [f"{m}×{n}" for m, n in suite_spectral.SHAPES["tiny"]]
    methods = [
        "jnp.linalg.svd clip",
        "spectral_clip_matrix exact",
        "spectral_clip_matrix newton_schulz",
    ]
    assert [(r[0], r[1]) for r in rows] == [(s, m) for s in shapes for m in methods]
    for r in rows:
        assert abs(float(r[4])) < 0.05 and float(r[5]) < 0.1, r  # errors are numbers, small


def test_sam_rows_and_gradient_counts(report):
    rows = _rows(report, "4.")
    expected_evals = {
        "optax.sgd": 1.0,
        "sam_perturb(reuse_every=1) + sgd": 2.0,
        "sam_perturb(reuse_every=5) + sgd": 1.2,
        "optax.contrib.sam (opaque)": 2.0,
    }
    assert len(rows) == len(suite_sam.MODELS["tiny"]) * len(expected_evals)
    for r in rows:
        assert float(r[4]) == pytest.approx(expected_evals[r[1]]), r


def test_memory_rows(report):
    rows = _rows(report, "5.")
    assert [r[0] for r in rows] == [t[0] for t in suite_memory.ROWS]
    by_name = {r[0]: r for r in rows}
    assert float(by_name["optax.adamw (baseline)"][2]) == pytest.approx(2.0, abs=1e-3)
    assert float(by_name['add_decayed_weights(1e-4, reference="init")'][2]) == pytest.approx(
        1.0, abs=1e-3
    )


def test_cond_rows(report):
    rows = _rows(report, "8.")
    assert [r[0] for r in rows] == [t[0] for t in suite_cond.ROWS]
    for r in rows:
        assert re.match(r"[\d.]+ \[[\d.]+–[\d.]+\]", r[3]), r
        assert re.fullmatch(r"\d+ copies, \d+ fusions", r[5]), r
    by_name = {r[0]: r for r in rows}
    # an input as the operand needs no copy; the donated parameters do (XLA:CPU)
    assert by_name["+ cond(Σg²), skipped"][5].startswith("0 copies")
    # the floor rows read inputs only (θ ordered before its in-place update): no copy either
    assert by_name["+ Σg² every step"][5].startswith("0 copies")
    assert by_name["+ Σg², Σθ² every step"][5].startswith("0 copies")


def test_spectral_control_rows(report):
    """Suite 3c: every method after muon and after adamw, each with a finite ratio."""
    rows = _rows(report, "3c.")
    names = [r[0] for r in rows]
    for base in ("optax.contrib.muon", "optax.adamw"):
        for method in ("soft_cap", "spectral_hammer", "spectral_weight_decay", "qk_clip"):
            assert any(n.startswith(base + " +") and method in n for n in names), (base, method)
    for r in rows:
        if "alone" not in r[0]:
            assert float(r[2].split()[0]) > 0, r
