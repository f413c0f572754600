"""The transformer weight-decay and λ × seed sweep examples, and the vmap pattern they rely on.

* smoke runs of ``examples/transformer_weight_decay.py`` and ``examples/lambda_seed_sweep.py``
  on tiny settings (their ``main(argv)``): finite numbers, the tables printed, a PNG written;
* ``jax.vmap`` over a λ traced through ``optax.inject_hyperparams`` for ``prox_l1``,
  ``decoupled_weight_decay`` and ``add_decayed_weights``, against the closed-form step of each
  λ (numpy float64); ``early_stopping`` under ``vmap`` against the unbatched function and the
  documented numbers;
* ``inject_hyperparams`` without ``static_args``: a traced ``metrics_every`` works; a callable
  mask is treated as a schedule and silently masks everything out (a strict xfail: it turns
  into a failure, i.e. a reminder to drop the ``static_args=("mask",)`` workaround, once fixed).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import assert_png, load_example

import optareg

# ---------------------------------------------------------------------------------------------
# smoke runs
# ---------------------------------------------------------------------------------------------


def test_transformer_weight_decay_smoke(tmp_path, capsys):
    mod = load_example("transformer_weight_decay")
    out = tmp_path / "transformer_weight_decay.png"
    argv = ["--steps", "10", "--log-every", "5", "--d-model", "16", "--layers", "1"]
    argv += ["--heads", "2", "--context", "8", "--batch-size", "4", "--max-chars", "4000"]
    res = mod.main([*argv, "--out", str(tmp_path)])
    text = capsys.readouterr().out
    assert_png(out)
    assert [r["run"] for r in res["runs"]] == list(mod.RUNS)
    for r in res["runs"]:
        for key in ("train", "val", "val_best", "kernel_rms", "ln_norm", "embed_norm", "grad_norm"):
            assert np.isfinite(r[key]) and r[key] > 0, (r["run"], key, r[key])
        assert r["val"] < np.log(mod.VOCAB) + 0.5  # trained: below (about) the uniform loss
    # "decay all" shrinks the LayerNorm scales that decay_mask leaves alone
    assert res["runs"][1]["ln_norm"] < res["runs"][0]["ln_norm"]
    # the uniform chain is optax.adamw, with and without the mask (float32 rounding only)
    assert set(res["adamw_gap"]) == set(mod.RUNS[:2])
    assert all(g < 1e-6 for g in res["adamw_gap"].values()), res["adamw_gap"]
    layers = [row[0] for row in res["equilibrium"]]
    assert "head/kernel" in layers and all(np.isfinite(row[2:]).all() for row in res["equilibrium"])
    for phrase in ("pytorch + decay_mask", "equilibrium", "measured/predicted", "saved"):
        assert phrase in text


def test_lambda_seed_sweep_smoke(tmp_path, capsys):
    """One sweep (L1: the prox and its metric), its Python-loop twin, the table and the PNG.

    The weight-decay sweep differs only in its chain (covered below against closed forms).
    """
    mod = load_example("lambda_seed_sweep")
    out = tmp_path / "lambda_seed_sweep.png"
    argv = ["--seeds", "2", "--num-lambdas", "2", "--steps", "8", "--eval-every", "4"]
    argv += ["--hidden", "8", "--patience", "1", "--families", "l1", "--loop", "first"]
    res = mod.main([*argv, "--out", str(tmp_path)])
    text = capsys.readouterr().out
    assert_png(out)
    assert list(res["results"]) == [mod.FAMILIES[1]]
    r = res["results"][mod.FAMILIES[1]]
    assert r["val"].shape == (3, 2)  # λ = 0 plus 2 values, 2 seeds
    for key in ("val", "test", "val_es", "test_es", "zeros"):
        assert np.isfinite(r[key]).all() and ((r[key] >= 0) & (r[key] <= 1)).all(), key
    assert r["zeros"][0].max() == 0 and r["zeros"][-1].min() > 0  # λ = 0: none; λ = 3: zeros
    assert 0 <= r["choice"]["best"] < 3 and len(r["choice"]["per_seed"]) == 2
    (t,) = res["timing"]
    assert t["runs"] == 6 and t["compile"].wall > 0 and t["run"].wall > 0 and t["loop"].wall > 0
    assert t["temp"] >= 0 and t["state"] > 0
    assert t["gap"] <= 1 / 600 + 1e-7  # the loop gives the vmapped errors (up to one image)
    for phrase in ("L1 (prox)", "best λ", "a single seed would pick", "loop/vmap", "saved"):
        assert phrase in text


# ---------------------------------------------------------------------------------------------
# vmap over a traced λ (inject_hyperparams), against closed forms
# ---------------------------------------------------------------------------------------------

LAMBDAS = np.array([0.0, 0.05, 0.3, 1.0])
LR = 0.1
THETA = {"dense": {"kernel": np.array([[1.0, -0.4], [0.02, 2.0]]), "bias": np.array([0.5, -0.5])}}
GRAD = {"dense": {"kernel": np.array([[0.3, -1.0], [0.1, 0.0]]), "bias": np.array([1.0, 2.0])}}


def _run_vmapped(make_tx, hp: str, steps: int = 1):
    """``steps`` SGD(LR) steps for every λ of LAMBDAS in one jit(vmap); λ set in the state."""
    params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), THETA)
    grads = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), GRAD)

    def run(lam):
        tx = make_tx()
        state = tx.init(params)
        state[1].hyperparams[hp] = lam
        p = params
        for _ in range(steps):
            updates, state = tx.update(grads, state, p)
            p = optax.apply_updates(p, updates)
        return p

    return jax.jit(jax.vmap(run))(jnp.asarray(LAMBDAS, jnp.float32))


def _kernel_only_step(theta, grad, lam, decay):
    """Closed-form one SGD step with ``decay`` applied to the kernel only (decay_mask)."""
    k = decay(
        theta["dense"]["kernel"] - LR * grad["dense"]["kernel"], theta["dense"]["kernel"], lam
    )
    b = theta["dense"]["bias"] - LR * grad["dense"]["bias"]
    return k, b


CASES = {
    "prox_l1": (
        lambda: optareg.chain(
            optax.sgd(LR),
            optax.inject_hyperparams(optareg.prox_l1, static_args=("mask", "metrics_every"))(
                0.0, LR, mask=optareg.masks.decay_mask
            ),
        ),
        "l1",
        lambda x, theta, lam: np.sign(x) * np.maximum(np.abs(x) - LR * lam, 0.0),
    ),
    "decoupled_weight_decay": (
        lambda: optareg.chain(
            optax.sgd(LR),
            optax.inject_hyperparams(optareg.decoupled_weight_decay, static_args=("mask",))(
                0.0, mask=optareg.masks.decay_mask
            ),
        ),
        "weight_decay",
        lambda x, theta, lam: x - lam * theta,
    ),
    "add_decayed_weights": (
        lambda: optareg.chain(
            optax.identity(),
            optax.inject_hyperparams(optareg.add_decayed_weights, static_args=("mask",))(
                0.0, mask=optareg.masks.decay_mask
            ),
            optax.sgd(LR),
        ),
        "weight_decay",
        lambda x, theta, lam: x - LR * lam * theta,
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_vmap_over_traced_lambda_matches_closed_form(name):
    make_tx, hp, decay = CASES[name]
    out = _run_vmapped(make_tx, hp)
    for i, lam in enumerate(LAMBDAS):
        k, b = _kernel_only_step(THETA, GRAD, lam, decay)
        np.testing.assert_allclose(out["dense"]["kernel"][i], k, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(out["dense"]["bias"][i], b, rtol=1e-6, atol=1e-7)
    # λ really differs across the batch (a λ that did not reach the transform would not)
    assert not np.allclose(out["dense"]["kernel"][0], out["dense"]["kernel"][-1])


def test_prox_l1_vmap_metrics_per_lambda():
    """The zeros_fraction metric is computed per λ under vmap (exact zeros of the kernel)."""
    make_tx, hp, decay = CASES["prox_l1"]
    params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), THETA)
    grads = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), GRAD)

    def zeros(lam):
        tx = make_tx()
        state = tx.init(params)
        state[1].hyperparams[hp] = lam
        _, state = tx.update(grads, state, params)
        return optareg.metrics(state)["prox_l1/zeros_fraction"]

    got = jax.jit(jax.vmap(zeros))(jnp.asarray(LAMBDAS, jnp.float32))
    want = [np.mean(_kernel_only_step(THETA, GRAD, lam, decay)[0] == 0) for lam in LAMBDAS]
    np.testing.assert_allclose(got, want)
    assert want[0] == 0 and want[-1] > 0


def test_early_stopping_under_vmap():
    es = optareg.early_stopping(2)
    values = jnp.array(
        [
            [10.0, 9.0, 8.0, 9.0, 8.9, 8.7, 9.0, 8.0],  # the docstring's sequence: stops at 4
            [5.0, 4.0, 3.0, 2.0, 1.0, 0.0, -1.0, -2.0],  # always improving: never stops
            [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0],  # never improving: stops at 2
        ]
    )

    def run(vals):
        state = es.init({"w": jnp.zeros(())})
        for t in range(vals.shape[0]):
            state = es.update(state, vals[t], {"w": jnp.float32(t)})
        return state

    batched = jax.jit(jax.vmap(run))(values)
    for i in range(values.shape[0]):
        single = jax.jit(run)(values[i])
        for field in ("should_stop", "stopped_step", "best_step", "best_value", "wait"):
            assert np.asarray(getattr(batched, field))[i] == np.asarray(getattr(single, field))
        assert float(batched.best_params["w"][i]) == float(single.best_params["w"])
    np.testing.assert_array_equal(batched.should_stop, [True, False, True])
    np.testing.assert_array_equal(batched.stopped_step, [4, 0, 2])
    np.testing.assert_array_equal(batched.best_step, [2, 7, 0])
    np.testing.assert_array_equal(batched.best_value, [8.0, -2.0, 1.0])


# ---------------------------------------------------------------------------------------------
# inject_hyperparams without static_args
# ---------------------------------------------------------------------------------------------


def test_inject_hyperparams_without_static_args_traces_metrics_every():
    """``inject_hyperparams(prox_l1)`` also traces the int ``metrics_every`` (a default): the
    statistics then run behind a ``lax.cond``, still per λ under vmap."""
    params = {"w": jnp.array([1.0, 0.05, -2.0])}

    def run(lam):
        tx = optareg.chain(optax.sgd(LR), optax.inject_hyperparams(optareg.prox_l1)(0.0, LR))
        state = tx.init(params)
        state[1].hyperparams["l1"] = lam
        updates, state = tx.update({"w": jnp.zeros(3)}, state, params)
        return optax.apply_updates(params, updates)["w"], optareg.metrics(state)

    w, m = jax.jit(jax.vmap(run))(jnp.asarray(LAMBDAS, jnp.float32))
    x = np.array([1.0, 0.05, -2.0])
    for i, lam in enumerate(LAMBDAS):
        want = np.sign(x) * np.maximum(np.abs(x) - LR * lam, 0.0)
        np.testing.assert_allclose(w[i], want, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(m["prox_l1/zeros_fraction"][i], np.mean(want == 0), rtol=1e-6)


def test_inject_hyperparams_callable_mask_without_static_args():
    """inject_hyperparams calls a callable mask as a schedule (optax issue #57): with
    decay_mask or by_path that is a TypeError naming static_args, never a silent no-op; with
    static_args=('mask',) the decay acts on the kernel only."""
    tx = optareg.chain(
        optax.sgd(LR),
        optax.inject_hyperparams(optareg.decoupled_weight_decay)(
            0.5, mask=optareg.masks.decay_mask
        ),
    )
    params = {"dense": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}}
    zeros = jax.tree.map(jnp.zeros_like, params)
    with pytest.raises(TypeError, match="static_args"):
        tx.init(params)
    by_path = optax.inject_hyperparams(optax.add_decayed_weights)(
        0.5, mask=optareg.masks.by_path("kernel")
    )
    with pytest.raises(TypeError, match="static_args"):
        by_path.init(params)
    good = optareg.chain(
        optax.sgd(LR),
        optax.inject_hyperparams(optareg.decoupled_weight_decay, static_args=("mask",))(
            0.5, mask=optareg.masks.decay_mask
        ),
    )
    updates, _ = jax.jit(good.update)(zeros, good.init(params), params)
    np.testing.assert_allclose(updates["dense"]["kernel"], -0.5)  # θ ← θ − λθ on the kernel
    np.testing.assert_allclose(updates["dense"]["bias"], 0.0)


def test_random_walk_equilibrium_against_simulation():
    """The example's exact stationary values vs a float64 simulation of the same model, and the
    closed forms √(η/(2λ)), √(2ηλ(1−β₁)/(1+β₁)) as their small-ηλ limits (within 4 % at the
    example's ηλ = 8e-3, as its docstring says)."""
    mod = load_example("transformer_weight_decay")
    eta, d, b1 = 0.1, 0.05, 0.9
    rms, ratio = mod.random_walk_equilibrium(eta, d, b1)
    rng = np.random.default_rng(0)
    theta, m = np.zeros(20_000), np.zeros(20_000)
    sq, step_sq = [], []
    for t in range(600):
        m = b1 * m + (1 - b1) * rng.standard_normal(theta.shape)
        new = (1 - d) * theta - eta * m
        if t >= 300:  # stationary (time constant 1/(2d) = 10 steps)
            sq.append(np.mean(theta**2))
            step_sq.append(np.mean((new - theta) ** 2))
        theta = new
    np.testing.assert_allclose(rms, np.sqrt(np.mean(sq)), rtol=0.02)
    np.testing.assert_allclose(ratio, np.sqrt(np.mean(step_sq) / np.mean(sq)), rtol=0.02)
    lam = 2.0
    rms, ratio = mod.random_walk_equilibrium(4e-3, 4e-3 * lam, b1)
    np.testing.assert_allclose(rms, np.sqrt(4e-3 / (2 * lam)), rtol=0.04)
    np.testing.assert_allclose(ratio, np.sqrt(2 * 4e-3 * lam * (1 - b1) / (1 + b1)), rtol=0.04)
    rms, _ = mod.random_walk_equilibrium(1e-3, 1e-4, b1)  # the limit: ηλ → 0
    np.testing.assert_allclose(rms, np.sqrt(1e-3 / 2e-1), rtol=1e-3)


def test_lipschitz_transformer_smoke(tmp_path, capsys):
    """Tiny flags: every run trains, the soft-capped run keeps every matrix under the cap, the
    table and the PNG are written."""
    mod = load_example("lipschitz_transformer")
    argv = ["--steps", "6", "--eval-every", "3", "--d-model", "8", "--heads", "2"]
    argv += ["--layers", "1", "--context", "8", "--batch-size", "4", "--max-chars", "3000"]
    argv += ["--runs", "muon+soft_cap,muon+qk_clip"]  # two compilations, not four
    res = mod.main([*argv, "--out", str(tmp_path)])
    text = capsys.readouterr().out
    assert_png(tmp_path / "lipschitz_transformer.png")
    assert [r["run"] for r in res["runs"]] == ["muon+soft_cap", "muon+qk_clip"]
    for r in res["runs"]:
        assert np.isfinite(r["loss"]) and 0.0 <= r["val_acc"] <= 1.0, r["run"]
        assert np.isfinite(r["bound"]) and r["bound"] > 0, r["run"]
    capped = res["runs"][0]
    assert capped["sigma_max"] <= res["cap"] * (1 + 1e-4), capped["sigma_max"]
    for phrase in ("Lipschitz bound", "max logit", "saved"):
        assert phrase in text
    with pytest.raises(SystemExit):
        mod.main(["--runs", "sgd"])
