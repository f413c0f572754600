"""Tests of optareg.sharpness_monitor / hessian_top_eigenvalue against closed forms and dense
Hessians (jax.hessian of the flattened params, numpy.linalg.eigvalsh in float64)."""

from __future__ import annotations

import functools

import chex
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import serialization
from jax.flatten_util import ravel_pytree

import optareg

KEY_TOP = "sharpness_monitor/top_eigenvalue"
KEY_EOS = "sharpness_monitor/edge_of_stability"

# ---------------------------------------------------------------------------------------------
# quadratics ½θᵀAθ with a known spectrum, on a two-leaf tree (dot products must be global)
# ---------------------------------------------------------------------------------------------


def sym_with_spectrum(eigs, seed=0):
    n = len(eigs)
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(n, n)))
    return q @ np.diag(np.asarray(eigs, np.float64)) @ q.T


def quad_problem(a64, dtype=jnp.float32):
    """params {"a": (k,), "b": (1, n−k)} and grad_fn θ ↦ Aθ as a tree."""
    n = a64.shape[0]
    k = n // 2
    a = jnp.asarray(a64, dtype)

    def grad_fn(p):
        v = a @ jnp.concatenate([p["a"], p["b"].reshape(-1)])
        return {"a": v[:k], "b": v[k:].reshape(1, n - k)}

    params = {"a": jnp.ones(k, dtype), "b": jnp.ones((1, n - k), dtype)}
    return params, grad_fn


def monitor_once(tx, params, grad_fn):
    state = tx.init(params)
    updates = grad_fn(params)
    out, state = tx.update(updates, state, params, grad_fn=grad_fn)
    return out, state


@functools.partial(jax.jit, static_argnames="monitor")
def quad_estimates(a, num_iters, seed, monitor=False):
    """hessian_top_eigenvalue (and, with ``monitor``, the monitor's first measurement) for
    ½θᵀAθ; one compilation per size of ``a`` (``num_iters`` and ``seed`` are traced)."""
    params, grad_fn = quad_problem(a)
    lam = optareg.hessian_top_eigenvalue(grad_fn, params, num_iters=num_iters, seed=seed)
    if not monitor:
        return lam, lam
    tx = optareg.sharpness_monitor(num_iters=num_iters, seed=seed)
    _, state = monitor_once(tx, params, grad_fn)
    return lam, optareg.metrics(state)[KEY_TOP]


SPECTRA = {
    "mixed": [5.0, 4.0, 1.0, 0.5, -1.0, -2.0],
    "all_negative": [-1.0, -2.0, -3.0, -4.0, -5.0, -6.0],  # the top is -1
    "repeated": [2.0, 2.0, 1.0, 0.0, -0.5, -1.0],  # a repeated top eigenvalue
    "rank1": [7.0, 0.0, 0.0, 0.0, 0.0, 0.0],
    "neg_dominant6": [-10.0, 3.0, 2.9, 1.0, 0.0, -1.0],
}


def test_dominant_negative_eigenvalue_is_not_the_top():
    """Eigenvalues {-10, 3, 1}: power iteration would report -10; the estimate is 3."""
    lam, top = quad_estimates(sym_with_spectrum([-10.0, 3.0, 1.0]), 20, 0)
    assert lam.dtype == jnp.float32 and lam.shape == ()
    np.testing.assert_allclose([float(lam), float(top)], [3.0, 3.0], rtol=1e-6)


@pytest.mark.parametrize("name", list(SPECTRA))
def test_closed_form_spectra(name):
    a64 = sym_with_spectrum(SPECTRA[name], seed=len(name))
    want = np.linalg.eigvalsh(a64).max()
    lam, top = quad_estimates(a64, 30, 0, monitor=True)
    np.testing.assert_allclose([float(lam), float(top)], [want, want], rtol=1e-5, atol=1e-5)


def test_function_equals_first_measurement():
    a64 = sym_with_spectrum([4.0, 2.0, 1.0, -3.0, 0.5, 0.1], seed=4)
    for k in (1, 3):
        lam, top = quad_estimates(a64, k, 7, monitor=True)
        np.testing.assert_allclose(float(top), float(lam), rtol=1e-6)


def test_lower_bound_and_no_drift_over_many_iterations():
    """The Ritz value never exceeds λ_max (beyond rounding), even far past convergence, where the
    implicitly updated products would otherwise drift (a rank-one Hessian is the hard case)."""
    for eigs, seed in (([5.0] + [0.0] * 39, 1), (list(np.linspace(-1, 1, 40)), 2)):
        a64 = sym_with_spectrum(eigs, seed)
        want = np.linalg.eigvalsh(a64).max()
        lam, _ = quad_estimates(a64, 200, 0)
        assert float(lam) <= want + 1e-5 * abs(want) + 1e-6
        np.testing.assert_allclose(float(lam), want, rtol=1e-4)


def test_warm_start_tracks_with_few_iterations():
    """Same Hessian at every step: 2 HVPs per step, warm-started, reach λ_max; the estimates
    never decrease; one cold measurement with 2 HVPs is far off."""
    eigs = np.concatenate([[1.0], np.linspace(-0.9, 0.9, 39)])
    a64 = sym_with_spectrum(eigs, seed=3)
    params, grad_fn = quad_problem(a64)
    tx = optareg.sharpness_monitor(num_iters=2)
    step = jax.jit(lambda s: tx.update(grad_fn(params), s, params, grad_fn=grad_fn)[1])
    state, tops = tx.init(params), []
    for _ in range(40):
        state = step(state)
        tops.append(float(state.top_eigenvalue))
    assert np.all(np.diff(tops) >= -1e-6)
    assert 1.0 - tops[0] > 0.05  # the cold first measurement
    np.testing.assert_allclose(tops[-1], 1.0, rtol=1e-3)


# ---------------------------------------------------------------------------------------------
# a non-quadratic loss with a closed-form Hessian: Σ ½θ² + sin θ has H = diag(1 − sin θ)
# ---------------------------------------------------------------------------------------------


def sin_loss(p):
    return sum(
        jnp.sum(0.5 * x.astype(jnp.float32) ** 2 + jnp.sin(x.astype(jnp.float32)))
        for x in jax.tree.leaves(p)
    )


def sin_grad_fn(p):
    return jax.tree.map(lambda g, x: g.astype(x.dtype), jax.grad(sin_loss)(p), p)


def sin_top(p):
    flat = np.concatenate([np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(p)])
    return float(np.max(1.0 - np.sin(flat)))


def sin_params(dtype=jnp.float32, seed=0):
    """θ: −1.4 and linspace(−0.4, 1, 15), permuted. H = diag(1 − sin θ) has its top 1.985 well
    separated from the rest (≤ 1.39), also after a few steps toward the minimum at θ ≈ −0.74."""
    flat = np.concatenate([[-1.4], np.linspace(-0.4, 1.0, 15)])
    flat = np.random.default_rng(seed).permutation(flat)
    return {"w": jnp.asarray(flat[:12].reshape(3, 4), dtype), "b": jnp.asarray(flat[12:], dtype)}


def run(tx, params, steps, lr=0.1, grad_fn=sin_grad_fn):
    """``steps`` SGD steps through ``tx`` in a ``lax.scan``; per-step updates, params, states."""

    def body(carry, _):
        p, s = carry
        u, s = tx.update(grad_fn(p), s, p, grad_fn=grad_fn)
        u = jax.tree.map(lambda x: -lr * x, u)
        return (optax.apply_updates(p, u), s), (u, p, s)

    _, out = jax.jit(lambda p: jax.lax.scan(body, (p, tx.init(p)), None, length=steps))(params)
    return out


def test_metrics_every_holds_values_and_updates_are_bit_identical():
    params = sin_params()
    k, steps = 3, 8
    u_mon, ps, states = run(
        optareg.sharpness_monitor(num_iters=12, metrics_every=k, learning_rate=0.1), params, steps
    )
    u_ref, _, _ = run(optax.with_extra_args_support(optax.identity()), params, steps)
    chex.assert_trees_all_equal(u_mon, u_ref)  # pass-through, bit for bit
    tops = np.asarray(states.top_eigenvalue)
    eos = np.asarray(states.edge_of_stability)
    for t in range(steps):
        p_t = jax.tree.map(lambda x: x[t], ps)
        if t % k == 0:
            np.testing.assert_allclose(tops[t], sin_top(p_t), rtol=1e-5)
            if t:
                assert tops[t] != tops[t - 1]
        else:
            assert tops[t] == tops[t - 1] and eos[t] == eos[t - 1]
    np.testing.assert_allclose(eos, tops * 0.1 / 2, rtol=1e-6)


def test_tracks_along_training_and_lax_scan():
    """Every step measured with 3 HVPs, warm-started: equal to 1 − min sin θ at every step after
    the first few, as θ moves (the scan carries the state)."""
    _, ps, states = run(optareg.sharpness_monitor(num_iters=3), sin_params(seed=1), 12, lr=0.1)
    for t in range(4, 12):
        want = sin_top(jax.tree.map(lambda x: x[t], ps))
        np.testing.assert_allclose(float(states.top_eigenvalue[t]), want, rtol=1e-4)


def test_jit_matches_eager():
    tx = optareg.sharpness_monitor(num_iters=5, learning_rate=optax.linear_schedule(0.2, 0.1, 4))
    params = sin_params(seed=2)
    s_eager = s_jit = tx.init(params)
    update = jax.jit(lambda g, s, p: tx.update(g, s, p, grad_fn=sin_grad_fn))
    for i in range(3):
        g = sin_grad_fn(params)
        u_j, s_jit = update(g, s_jit, params)
        chex.assert_trees_all_equal(u_j, g)
        if i < 2:  # eager compiles the loop at every call: two steps are enough
            u_e, s_eager = tx.update(g, s_eager, params, grad_fn=sin_grad_fn)
            chex.assert_trees_all_equal(u_e, g)
            chex.assert_trees_all_close(s_eager, s_jit, rtol=1e-5, atol=1e-6)
        params = jax.tree.map(lambda p, u: p - 0.3 * u, params, g)
    # the schedule is evaluated on the monitor's counter: η at count 2 is 0.2 − 2·0.025 = 0.15
    np.testing.assert_allclose(
        float(s_jit.edge_of_stability), float(s_jit.top_eigenvalue) * 0.15 / 2, rtol=1e-6
    )


def test_no_hvp_on_skipped_steps():
    """metrics_every=3, num_iters=4: 4 grad_fn evaluations (HVPs) on steps 0, 3, 6, none else."""
    calls = []
    curv = jnp.array([-10.0, 3.0, 1.0])

    def grad_fn(p):
        jax.debug.callback(lambda: calls.append(1))
        return curv * p

    tx = optareg.chain(optareg.sharpness_monitor(num_iters=4, metrics_every=3), optax.sgd(0.01))
    step = jax.jit(lambda p, s: tx.update(curv * p, s, p, grad_fn=grad_fn))
    params, state, per_step = jnp.ones(3), tx.init(jnp.ones(3)), []
    for _ in range(7):
        before = len(calls)
        updates, state = step(params, state)
        jax.block_until_ready(updates)
        jax.effects_barrier()
        per_step.append(len(calls) - before)
        params = optax.apply_updates(params, updates)
    assert per_step == [4, 0, 0, 4, 0, 0, 4]


# ---------------------------------------------------------------------------------------------
# a small MLP: the dense Hessian of the flattened params, eigvalsh in float64
# ---------------------------------------------------------------------------------------------


def mlp_setup():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(32, 4))
    y = rng.integers(0, 3, size=32)
    params = {
        "l1": {"w": rng.normal(size=(4, 8)) * 0.7, "b": np.zeros(8)},
        "l2": {"w": rng.normal(size=(8, 3)) * 0.5, "b": np.zeros(3)},
    }

    def loss(p, x=x, y=y):
        h = jnp.tanh(x @ p["l1"]["w"] + p["l1"]["b"])
        logits = h @ p["l2"]["w"] + p["l2"]["b"]
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    return params, loss


def dense_top(loss, param_list):
    """λ_max of the dense float64 Hessian (jax.hessian of the flattened params, eigvalsh)."""
    with jax.enable_x64(True):
        flat0, unravel = ravel_pytree(
            jax.tree.map(lambda v: jnp.asarray(v, jnp.float64), param_list[0])
        )
        hess_fn = jax.jit(jax.hessian(lambda f: loss(unravel(f))))
        out = []
        for p in param_list:
            flat = jnp.asarray(np.asarray(ravel_pytree(p)[0]), jnp.float64)
            hess = np.asarray(hess_fn(flat), np.float64)
            out.append(float(np.linalg.eigvalsh((hess + hess.T) / 2).max()))
    return out


def test_mlp_matches_dense_hessian():
    """After a few warm-started steps with 4 HVPs each: within 2 % of the dense λ_max (measured:
    ~1e-5 relative), and never above it."""
    params64, loss = mlp_setup()
    params = jax.tree.map(lambda v: jnp.asarray(v, jnp.float32), params64)
    grad_fn = jax.grad(lambda p: loss(p))
    tx = optareg.sharpness_monitor(num_iters=4)
    _, ps, states = run(tx, params, 12, lr=1.0, grad_fn=grad_fn)
    steps = (6, 11)
    wants = dense_top(loss, [jax.tree.map(lambda x: x[t], ps) for t in steps])
    for t, want in zip(steps, wants, strict=True):
        got = float(states.top_eigenvalue[t])
        assert abs(got - want) <= 0.02 * want, (t, got, want)
        assert got <= want * (1 + 1e-4)


# ---------------------------------------------------------------------------------------------
# dtypes, masks, degenerate Hessians
# ---------------------------------------------------------------------------------------------


def test_float64_x64():
    with jax.enable_x64(True):
        a64 = sym_with_spectrum([3.0, -5.0, 1.0, 0.25, 2.5], seed=6)
        params, grad_fn = quad_problem(a64, jnp.float64)
        tx = optareg.sharpness_monitor(num_iters=20, learning_rate=0.1)
        state0 = tx.init(params)
        assert jax.tree.leaves(state0.vector)[0].dtype == jnp.float64
        step = jax.jit(lambda s: tx.update(grad_fn(params), s, params, grad_fn=grad_fn)[1])
        state = state0
        for _ in range(3):
            state = step(state)
            chex.assert_trees_all_equal_shapes_and_dtypes(state, state0)
        assert state.top_eigenvalue.dtype == jnp.float32
        np.testing.assert_allclose(float(state.top_eigenvalue), 3.0, rtol=1e-7)


def test_bfloat16_params():
    params = sin_params(jnp.bfloat16, seed=3)
    tx = optareg.sharpness_monitor(num_iters=10)
    state0 = tx.init(params)
    assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(state0.vector))
    u, state = tx.update(sin_grad_fn(params), state0, params, grad_fn=sin_grad_fn)
    chex.assert_trees_all_equal_shapes_and_dtypes(state, state0)
    chex.assert_trees_all_equal_shapes_and_dtypes(u, params)
    np.testing.assert_allclose(float(state.top_eigenvalue), sin_top(params), rtol=2e-2)


def test_mask_estimates_the_block():
    """mask {"a": True, "b": False}: λ_max of the block A_aa; the vector is zero on "b"."""
    a64 = sym_with_spectrum([4.0, -6.0, 2.0, 1.0, 0.5, 3.0], seed=8)
    params, grad_fn = quad_problem(a64)
    want = np.linalg.eigvalsh(a64[:3, :3]).max()
    tx = optareg.sharpness_monitor(num_iters=10, mask={"a": True, "b": False})
    _, state = jax.jit(lambda: monitor_once(tx, params, grad_fn))()
    np.testing.assert_allclose(float(state.top_eigenvalue), want, rtol=1e-5)
    np.testing.assert_array_equal(state.vector["b"], 0.0)
    np.testing.assert_allclose(float(jnp.linalg.norm(state.vector["a"])), 1.0, rtol=1e-6)
    # a mask function of the params selects the same block
    by_fn = optareg.sharpness_monitor(mask=lambda p: {"a": True, "b": False}).init(params)
    chex.assert_trees_all_equal(by_fn.vector, tx.init(params).vector)


def test_equinox_module_mask_is_a_tree():
    """An Equinox module of bools is callable, but a mask tree (optax semantics)."""
    model = eqx.nn.Linear(3, 2, key=jax.random.PRNGKey(0))
    mask = jax.tree.map(lambda _: False, model)
    mask = eqx.tree_at(lambda m: m.weight, mask, True)
    x = jnp.asarray(np.random.default_rng(9).normal(size=(16, 3)), jnp.float32)

    def loss(m):
        return jnp.mean(jnp.sum(jax.vmap(m)(x) ** 2, axis=-1))

    grad_fn = eqx.filter_grad(loss)
    _, state = monitor_once(optareg.sharpness_monitor(num_iters=12, mask=mask), model, grad_fn)
    flat_w = model.weight.reshape(-1)
    hess = jax.hessian(lambda w: loss(eqx.tree_at(lambda m: m.weight, model, w.reshape(2, 3))))(
        flat_w
    )
    want = np.linalg.eigvalsh(np.asarray(hess, np.float64)).max()
    np.testing.assert_allclose(float(state.top_eigenvalue), want, rtol=1e-5)
    np.testing.assert_array_equal(state.vector.bias, 0.0)


def test_empty_mask_zero_hessian_and_nonfinite():
    params, _ = quad_problem(sym_with_spectrum([1.0, 2.0, 3.0, 4.0]))

    def never(p):
        raise AssertionError("an empty block must not call grad_fn")

    tx = optareg.sharpness_monitor(mask={"a": False, "b": False})
    _, state = tx.update(params, tx.init(params), params, grad_fn=never)
    assert float(state.top_eigenvalue) == 0.0
    chex.assert_trees_all_equal(state.vector, jax.tree.map(jnp.zeros_like, params))
    # zero gradients, so a zero Hessian: estimate 0 (and edge 0), never NaN
    tx = optareg.sharpness_monitor(learning_rate=0.1)
    zeros = lambda p: jax.tree.map(jnp.zeros_like, p)  # noqa: E731
    _, state = jax.jit(lambda: tx.update(zeros(params), tx.init(params), params, grad_fn=zeros))()
    assert float(state.top_eigenvalue) == 0.0 and float(state.edge_of_stability) == 0.0
    chex.assert_tree_all_finite(state)
    np.testing.assert_allclose(float(optax.tree.norm(state.vector)), 1.0, rtol=1e-6)
    # a NaN Hessian: reported, but the warm start is kept (finite)
    nan = lambda p: jax.tree.map(lambda x: x * jnp.nan, p)  # noqa: E731
    state0 = tx.init(params)
    _, state = jax.jit(lambda: tx.update(params, state0, params, grad_fn=nan))()
    assert np.isnan(float(state.top_eigenvalue))
    chex.assert_trees_all_equal(state.vector, state0.vector)


# ---------------------------------------------------------------------------------------------
# composition, inject_hyperparams, checkpoints, errors
# ---------------------------------------------------------------------------------------------


def test_composes_with_sam_perturb():
    """chain(sharpness_monitor, sam_perturb, sgd): the SAM updates bit for bit, and λ_max at θ."""
    params = sin_params(seed=4)
    with_monitor = optareg.chain(
        optareg.sharpness_monitor(num_iters=12), optareg.sam_perturb(0.05), optax.sgd(0.1)
    )
    plain = optareg.chain(optareg.sam_perturb(0.05), optax.sgd(0.1))
    step_m = jax.jit(lambda s, p: with_monitor.update(sin_grad_fn(p), s, p, grad_fn=sin_grad_fn))
    step_p = jax.jit(lambda s, p: plain.update(sin_grad_fn(p), s, p, grad_fn=sin_grad_fn))
    s_m, s_p = with_monitor.init(params), plain.init(params)
    for _ in range(3):
        u_m, s_m = step_m(s_m, params)
        u_p, s_p = step_p(s_p, params)
        chex.assert_trees_all_equal(u_m, u_p)
        m = optareg.metrics(s_m)
        np.testing.assert_allclose(float(m[KEY_TOP]), sin_top(params), rtol=1e-5)
        assert "sam_perturb/cos" in m
        params = optax.apply_updates(params, u_m)


def test_inject_hyperparams():
    """num_iters and learning_rate injected (traced under jit), with and without metrics_every
    in static_args: the same metrics as the plain transform."""
    params = sin_params(seed=5)
    plain = optareg.sharpness_monitor(num_iters=4, metrics_every=2, learning_rate=0.1)
    injected = optax.inject_hyperparams(optareg.sharpness_monitor, static_args=("metrics_every",))(
        num_iters=4, metrics_every=2, learning_rate=0.1
    )
    s_p, s_i = plain.init(params), injected.init(params)
    up = jax.jit(lambda s, p: plain.update(sin_grad_fn(p), s, p, grad_fn=sin_grad_fn))
    ui = jax.jit(lambda s, p: injected.update(sin_grad_fn(p), s, p, grad_fn=sin_grad_fn))
    for _ in range(3):
        u_p, s_p = up(s_p, params)
        u_i, s_i = ui(s_i, params)
        chex.assert_trees_all_equal(u_p, u_i)
        chex.assert_trees_all_close(optareg.metrics(s_p), optareg.metrics(s_i), rtol=1e-6)
        params = jax.tree.map(lambda p, u: p - 0.2 * u, params, u_p)
    assert "learning_rate" in s_i.hyperparams and "num_iters" in s_i.hyperparams
    # without static_args every number is injected (metrics_every and num_iters traced)
    traced = optax.inject_hyperparams(optareg.sharpness_monitor)(
        num_iters=4, metrics_every=2, learning_rate=0.1
    )
    ut = jax.jit(lambda s, p: traced.update(sin_grad_fn(p), s, p, grad_fn=sin_grad_fn))
    s_t = traced.init(params)
    s_p = plain.init(params)
    for _ in range(3):
        _, s_t = ut(s_t, params)
        _, s_p = up(s_p, params)
        chex.assert_trees_all_close(optareg.metrics(s_p), optareg.metrics(s_t), rtol=1e-6)


def test_checkpoint_roundtrip_flax():
    """6 steps uninterrupted == 3 steps, flax.serialization round trip into a fresh init, 3 more."""
    tx = optareg.chain(optareg.sharpness_monitor(num_iters=3, learning_rate=0.1), optax.sgd(0.1))
    step = jax.jit(
        lambda p, s: (lambda u, s: (optax.apply_updates(p, u), s))(
            *tx.update(sin_grad_fn(p), s, p, grad_fn=sin_grad_fn)
        )
    )
    params0 = sin_params(seed=6)
    full = (params0, tx.init(params0))
    for _ in range(6):
        full = step(*full)
    half = (params0, tx.init(params0))
    for _ in range(3):
        half = step(*half)
    data = serialization.to_bytes(half)
    fresh = optareg.chain(optareg.sharpness_monitor(num_iters=3, learning_rate=0.1), optax.sgd(0.1))
    restored = serialization.from_bytes((params0, fresh.init(params0)), data)
    chex.assert_trees_all_equal(restored, half)
    for _ in range(3):
        restored = step(*restored)
    chex.assert_trees_all_equal(restored, full)


def test_tree_map_params_sees_the_vector():
    tx = optareg.sharpness_monitor()
    params = sin_params()
    state = tx.init(params)
    mapped = optax.tree.map_params(tx, lambda p: p * 0, state)
    chex.assert_trees_all_equal(mapped.vector, jax.tree.map(jnp.zeros_like, params))
    assert mapped.top_eigenvalue is state.top_eigenvalue


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"num_iters": 0}, ValueError, "num_iters"),
        ({"num_iters": 2.5}, TypeError, "num_iters"),
        ({"num_iters": True}, TypeError, "num_iters"),
        ({"metrics_every": 0}, ValueError, "metrics_every"),
        ({"seed": "0"}, TypeError, "seed"),
        ({"learning_rate": 0.0}, ValueError, "learning_rate"),
        ({"learning_rate": -0.1}, ValueError, "learning_rate"),
        ({"learning_rate": float("nan")}, ValueError, "learning_rate"),
        ({"learning_rate": "fast"}, TypeError, "learning_rate"),
        ({"mask": {"w": 1.0}}, TypeError, "mask"),
    ],
)
def test_bad_arguments_fail_at_construction(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        optareg.sharpness_monitor(**kwargs)
    if "num_iters" in kwargs or "seed" in kwargs:
        with pytest.raises(exc, match=match):
            optareg.hessian_top_eigenvalue(sin_grad_fn, sin_params(), **kwargs)


def test_update_errors():
    params = sin_params()
    tx = optareg.sharpness_monitor()
    state = tx.init(params)
    with pytest.raises(ValueError, match="grad_fn"):
        tx.update(params, state, params)
    with pytest.raises(ValueError, match="params"):
        tx.update(params, state, None, grad_fn=sin_grad_fn)
    with pytest.raises(ValueError, match="grad_fn"):  # (loss, grads) instead of grads
        tx.update(params, state, params, grad_fn=jax.value_and_grad(sin_loss))
    masked = optax.masked(optareg.sharpness_monitor(), {"w": True, "b": False})
    with pytest.raises(ValueError, match="optax.masked"):
        masked.update(params, masked.init(params), params, grad_fn=sin_grad_fn)
    with pytest.raises(ValueError, match="misplaced"):
        optareg.chain(optax.sgd(0.1), optareg.sharpness_monitor())
