"""Tests of the proximal transforms: scikit-learn parity, exact zeros, ProxAdam vs numpy."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from sklearn.datasets import load_diabetes
from sklearn.linear_model import ElasticNet, Lasso

import optareg

# ---------------------------------------------------------------------------------------------
# ISTA through optax.chain(optax.sgd(η), prox(·, η)) reaches scikit-learn's solutions
# ---------------------------------------------------------------------------------------------

ITERS = 30_000


@pytest.fixture(scope="module")
def diabetes():
    x, y = load_diabetes(return_X_y=True)
    lipschitz = float(np.linalg.eigvalsh(x.T @ x / len(y)).max())  # of ∇ ½·mean((Xw − y)²)
    return x, y, 1.0 / lipschitz


def _ista(x, y, eta, make_prox, strengths):
    """Run ``chain(sgd(η), prox)`` for ITERS steps in one jitted fori_loop, in float64."""
    with jax.enable_x64(True):
        xj, yj = jnp.asarray(x), jnp.asarray(y)

        def loss(w):
            return 0.5 * jnp.mean((xj @ w - yj) ** 2)

        @jax.jit
        def fit(strengths):
            tx = optax.chain(optax.sgd(eta), make_prox(*strengths, eta))
            w = jnp.zeros(x.shape[1])
            state = tx.init(w)

            def body(_, carry):
                w, state = carry
                u, state = tx.update(jax.grad(loss)(w), state, w)
                return optax.apply_updates(w, u), state

            return jax.lax.fori_loop(0, ITERS, body, (w, state))

        w, state = fit(tuple(jnp.asarray(s, jnp.float64) for s in strengths))
        return np.asarray(w), state


def _assert_same_solution(w, w_ref):
    np.testing.assert_array_equal(w != 0, w_ref != 0)  # identical support
    assert np.linalg.norm(w - w_ref) <= 1e-4 * np.linalg.norm(w_ref)
    np.testing.assert_allclose(w, w_ref, rtol=1e-4, atol=1e-4 * np.abs(w_ref).max())


@pytest.mark.parametrize("alpha", [0.1, 0.5, 1.0])  # 7, 4 and 3 non-zeros of 10
def test_prox_l1_ista_matches_sklearn_lasso(diabetes, alpha):
    x, y, eta = diabetes
    # sklearn Lasso: 1/(2n)‖y − Xw‖² + α‖w‖₁, i.e. ½·mean((Xw − y)²) + α‖w‖₁: l1 = α.
    ref = Lasso(alpha=alpha, fit_intercept=False, tol=1e-14, max_iter=1_000_000).fit(x, y).coef_
    w, state = _ista(x, y, eta, optareg.prox_l1, (alpha,))
    _assert_same_solution(w, ref)
    zeros = float(optareg.metrics(state)["prox_l1/zeros_fraction"])
    assert zeros == pytest.approx(np.mean(ref == 0))


@pytest.mark.parametrize(
    ("alpha", "l1_ratio"), [(0.1, 0.99), (0.5, 0.95), (1.0, 0.7)]
)  # 8, 8, 7 non-zeros
def test_prox_elastic_net_ista_matches_sklearn(diabetes, alpha, l1_ratio):
    x, y, eta = diabetes
    # sklearn ElasticNet: 1/(2n)‖y − Xw‖² + αρ‖w‖₁ + α(1 − ρ)/2‖w‖² → λ₁ = αρ, λ₂ = α(1 − ρ).
    ref = (
        ElasticNet(
            alpha=alpha, l1_ratio=l1_ratio, fit_intercept=False, tol=1e-14, max_iter=1_000_000
        )
        .fit(x, y)
        .coef_
    )
    assert 0 < np.sum(ref == 0) < ref.size  # a genuinely sparse, non-trivial solution
    w, _ = _ista(x, y, eta, optareg.prox_elastic_net, (alpha * l1_ratio, alpha * (1 - l1_ratio)))
    _assert_same_solution(w, ref)


# ---------------------------------------------------------------------------------------------
# one step: exact zeros, dtypes, masks, schedules
# ---------------------------------------------------------------------------------------------


def _params(dtype):
    rng = np.random.default_rng(0)
    return {
        "w": jnp.asarray(rng.normal(size=(6, 4)), dtype),
        "b": jnp.asarray(rng.normal(size=(4,)), dtype),
        "conv": jnp.asarray(rng.normal(size=(3, 3, 2, 4)), dtype),
    }


TRANSFORMS = {
    "l1": lambda: optareg.prox_l1(3.0, 0.2),
    "enet": lambda: optareg.prox_elastic_net(3.0, 1.0, 0.2),
    "group": lambda: optareg.prox_group_lasso(6.0, 0.2),
    "group_mask": lambda: optareg.prox_group_lasso(
        6.0, 0.2, mask={"w": True, "b": True, "conv": False}
    ),
    "nuclear": lambda: optareg.prox_nuclear(30.0, 0.2),
    "adam": lambda: optareg.prox_adam(0.2, 30.0),
}


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_exact_zeros_after_a_step(name, dtype):
    tx = TRANSFORMS[name]()
    params = _params(dtype)
    grads = jax.tree.map(lambda p: (0.1 * p).astype(dtype), params)
    state = tx.init(params)
    updates, state = jax.jit(tx.update)(grads, state, params)
    chex.assert_trees_all_equal_shapes_and_dtypes(updates, params)
    new = optax.apply_updates(params, updates)
    chex.assert_trees_all_equal_shapes_and_dtypes(new, params)
    leaves = jax.tree.leaves(new)
    n_zero = sum(int(np.sum(np.asarray(x, np.float32) == 0.0)) for x in leaves)
    assert n_zero > 0
    frac = optareg.metrics(state)
    (key,) = [k for k in frac if k.endswith("/zeros_fraction")]
    assert set(frac) <= {key, key.replace("zeros_fraction", "penalty")}
    assert 0.0 < float(frac[key]) <= 1.0
    # Every zero is an exact 0.0; every other entry is not tiny (no subnormal residue).
    for x in leaves:
        a = np.abs(np.asarray(x, np.float32))
        assert np.all((a == 0) | (a > 1e-6))


def test_l1_step_equals_soft_threshold_of_sgd_step():
    params = _params(jnp.float32)
    grads = jax.tree.map(lambda p: 0.3 * jnp.sin(p), params)
    eta, lam = 0.2, 2.0
    tx = optax.chain(optax.sgd(eta), optareg.prox_l1(lam, eta))
    u, state = tx.update(grads, tx.init(params), params)
    new = optax.apply_updates(params, u)
    for k in params:
        x = np.asarray(params[k] - eta * grads[k], np.float64)
        ref = np.sign(x) * np.maximum(np.abs(x) - eta * lam, 0)
        np.testing.assert_allclose(new[k], ref, atol=1e-6)
        np.testing.assert_array_equal(np.asarray(new[k]) == 0, ref == 0)
    total = sum(p.size for p in params.values())
    zeros = sum(int(np.sum(np.asarray(v) == 0)) for v in new.values())
    assert float(optareg.metrics(state)["prox_l1/zeros_fraction"]) == pytest.approx(zeros / total)


def test_schedules_are_evaluated_on_the_transforms_own_counter():
    # τ_t = η_t·λ_t at t = 0, 1, 2 with both schedules; the prox sees zero updates.
    lr = optax.linear_schedule(1.0, 0.5, 2)  # 1.0, 0.75, 0.5
    lam = optax.linear_schedule(0.1, 0.3, 2)  # 0.1, 0.2, 0.3
    tx = optareg.prox_l1(lam, lr)
    params = jnp.array([1.0, -1.0, 0.05])
    state = tx.init(params)
    expected = params
    for t in range(3):
        u, state = tx.update(jnp.zeros(3), state, params)
        params = optax.apply_updates(params, u)
        tau = (1.0 - 0.25 * t) * (0.1 + 0.1 * t)
        expected = np.sign(expected) * np.maximum(np.abs(expected) - tau, 0)
        np.testing.assert_allclose(params, expected, rtol=1e-6)
    assert int(state.count) == 3


def test_masked_leaves_untouched():
    params = _params(jnp.float32)
    grads = jax.tree.map(jnp.zeros_like, params)
    tx = optareg.prox_l1(100.0, 1.0, mask={"w": True, "b": False, "conv": False})
    new = optax.apply_updates(params, tx.update(grads, tx.init(params), params)[0])
    np.testing.assert_array_equal(new["w"], 0.0)
    np.testing.assert_array_equal(new["b"], params["b"])
    np.testing.assert_array_equal(new["conv"], params["conv"])


def test_group_lasso_leaf_selection_and_axis():
    params = _params(jnp.float32)
    grads = jax.tree.map(jnp.zeros_like, params)
    tau = 1.0
    # Default: 1-D leaves pass through; matrices grouped along the last axis.
    tx = optareg.prox_group_lasso(tau, 1.0)
    new = optax.apply_updates(params, tx.update(grads, tx.init(params), params)[0])
    np.testing.assert_array_equal(new["b"], params["b"])
    w = np.asarray(params["w"], np.float64)
    norms = np.linalg.norm(w, axis=0)
    ref = np.maximum(1 - tau * np.sqrt(6) / norms, 0) * w
    np.testing.assert_allclose(new["w"], ref, rtol=1e-5, atol=1e-6)
    c = np.asarray(params["conv"], np.float64).reshape(-1, 4)
    cref = np.maximum(1 - tau * np.sqrt(18) / np.linalg.norm(c, axis=0), 0) * c
    np.testing.assert_allclose(np.asarray(new["conv"]).reshape(-1, 4), cref, rtol=1e-5, atol=1e-6)
    # Masked in: a 1-D leaf is thresholded per entry (|g| = 1), i.e. plain L1.
    tx = optareg.prox_group_lasso(tau, 1.0, mask={"w": False, "b": True, "conv": False})
    new = optax.apply_updates(params, tx.update(grads, tx.init(params), params)[0])
    b = np.asarray(params["b"], np.float64)
    np.testing.assert_allclose(new["b"], np.sign(b) * np.maximum(np.abs(b) - tau, 0), atol=1e-6)
    np.testing.assert_array_equal(new["w"], params["w"])
    # axis that a selected leaf lacks: a clear error.
    tx = optareg.prox_group_lasso(tau, 1.0, axis=2)
    with pytest.raises(ValueError, match="axis"):
        tx.update(grads, tx.init(params), params)


def test_group_lasso_removes_whole_units():
    w = jnp.array([[3.0, 0.1, 1.0], [4.0, 0.1, -1.0]])  # column (unit) norms 5, 0.14, 1.41
    tx = optax.chain(optax.sgd(1.0), optareg.prox_group_lasso(0.5, 1.0))  # τ√|g| = 0.707
    new = optax.apply_updates(w, tx.update(jnp.zeros_like(w), tx.init(w), w)[0])
    np.testing.assert_array_equal(new[:, 1], 0.0)
    assert np.all(np.asarray(new[:, [0, 2]]) != 0)


def test_nuclear_batches_leading_axes_and_skips_vectors():
    params = _params(jnp.float32)
    grads = jax.tree.map(jnp.zeros_like, params)
    tau = 0.8
    tx = optareg.prox_nuclear(tau, 1.0)
    new = optax.apply_updates(params, tx.update(grads, tx.init(params), params)[0])
    np.testing.assert_array_equal(new["b"], params["b"])
    for key in ("w", "conv"):
        x = np.asarray(params[key], np.float64)
        u, s, vh = np.linalg.svd(x, full_matrices=False)
        ref = (u * np.maximum(s - tau, 0)[..., None, :]) @ vh
        np.testing.assert_allclose(new[key], ref, atol=1e-5)


@pytest.mark.parametrize(
    ("factory", "kwargs", "match"),
    [
        (optareg.prox_l1, {"l1": -1.0, "learning_rate": 0.1}, "l1"),
        (optareg.prox_l1, {"l1": 1.0, "learning_rate": 0.0}, "learning_rate"),
        (optareg.prox_l1, {"l1": 1.0, "learning_rate": -0.1}, "learning_rate"),
        (optareg.prox_l1, {"l1": float("nan"), "learning_rate": 0.1}, "l1"),
        (optareg.prox_elastic_net, {"l1": 1.0, "l2": -0.1, "learning_rate": 0.1}, "l2"),
        (optareg.prox_group_lasso, {"strength": -1.0, "learning_rate": 0.1}, "strength"),
        (optareg.prox_group_lasso, {"strength": 1.0, "learning_rate": 0.1, "axis": 1.0}, "axis"),
        (optareg.prox_group_lasso, {"strength": 1.0, "learning_rate": 0.1, "axis": "0"}, "axis"),
        (optareg.prox_nuclear, {"strength": -1.0, "learning_rate": 0.1}, "strength"),
        (optareg.prox_nuclear, {"strength": 1.0, "learning_rate": lambda c: -0.1}, "learning_rate"),
        (optareg.prox_adam, {"learning_rate": 0.0, "l1": 1.0}, "learning_rate"),
        (optareg.prox_adam, {"learning_rate": 0.1, "l1": -1.0}, "l1"),
        (optareg.prox_adam, {"learning_rate": 0.1, "l1": 1.0, "b1": 1.0}, "b1"),
        (optareg.prox_adam, {"learning_rate": 0.1, "l1": 1.0, "b2": -0.1}, "b2"),
        (optareg.prox_adam, {"learning_rate": 0.1, "l1": 1.0, "eps": -1e-8}, "eps"),
        (
            optareg.prox_adam,
            {"learning_rate": 0.1, "l1": 1.0, "weight_decay": -1.0},
            "weight_decay",
        ),
        (optareg.prox_l1, {"l1": 1.0, "learning_rate": 0.1, "mask": {"w": 1.0}}, "mask"),
    ],
)
def test_bad_arguments_raise_at_construction(factory, kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        factory(**kwargs)


def test_missing_params_is_a_clear_error():
    tx = optareg.prox_l1(1.0, 0.1)
    with pytest.raises(ValueError, match="params"):
        tx.update(jnp.zeros(3), tx.init(jnp.zeros(3)))


# ---------------------------------------------------------------------------------------------
# ProxAdam against a numpy reimplementation
# ---------------------------------------------------------------------------------------------


def _numpy_prox_adam(params, grads_seq, lr, lam, b1, b2, eps, wd, mask):
    m = {k: np.zeros_like(v) for k, v in params.items()}
    v = {k: np.zeros_like(v) for k, v in params.items()}
    theta = {k: x.copy() for k, x in params.items()}
    out = []
    for t, grads in enumerate(grads_seq, start=1):
        for k in theta:
            g = grads[k]
            m[k] = b1 * m[k] + (1 - b1) * g
            v[k] = b2 * v[k] + (1 - b2) * g * g
            mh, vh = m[k] / (1 - b1**t), v[k] / (1 - b2**t)
            d = np.sqrt(vh) + eps
            x = theta[k] - lr(t - 1) * mh / d
            if mask[k]:
                x = x - lr(t - 1) * wd * theta[k]
                thr = lr(t - 1) * lam / d
                x = np.sign(x) * np.maximum(np.abs(x) - thr, 0)
            theta[k] = x
        out.append({k: x.copy() for k, x in theta.items()})
    return out, m, v


@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_prox_adam_matches_numpy(wd):
    rng = np.random.default_rng(3)
    params = {"w": rng.normal(size=(5, 4)), "b": rng.normal(size=(4,))}
    grads_seq = [
        {
            k: rng.normal(size=p.shape) * rng.uniform(0.01, 2.0, size=p.shape)
            for k, p in params.items()
        }
        for _ in range(5)
    ]
    lam, b1, b2, eps = 0.5, 0.8, 0.95, 1e-3
    schedule = optax.linear_schedule(0.1, 0.02, 4)
    mask = {"w": True, "b": False}
    ref, m_ref, v_ref = _numpy_prox_adam(
        params, grads_seq, lambda c: float(schedule(c)), lam, b1, b2, eps, wd, mask
    )
    tx = optareg.prox_adam(schedule, lam, b1=b1, b2=b2, eps=eps, weight_decay=wd, mask=mask)
    p = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
    state = tx.init(p)
    update = jax.jit(tx.update)
    n_zero_w = 0
    for grads, expect in zip(grads_seq, ref, strict=True):
        g = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), grads)
        u, state = update(g, state, p)
        p = optax.apply_updates(p, u)
        for k in p:
            np.testing.assert_allclose(p[k], expect[k], rtol=2e-5, atol=2e-6)
            np.testing.assert_array_equal(np.asarray(p[k]) == 0, expect[k] == 0)
        n_zero_w = int(np.sum(expect["w"] == 0))
        assert float(optareg.metrics(state)["prox_adam/zeros_fraction"]) == pytest.approx(
            n_zero_w / 20
        )
    assert n_zero_w > 0
    assert np.all(expect["b"] != 0)  # masked out: no prox on the bias
    for k in p:
        np.testing.assert_allclose(state.mu[k], m_ref[k], rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(state.nu[k], v_ref[k], rtol=1e-5, atol=1e-7)
    assert int(state.count) == 5


def test_prox_adam_without_l1_is_adam_and_adamw():
    rng = np.random.default_rng(4)
    p = {"w": jnp.asarray(rng.normal(size=(3, 3)), jnp.float32)}
    for wd in (0.0, 0.01):
        ours = optareg.prox_adam(1e-2, 0.0, weight_decay=wd)
        ref = optax.adamw(1e-2, weight_decay=wd)
        so, sr, po, pr = ours.init(p), ref.init(p), p, p
        for _ in range(3):
            g = jax.tree.map(lambda x: jnp.cos(x), po)
            uo, so = ours.update(g, so, po)
            ur, sr = ref.update(g, sr, pr)
            po, pr = optax.apply_updates(po, uo), optax.apply_updates(pr, ur)
        np.testing.assert_allclose(po["w"], pr["w"], rtol=1e-6, atol=1e-6)


def test_prox_adam_eps_zero_and_zero_grads_are_finite():
    tx = optareg.prox_adam(0.1, 0.5, eps=0.0)
    p = jnp.array([1.0, -2.0, 0.0])
    u, state = tx.update(jnp.array([0.0, 0.1, 0.0]), tx.init(p), p)
    new = optax.apply_updates(p, u)
    assert np.all(np.isfinite(new))
    # never-seen coordinates (v̂ = 0) are zeroed when λ > 0; the other one takes a step.
    np.testing.assert_array_equal(np.asarray(new)[[0, 2]], 0.0)
    # Adam step −0.1·sign(g) gives −2.1; threshold 0.1·0.5/|g| = 0.5 → −1.6
    np.testing.assert_allclose(new[1], -2.0 - 0.1 + 0.5, rtol=1e-6)
    tx0 = optareg.prox_adam(0.1, 0.0, eps=0.0)
    new0 = optax.apply_updates(p, tx0.update(jnp.zeros(3), tx0.init(p), p)[0])
    np.testing.assert_array_equal(new0, p)


def test_prox_adam_bf16_state_float32_and_map_params():
    p = {"w": jnp.ones((2, 3), jnp.bfloat16)}
    tx = optareg.prox_adam(1e-2, 1e-3)
    state = tx.init(p)
    assert state.mu["w"].dtype == jnp.float32
    u, state = tx.update({"w": jnp.full((2, 3), 0.5, jnp.bfloat16)}, state, p)
    assert u["w"].dtype == jnp.bfloat16
    mapped = optax.tree.map_params(tx, lambda x: x * 0, state)
    np.testing.assert_array_equal(mapped.nu["w"], 0.0)


# ---------------------------------------------------------------------------------------------
# the recorded penalty λ_t·R(θ_{t+1}) and zeros fraction, against numpy float64
# ---------------------------------------------------------------------------------------------


def _np_group_prox(x, tau, axis):
    """Group soft thresholding in numpy float64 (group j = the slice j along ``axis``)."""
    others = tuple(i for i in range(x.ndim) if i != axis % x.ndim)
    size = x.size // x.shape[axis]
    norm = np.sqrt(np.sum(x**2, axis=others, keepdims=True))
    return np.maximum(1 - tau * np.sqrt(size) / np.where(norm > 0, norm, 1), 0) * x


def _group_r(x, axis):
    """Σ_g √|g|·‖x_g‖ with group j = the slice at index j along ``axis`` (numpy float64)."""
    x = np.asarray(x, np.float64)
    if x.ndim == 0:
        return abs(float(x))
    others = tuple(i for i in range(x.ndim) if i != axis % x.ndim)
    size = x.size // x.shape[axis]
    return float(np.sqrt(size) * np.sum(np.sqrt(np.sum(x**2, axis=others))))


PENALTIES = {
    # name: (transform, strength λ, R on the selected leaves {leaf: θ_{t+1}} -> float)
    "l1": (
        lambda: optareg.prox_l1(3.0, 0.2),
        3.0,
        lambda new: sum(np.sum(np.abs(np.asarray(v, np.float64))) for v in new.values()),
    ),
    "enet": (
        lambda: optareg.prox_elastic_net(3.0, 1.0, 0.2),
        1.0,  # R already holds both strengths: λ₁‖θ‖₁ + (λ₂/2)‖θ‖² with λ₁ = 3, λ₂ = 1
        lambda new: sum(
            3.0 * np.sum(np.abs(np.asarray(v, np.float64)))
            + 0.5 * np.sum(np.asarray(v, np.float64) ** 2)
            for v in new.values()
        ),
    ),
    "group": (  # default: leaves with ndim >= 2; "w" / "conv" are not named kernel: axis -1
        lambda: optareg.prox_group_lasso(1.0, 0.2),
        1.0,
        lambda new: _group_r(new["w"], -1) + _group_r(new["conv"], -1),
    ),
    "group_torch": (
        lambda: optareg.prox_group_lasso(1.0, 0.2, layout="torch"),
        1.0,
        lambda new: _group_r(new["w"], 0) + _group_r(new["conv"], 0),
    ),
    "group_mask": (  # masked-in 1-D leaf: every entry its own group (plain L1)
        lambda: optareg.prox_group_lasso(1.0, 0.2, mask={"w": True, "b": True, "conv": False}),
        1.0,
        lambda new: _group_r(new["w"], -1) + _group_r(new["b"], 0),
    ),
    "nuclear": (
        lambda: optareg.prox_nuclear(5.0, 0.2),
        5.0,
        lambda new: sum(
            np.sum(np.linalg.svd(np.asarray(new[k], np.float64), compute_uv=False))
            for k in ("w", "conv")
        ),
    ),
}
SELECTED = {
    "l1": ("w", "b", "conv"),
    "enet": ("w", "b", "conv"),
    "group": ("w", "conv"),
    "group_torch": ("w", "conv"),
    "group_mask": ("w", "b"),
    "nuclear": ("w", "conv"),
}


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("name", list(PENALTIES))
def test_penalty_and_zeros_fraction_of_the_new_parameters(name, dtype):
    make, strength, r = PENALTIES[name]
    tx = optax.chain(optax.sgd(1.0), make())
    params = _params(dtype)
    grads = jax.tree.map(lambda p: (0.1 * p).astype(dtype), params)
    updates, state = jax.jit(tx.update)(grads, tx.init(params), params)
    new = optax.apply_updates(params, updates)
    m = optareg.metrics(state)
    key = next(k for k in m if k.endswith("/penalty"))
    selected = {k: new[k] for k in SELECTED[name]}
    want = strength * r(selected)
    assert want > 0
    if name.startswith("group") and dtype == jnp.bfloat16:
        # group lasso records R(y) for the prox output y = P(θ + u), from the group norms the
        # operator computes: in bf16, θ_{t+1} is y rounded twice (u' and θ + u'); compare with
        # R(y) of the float64 prox of the same x instead
        x = {
            k: np.asarray(params[k], np.float64) - 0.1 * np.asarray(params[k], np.float64)
            for k in SELECTED[name]
        }
        axis = 0 if name == "group_torch" else -1
        y = {k: _np_group_prox(v, 0.2 * strength, axis if v.ndim > 1 else 0) for k, v in x.items()}
        want = strength * r(y)
        np.testing.assert_allclose(float(m[key]), want, rtol=1e-2)  # x itself is bf16-rounded
        assert abs(float(m[key]) - want) <= abs(strength * r(selected) - want) + 1e-2 * want
    else:
        rtol = 1e-5 if dtype == jnp.float32 else 1e-2  # bf16: sums of bf16 entries
        np.testing.assert_allclose(float(m[key]), want, rtol=rtol)
    zeros = sum(int(np.sum(np.asarray(v, np.float32) == 0)) for v in selected.values())
    total = sum(v.size for v in selected.values())
    assert float(m[key.replace("penalty", "zeros_fraction")]) == pytest.approx(zeros / total)


def test_penalty_follows_the_schedules():
    """λ_t is the strength at the transform's counter: the recorded penalty uses it."""
    lam = optax.linear_schedule(1.0, 3.0, 2)  # 1, 2, 3
    tx = optareg.prox_l1(lam, 1e-3)
    params = {"w": jnp.asarray([1.0, -2.0, 0.0])}
    state = tx.init(params)
    for t, want_lam in enumerate((1.0, 2.0, 3.0)):
        u, state = tx.update(jax.tree.map(jnp.zeros_like, params), state, params)
        params = optax.apply_updates(params, u)
        got = float(optareg.metrics(state)["prox_l1/penalty"])
        assert got == pytest.approx(want_lam * float(jnp.sum(jnp.abs(params["w"]))), rel=1e-6), t


@pytest.mark.parametrize(
    "param_dtype, update_dtype", [("float32", "bfloat16"), ("float64", "float32")]
)
def test_updates_narrower_than_the_params_still_land_exactly(param_dtype, update_dtype):
    """bf16 updates of float32 params (or float32 of float64): ``prox(θ + u) − θ`` in the
    update's dtype would round, so the landing missed the zeros (it gave 0.001, −0.003 for
    zeros). The update comes back in θ's dtype and lands exactly. Oracle: numpy float64."""
    with jax.enable_x64(param_dtype == "float64"):
        p = jnp.array([1.001, -2.003, 0.5, 30.0], param_dtype)
        u = jnp.array([0.0, 0.0, 0.0, 1.0], update_dtype)
        tx = optareg.prox_l1(10.0, 1.0)
        du, state = tx.update(u, tx.init(p), p)
        assert du.dtype == jnp.dtype(param_dtype)
        x = np.asarray(p, np.float64) + np.asarray(u.astype(jnp.float32), np.float64)
        want = np.sign(x) * np.maximum(np.abs(x) - 10.0, 0.0)
        np.testing.assert_array_equal(np.asarray(optax.apply_updates(p, du)), want)
        assert float(optareg.metrics(state)["prox_l1/zeros_fraction"]) == 0.75
        du, _ = optareg.non_neg().update(-u, optareg.non_neg().init(p), p)
        assert float(optax.apply_updates(p, du)[1]) == 0.0  # exactly on the constraint
