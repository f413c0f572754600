"""Smoke runs of every example script not covered by ``test_examples_new.py``, on tiny settings.

Each example is imported with importlib (``examples/`` is not a package) and its ``main(argv)``
called with the smallest settings its flags allow, so every code path runs in a few seconds; the
checks are on what it prints (table headers, one row per run, finite numbers, the invariants the
example is about) and, where it draws one, on the PNG, written to ``--out tmp_path``.
``examples/figures/*.png`` must be left untouched (an autouse fixture checks); the runs with the
default ``--out`` are in ``test_examples_clean.py``. ``data_parallel.py`` needs 8 devices, forced with
``XLA_FLAGS`` before jax is imported: it runs in a subprocess of its own, in the normal suite.

``transformer_weight_decay.py`` and ``lambda_seed_sweep.py`` are smoke-tested in
``test_examples_new.py``.
"""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import jax
import numpy as np
import pytest
from helpers import assert_png, load_example

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
FIGURES = EXAMPLES / "figures"
NUMBER = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:e[-+]?\d+)?", re.IGNORECASE)
NON_FINITE = re.compile(r"\b(?:nan|inf)\b", re.IGNORECASE)

pytestmark = pytest.mark.slow


def _assert_finite(text: str) -> None:
    assert not NON_FINITE.search(text), f"non-finite number printed:\n{text}"


def _numbers(line: str) -> list[float]:
    return [float(m) for m in NUMBER.findall(line)]


def _row(text: str, start: str) -> str:
    """The single printed line that starts with ``start`` (after leading spaces)."""
    lines = [ln for ln in text.splitlines() if ln.lstrip().startswith(start)]
    assert len(lines) == 1, (start, lines)
    return lines[0]


def _rows_after(text: str, header: str, row: str = ".") -> list[str]:
    """The rows of the table whose header line matches the regex ``header``: the lines after it
    (and its dashed rule, if any) that match ``row``, up to the first one that does not (or is
    blank or a dashed rule)."""
    lines = text.splitlines()
    i = next(i for i, ln in enumerate(lines) if re.search(header, ln)) + 1
    if i < len(lines) and set(lines[i]) == {"-"}:
        i += 1
    rows = []
    for ln in lines[i:]:
        if not ln.strip() or set(ln) == {"-"} or not re.match(row, ln):
            break
        rows.append(ln)
    return rows


@pytest.fixture(autouse=True, scope="module")
def _fast_compilation():
    """Compile with most XLA optimizations off: compilation is nearly all the time of a tiny run
    (this saves about 40 % of it). The executables compiled that way are dropped at the end, so no
    later test reuses one (the flag is not part of jax's cache key)."""
    before = jax.config.values["jax_disable_most_optimizations"]
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", before)
    jax.clear_caches()


@pytest.fixture(autouse=True)
def _committed_figures_untouched():
    """No smoke run may write into examples/figures/ (the figures the docs show)."""

    def snapshot():
        return {p.name: (p.stat().st_mtime_ns, p.stat().st_size) for p in FIGURES.glob("*")}

    before = snapshot()
    yield
    assert snapshot() == before, "an example wrote into examples/figures/"


def _run(name, argv, capsys, monkeypatch, tmp_path, figure=None):
    """Run ``main(argv)`` of an example; with ``figure`` (its file name), ``--out tmp_path``."""
    del monkeypatch
    mod = load_example(name)
    fig = None
    if figure is not None:
        fig = tmp_path / figure
        argv = [*argv, "--out", str(tmp_path)]
    res = mod.main(argv)
    text = capsys.readouterr().out
    _assert_finite(text)
    return mod, res, text, fig


# ---------------------------------------------------------------------------------------------
# the examples, in alphabetical order
# ---------------------------------------------------------------------------------------------


def test_constraint_equivalence_smoke(tmp_path, capsys, monkeypatch):
    argv = ["--pgd-steps", "20", "--mlp-steps", "5", "--hidden", "8", "--batch", "16"]
    mod, res, text, out = _run(
        "constraint_equivalence", argv, capsys, monkeypatch, tmp_path, "constraint_equivalence.png"
    )
    assert_png(out)
    assert res["w_lasso"].shape == res["w_ball"].shape == (8, 10)
    assert np.isfinite(res["w_ball"]).all() and np.isfinite(res["radii"]).all()
    # PGD on the L1 ball stays in the ball, whatever the number of steps
    assert (np.abs(res["w_ball"]).sum(1) <= res["radii"] * (1 + 1e-9) + 1e-12).all()
    rows = _rows_after(text, r"alpha \| radius", r".*\|")
    assert len(rows) == 8 and all(len(_numbers(r)) == 5 for r in rows)
    # max_norm keeps every hidden unit's incoming weights in the ball; the output layer is free
    norms = mod.unit_norms(res["runs"][True][0])
    assert norms["w1"].max() <= mod.MAX_NORM * (1 + 1e-5)
    assert norms["w2"].max() <= mod.MAX_NORM * (1 + 1e-5)
    boundary = res["runs"][True][1][0]
    assert boundary.shape == (5,) and ((boundary >= 0) & (boundary <= 1)).all()
    part2 = _rows_after(text, "max unit norm w1/w2/w3")
    assert [r.split("|")[0].strip() for r in part2] == ["dropout", "dropout + max_norm(3)"]
    for r in part2:
        assert 0 <= float(r.split("|")[1]) <= 1
    for phrase in ("Part 1: diabetes", "Part 2: digits MLP 64-8-8-10", f"wrote {out}"):
        assert phrase in text


def test_data_parallel_smoke(tmp_path):
    """8 simulated CPU devices, forced before jax is imported: a process of its own."""
    fig = tmp_path / "data_parallel.png"
    code = (
        "import importlib.util, sys\n"
        f"sys.path.insert(0, {str(EXAMPLES)!r})\n"
        f"spec = importlib.util.spec_from_file_location('dp', {str(EXAMPLES / 'data_parallel.py')!r})\n"
        "mod = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(mod)\n"
        "mod.main(sys.argv[1:])\n"
    )
    env = dict(os.environ)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    env["JAX_PLATFORMS"] = "cpu"
    env["JAX_DISABLE_MOST_OPTIMIZATIONS"] = "1"  # as _fast_compilation, in the child process
    argv = ["--steps", "3", "--batch", "16", "--hidden", "8", "--log-every", "2"]
    argv += ["--out", str(tmp_path)]
    proc = subprocess.run(
        [sys.executable, "-c", code, *argv],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = proc.stdout
    _assert_finite(text)
    assert_png(fig)
    assert "devices: 8 x cpu | global batch 16 | per-device batch 2" in text
    # m-sharpness: the per-device SAM gradient differs from the all-device one
    m = re.search(r"m-sharpness check.*= ([\d.]+) \(0 would mean plain SAM\)", text)
    assert m and float(m.group(1)) > 0, text
    rows = _rows_after(text, r"cos\(g,g_sam\)")
    assert [int(r.split()[0]) for r in rows] == [2, 3]  # every --log-every steps, and the last
    for r in rows:
        nums = _numbers(r)
        assert len(nums) == 8 and 0 <= nums[2] <= 1 and -1 <= nums[4] <= 1 and 0 <= nums[6] <= 1
    metrics = dict(r.split() for r in _rows_after(text, r"^\s*metric\s+value$"))
    for key in ("sam_perturb/grad_norm", "spectral_clip/sigma_max", "prox_l1/zeros_fraction"):
        assert key in metrics and np.isfinite(float(metrics[key]))
    assert "optareg/update_ratio" in metrics
    assert "exact spectral norms:" in text and f"saved {fig}" in text


def test_diagnostics_smoke(tmp_path, capsys, monkeypatch):
    # two epochs: the spike columns skip the first one
    argv = ["--epochs", "2", "--hidden", "8", "--batch-size", "256"]
    mod, rows, text, out = _run(
        "diagnostics", argv, capsys, monkeypatch, tmp_path, "diagnostics.png"
    )
    assert_png(out)
    names = list(mod.settings(1e-3))
    assert [r[0] for r in rows] == names
    for name, acc, pn, med, spike, spike_ema, sparsity, nonfinite in rows:
        assert 0 <= acc <= 1 and pn > 0 and med > 0, name
        assert spike >= 1 and np.isfinite(spike_ema), name  # max / median
        assert 0 <= sparsity <= 1 and nonfinite == 0, name
    assert _rows_after(text, "EMA spike")[0].startswith("adam ")
    for name in names:
        assert _row(text, name)
    assert "saved" in text


def test_double_descent_smoke(tmp_path, capsys, monkeypatch):
    argv = ["--n-train", "10", "--seeds", "1", "--gd-steps", "10"]
    _, _, text, fig = _run(
        "double_descent", argv, capsys, monkeypatch, tmp_path, "double_descent.png"
    )
    assert_png(fig)
    rows = _rows_after(text, "p/n", r"\s*\d")
    assert len(rows) >= 10 and all(len(_numbers(r)) == 5 for r in rows)
    widths = [int(r.split()[0]) for r in rows]
    assert widths == sorted(set(widths)) and 10 in widths  # the interpolation threshold p = n
    assert all(v > 0 for r in rows for v in _numbers(r)[2:])
    gd = _rows_after(text, "MSE closed", r"\s*\d")
    assert [int(r.split()[0]) for r in gd] == [5, 10, 40]
    for phrase in ("diabetes: n_train=10", "λ=0: peak test MSE", "implicit bias", "saved"):
        assert phrase in text


def test_group_lasso_pruning_smoke(capsys, monkeypatch, tmp_path):
    _, _, text, _ = _run(
        "group_lasso_pruning", ["--hidden", "8", "--steps", "5"], capsys, monkeypatch, tmp_path
    )
    rows = _rows_after(text, "neurons kept")
    assert len(rows) == 6
    for r in rows:
        _, kept, acc, acc_pruned, zeros = (c.strip() for c in r.split("|"))
        alive, total = (int(v) for v in kept.split("/"))
        assert 0 <= alive <= total == 8
        assert acc == acc_pruned  # the dead units' deletion leaves the predictions unchanged
        assert 0 <= float(acc) <= 1 and 0 <= float(zeros) <= 1
    assert rows[0].split("|")[1].strip().startswith("8 /")  # λ = 0 prunes nothing
    assert "digits MLP 64-8-10, 5 full-batch steps, 6 λ in one call" in text


def test_haiku_sam_smoke(capsys, monkeypatch, tmp_path):
    argv = ["--steps", "3", "--batch", "8"]
    _, _, text, _ = _run("haiku_sam", argv, capsys, monkeypatch, tmp_path)
    rows = _rows_after(text, r"cos\(g,g_out\)")
    assert [r[:12].strip() for r in rows] == ["SGD", "SAM", "LookSAM k=5"]
    assert rows[0].split()[3:5] == ["-", "-"]  # SGD records no SAM metrics
    for r in rows[1:]:
        acc, loss, gnorm, cos, cost = _numbers(r[12:])
        assert 0 <= acc <= 1 and loss > 0 and gnorm > 0 and -1 <= cos <= 1 and cost > 0
    assert rows[0].rstrip().endswith("1.00x")
    assert "Haiku MLP 64-128-128-10 on digits, 3 steps of batch 8" in text


def test_lipschitz_mlp_smoke(tmp_path, capsys, monkeypatch):
    argv = ["--steps", "3", "--hidden", "8", "--batch", "16"]
    _, _, text, fig = _run(
        "lipschitz_mlp", argv, capsys, monkeypatch, tmp_path, "lipschitz_spectra.png"
    )
    assert_png(fig)
    rows = _rows_after(text, "max_t L_t")
    assert [r[:40].strip() for r in rows] == ["adam", "adam + spectral_clip(1.0)"]
    acc, worst, bound, emp, *per_layer = _numbers(rows[1][40:])
    assert 0 <= acc <= 1 and len(per_layer) == 3
    # the bound after every step, the first (from the unconstrained init) included
    assert bound <= worst <= (1 + 1e-6) ** 3 + 1e-6 and max(per_layer) <= 1 + 1e-4
    assert emp <= bound * (1 + 1e-3)  # printed to 4-6 digits
    assert re.search(r"clipped run: L_t = ∏‖W‖₂ ≤ [\d.]+ after every step 1…3 .*: True", text)
    assert f"saved {fig}" in text


def test_lora_rank_smoke(tmp_path, capsys, monkeypatch):
    argv = ["--n", "16", "--d-in", "8", "--d-out", "6", "--lora-rank", "6", "--steps", "10"]
    mod, _, text, fig = _run("lora_rank", argv, capsys, monkeypatch, tmp_path, "lora_rank.png")
    assert_png(fig)
    rows = _rows_after(text, "rank: closed")
    assert len(rows) == len(mod.LAMBDAS)
    ranks = []
    for lam, r in zip(mod.LAMBDAS, rows, strict=True):
        nums = _numbers(r)
        assert len(nums) == 6 and np.isclose(nums[0], lam)
        assert all(0 <= k <= 6 for k in nums[1:4])
        ranks.append(int(nums[1]))
    assert ranks == sorted(ranks, reverse=True)  # SVT: a larger λ never raises the rank
    assert "singular values of the least-squares Δ_ls" in text and "saved" in text


def test_low_precision_smoke(tmp_path, capsys, monkeypatch):
    # the three bf16 runs (the float32 reference is the plain bf16 chain, in float32)
    argv = ["--steps", "3", "--width", "8", "--runs", "bf16,kahan,stochastic"]
    mod, rows, text, fig = _run(
        "low_precision", argv, capsys, monkeypatch, tmp_path, "low_precision.png"
    )
    assert_png(fig)
    assert list(rows) == ["bf16", "bf16 + kahan", "bf16 + stochastic"]
    for run, r in rows.items():
        assert all(np.isfinite(v) for v in r.values()), run
        assert r["loss"] > 0 and 0 <= r["val_acc"] <= 1 and r["param_norm"] > 0, run
        # bf16 parameters: plain rounding would drop part of every requested step
        assert 0 < r["requested_lost"] <= 1 and 0 <= r["applied_lost"] <= 1, run
    # low_precision_updates: every entry of the step it passes on lands exactly
    assert rows["bf16"]["applied_lost"] > 0
    assert rows["bf16 + kahan"]["applied_lost"] == 0
    assert rows["bf16 + stochastic"]["applied_lost"] == 0
    for run in rows:
        assert _row(text, f"{run:<19}")
    assert "saved" in text


def test_quickstart_smoke(capsys, monkeypatch, tmp_path):
    # SAM is on by default; --l1 and --max-sigma add the two optional post-step regularizers
    argv = ["--epochs", "2", "--hidden", "8", "--batch-size", "512", "--patience", "1"]
    argv += ["--l1", "0.1", "--max-sigma", "3"]
    _, best, text, _ = _run("quickstart", argv, capsys, monkeypatch, tmp_path)
    assert 0 <= best <= 1
    header = _row(text, "epoch ")
    for col in ("train loss", "val acc", "‖Δθ‖/‖θ‖", "non-finite", "SAM cos", "zeros", "max σ"):
        assert col in header
    rows = _rows_after(text, "train loss", r"\s*\d")
    assert 1 <= len(rows) <= 2 and rows[0].split()[0] == "0"
    for r in rows:
        nums = _numbers(r)
        assert len(nums) == 10 and nums[6] == 0  # no non-finite gradient
        assert 0 <= nums[2] <= 1 and -1 <= nums[7] <= 1 and 0 <= nums[8] <= 1
        assert nums[9] <= 3 * (1 + 1e-3)  # spectral_clip's bound on its own estimate
    m = re.search(r"restored the weights of epoch (\d+): validation accuracy ([\d.]+)", text)
    assert m and int(m.group(1)) < len(rows) and np.isclose(float(m.group(2)), best, atol=1e-4)


def test_sam_flatness_smoke(tmp_path, capsys, monkeypatch):
    argv = ["--steps", "4", "--batch", "8", "--width", "8", "--every", "2", "--iters", "2"]
    _, res, text, fig = _run(
        "sam_flatness", argv, capsys, monkeypatch, tmp_path, "sam_flatness.png"
    )
    assert_png(fig)
    assert list(res) == ["SGD", "SAM"]
    for name, r in res.items():
        assert r["losses"].shape == (4,) and np.isfinite(r["losses"]).all(), name
        np.testing.assert_array_equal(r["steps"], [0, 2])
        assert np.isfinite(r["tops"]).all(), name
        for key in ("eos_last", "eos_max", "lam_full", "train_loss"):
            assert np.isfinite(r[key]), (name, key)
        assert 0 <= r["acc"] <= 1 and r["lam_full"] > 0, name
    rows = _rows_after(text, r"λ_max \(full\)", "SGD |SAM ")
    assert [r.split()[0] for r in rows] == ["SGD", "SAM"]
    assert all(len(_numbers(r)) == 6 for r in rows)
    assert "SAM's final λ_max is" in text and "saved" in text


def test_sparse_logistic_smoke(tmp_path, capsys, monkeypatch):
    argv = ["--steps", "5", "--num-lambdas", "2"]
    _, _, text, fig = _run(
        "sparse_logistic", argv, capsys, monkeypatch, tmp_path, "sparse_logistic_path.png"
    )
    assert_png(fig)
    rows = _rows_after(text, "nnz optareg")
    assert len(rows) == 2
    for r in rows:
        lam, nnz, acc, nnz_sk, acc_sk, gap = _numbers(r)
        assert 0 <= nnz <= 30 and 0 <= nnz_sk <= 30 and 0 <= acc <= 1 and 0 <= acc_sk <= 1
        assert gap > -1e-6  # sklearn (converged) is at least as good as 5 ISTA steps
    assert float(rows[0].split()[0]) > float(rows[1].split()[0])  # λ from large to small
    assert "breast cancer: n_train=426, d=30, 5 prox-gradient steps per λ" in text
    assert f"saved {fig}" in text


def test_weight_decay_conventions_smoke(tmp_path, capsys, monkeypatch):
    # a fine-tuning shorter than the 10-step warm-up (it warms up for half of it instead)
    argv = ["--steps", "10", "--width", "8", "--finetune-steps", "3"]
    _, _, text, fig = _run(
        "weight_decay_conventions",
        argv,
        capsys,
        monkeypatch,
        tmp_path,
        "weight_decay_conventions.png",
    )
    assert_png(fig)
    rows = _rows_after(text, "^convention", r"\S+\s+\d")
    assert [r.split()[0] for r in rows] == ["pytorch", "paper", "independent", "adamc"]
    for r in rows:
        acc, norm = _numbers(r)
        assert 0 <= acc <= 1 and norm > 0
    gap = re.search(r"max relative gap in ‖θ‖ (\S+)", text)
    assert gap and float(gap.group(1)) < 1e-3  # the same decay in two conventions
    ft = _rows_after(text, "θ_pre")
    assert [r[:22].strip() for r in ft] == ["L2-SP (toward init)", "decay toward 0"]
    for r in ft:
        acc, norm, dist = _numbers(r[22:])
        assert 0 <= acc <= 1 and norm > 0 and dist > 0
    assert "fine-tuning from a pretrained start" in text and "saved" in text


# ---------------------------------------------------------------------------------------------
# the smallest values of the flags: they run, or stop with argparse's message naming the flag
# ---------------------------------------------------------------------------------------------


def test_diagnostics_one_epoch(tmp_path, capsys, monkeypatch):
    # one epoch: no first epoch to skip, the spike columns use every step
    argv = ["--epochs", "1", "--hidden", "8", "--batch-size", "512"]
    _, rows, _, _ = _run("diagnostics", argv, capsys, monkeypatch, tmp_path, "diagnostics.png")
    assert all(r[4] >= 1 and np.isfinite(r[5]) for r in rows)


@pytest.mark.parametrize(
    ("name", "argv", "message"),
    [
        ("diagnostics", ["--epochs", "0"], "--epochs: must be an integer >= 1, got 0"),
        ("haiku_sam", ["--steps", "0"], "--steps: must be an integer >= 1, got 0"),
        ("weight_decay_conventions", ["--finetune-steps", "0"], "--finetune-steps: must be an"),
        ("weight_decay_conventions", ["--steps", "0"], "--steps: must be an integer >= 1, got 0"),
        (
            "diagnostics",
            ["--smoothing", "1.0"],
            "--smoothing: must be a finite number >= 0 and < 1",
        ),
        ("quickstart", ["--epochs", "0"], "--epochs: must be an integer >= 1, got 0"),
        ("low_precision", ["--runs", "foo"], "--runs takes a comma list of float32, bf16"),
        ("low_precision", ["--steps", "0"], "--steps: must be an integer >= 1, got 0"),
        ("constraint_equivalence", ["--mlp-steps", "0"], "--mlp-steps: must be an integer >= 1"),
        ("double_descent", ["--n-train", "500"], "--n-train must be in [2, 440]"),
        ("sam_flatness", ["--steps", "0"], "--steps: must be an integer >= 1, got 0"),
        ("sam_flatness", ["--rho", "-0.1"], "--rho: must be a finite number > 0, got -0.1"),
        ("sam_flatness", ["--lr", "nan"], "--lr: must be a finite number > 0, got nan"),
        ("sam_flatness", ["--batch", "5000"], "--batch: must be at most 1198"),
        ("lora_rank", ["--d-out", "3"], "--d-out: must be an integer >= 4, got 3"),
        ("lambda_seed_sweep", ["--label-noise", "1.5"], "--label-noise: must be a finite number"),
        ("transformer_weight_decay", ["--heads", "5"], "--d-model: must be a multiple of --heads"),
        ("lipschitz_mlp", ["--batch", "x"], "--batch: expected an integer, got 'x'"),
    ],
)
def test_flag_out_of_range_is_a_clear_error(name, argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        load_example(name).main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
