"""Tests of the constraints (max_norm, unit_norm, non_neg, project): Keras formulas in numpy,
optax.projections, closed forms, the Lasso <-> L1-ball equivalence, real Flax / Haiku / Equinox
models, metrics, validation, dtypes and the example script."""

from __future__ import annotations

import pathlib

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from sklearn.datasets import load_diabetes
from sklearn.linear_model import Lasso
from sklearn.preprocessing import StandardScaler

import optareg

ROOT = pathlib.Path(__file__).resolve().parents[1]
KERAS_EPS = 1e-7  # keras.backend.epsilon()

# ---------------------------------------------------------------------------------------------
# Oracles: Keras 3's constraint formulas (keras/src/constraints/constraints.py), in numpy float64.
# Keras' ``axis`` names the axes the norm is taken over (0 for a Dense kernel (in, out)).
# ---------------------------------------------------------------------------------------------


def keras_max_norm(w, max_value, axis, eps=KERAS_EPS):
    w = np.asarray(w, np.float64)
    norms = np.sqrt(np.sum(np.square(w), axis=axis, keepdims=True))
    desired = np.clip(norms, 0, max_value)
    if eps == 0:  # the exact projection (no epsilon): a zero unit stays zero
        return np.where(norms > 0, w * desired / np.where(norms > 0, norms, 1), w)
    return w * (desired / (eps + norms))


def keras_unit_norm(w, axis, eps=KERAS_EPS):
    w = np.asarray(w, np.float64)
    norms = np.sqrt(np.sum(np.square(w), axis=axis, keepdims=True))
    if eps == 0:
        return np.where(norms > 0, w / np.where(norms > 0, norms, 1), w)
    return w / (eps + norms)


def keras_non_neg(w):
    return np.maximum(np.asarray(w, np.float64), 0)


def one_step(tx, params, updates=None):
    """``(θ + u' as float64, state)`` for one update of ``tx`` (zero incoming update by default)."""
    updates = jax.tree.map(jnp.zeros_like, params) if updates is None else updates
    u, state = tx.update(updates, tx.init(params), params)
    new = jax.tree.map(
        lambda p, d: np.asarray(p, np.float64) + np.asarray(d, np.float64), params, u
    )
    return new, state, u


def rng_params(seed=0, **shapes):
    rng = np.random.default_rng(seed)
    return {k: jnp.asarray(rng.normal(size=s) * 2.0, jnp.float32) for k, s in shapes.items()}


# ---------------------------------------------------------------------------------------------
# max_norm / unit_norm / non_neg against the Keras formulas
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("layout", "name", "shape", "keras_axis"),
    [
        ("auto", "kernel", (6, 4), 0),  # Flax Dense (in, out): units = columns
        ("auto", "weight", (4, 6), 1),  # Equinox / torch Linear (out, in): units = rows
        ("auto", "w", (5, 3), 0),  # Haiku Linear
        ("auto", "other", (5, 3), 0),  # unknown name: last axis
        ("auto", "kernel", (3, 3, 2, 4), (0, 1, 2)),  # conv HWIO: output channel last
        ("torch", "kernel", (4, 2, 3, 3), (1, 2, 3)),  # conv OIHW forced by layout
        ("flax", "weight", (6, 4), 0),
    ],
)
def test_max_norm_and_unit_norm_match_keras(layout, name, shape, keras_axis):
    params = rng_params(1, **{name: shape})
    x = np.asarray(params[name], np.float64)
    norms = np.sort(np.sqrt(np.sum(x**2, axis=keras_axis)).ravel())
    c = float(norms[0] + norms[1]) / 2  # one unit inside, the others outside
    new, state, _ = one_step(optareg.max_norm(c, layout=layout), params)
    exact = keras_max_norm(x, c, keras_axis, eps=0)
    np.testing.assert_allclose(new[name], exact, rtol=2e-6, atol=1e-6)
    np.testing.assert_allclose(new[name], keras_max_norm(x, c, keras_axis), rtol=1e-6, atol=1e-6)
    norms = np.sqrt(np.sum(x**2, axis=keras_axis))
    assert 0 < np.mean(norms > c) < 1  # some units inside, some outside: both branches checked
    want = np.mean(norms >= c * (1 - 1e-6))
    assert float(optareg.metrics(state)["max_norm/on_boundary"]) == pytest.approx(want)

    new, state, _ = one_step(optareg.unit_norm(layout=layout), params)
    np.testing.assert_allclose(new[name], keras_unit_norm(x, keras_axis, eps=0), rtol=2e-6)
    np.testing.assert_allclose(new[name], keras_unit_norm(x, keras_axis), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.sqrt(np.sum(new[name] ** 2, axis=keras_axis)), 1.0, rtol=1e-6)
    assert float(optareg.metrics(state)["unit_norm/on_boundary"]) == 1.0


def test_max_norm_explicit_axis_and_inside_units_pass_through_exactly():
    # axis=1 on (2, 3, 4): units are the 3 slices w[:, j, :], norms over axes (0, 2)
    params = rng_params(2, w=(2, 3, 4))
    new, _, u = one_step(optareg.max_norm(3.0, axis=1), params)
    np.testing.assert_allclose(new["w"], keras_max_norm(params["w"], 3.0, (0, 2), 0), rtol=2e-6)
    # a zero incoming update on a point inside the ball: the update is exactly zero
    inside = {"w": params["w"] * 0.01}
    _, _, u = one_step(optareg.max_norm(3.0, axis=1), inside)
    np.testing.assert_array_equal(u["w"], 0.0)


def test_max_norm_projection_is_idempotent_and_nonexpansive():
    tx = optareg.max_norm(1.0)
    a, b = rng_params(3, kernel=(8, 5)), rng_params(4, kernel=(8, 5))
    pa, _, _ = one_step(tx, a)
    pb, _, _ = one_step(tx, b)
    again, _, _ = one_step(tx, {"kernel": jnp.asarray(pa["kernel"], jnp.float32)})
    np.testing.assert_allclose(again["kernel"], pa["kernel"], rtol=1e-6, atol=1e-7)
    dist = np.linalg.norm(pa["kernel"] - pb["kernel"])
    assert dist <= np.linalg.norm(np.asarray(a["kernel"]) - np.asarray(b["kernel"])) + 1e-6


def test_vectors_pass_through_without_mask_and_are_clipped_with_one():
    params = {"kernel": jnp.ones((2, 2)) * 3.0, "bias": jnp.array([3.0, -0.5, -4.0]), "s": 5.0}
    params["s"] = jnp.asarray(params["s"])
    new, _, u = one_step(optareg.max_norm(1.0), params)
    np.testing.assert_array_equal(u["bias"], 0.0)
    np.testing.assert_array_equal(u["s"], 0.0)
    mask = {"kernel": False, "bias": True, "s": True}
    new, state, u = one_step(optareg.max_norm(1.0, mask=mask), params)
    np.testing.assert_array_equal(new["bias"], [1.0, -0.5, -1.0])  # |w_i| <= c: a clip
    assert float(new["s"]) == 1.0
    np.testing.assert_array_equal(u["kernel"], 0.0)  # masked out
    assert float(optareg.metrics(state)["max_norm/on_boundary"]) == pytest.approx(3 / 4)
    new, state, _ = one_step(optareg.unit_norm(mask=mask), params)
    np.testing.assert_array_equal(new["bias"], [1.0, -1.0, -1.0])  # sign
    assert float(optareg.metrics(state)["unit_norm/on_boundary"]) == 1.0


def test_non_neg_matches_keras_and_optax_keep_params_nonnegative():
    params = rng_params(5, kernel=(4, 3), bias=(3,))
    params["s"] = jnp.asarray(-1.0)
    grads = rng_params(6, kernel=(4, 3), bias=(3,))
    grads["s"] = jnp.asarray(0.5)
    tx = optareg.chain(optax.sgd(0.1), optareg.non_neg())
    u, state = tx.update(grads, tx.init(params), params)
    new = optax.apply_updates(params, u)
    ref = optax.chain(optax.sgd(0.1), optax.keep_params_nonnegative())
    u_ref, _ = ref.update(grads, ref.init(params), params)
    chex.assert_trees_all_close(new, optax.apply_updates(params, u_ref), atol=1e-6)
    x = jax.tree.map(lambda p, g: np.asarray(p, np.float64) - 0.1 * np.asarray(g), params, grads)
    for k in params:
        np.testing.assert_allclose(new[k], keras_non_neg(x[k]), atol=1e-6)
    zeros = sum(int(np.sum(np.asarray(v) == 0)) for v in jax.tree.leaves(new))
    frac = float(optareg.metrics(state)["non_neg/on_boundary"])
    assert frac == pytest.approx(zeros / 16) and 0 < frac < 1


# ---------------------------------------------------------------------------------------------
# metrics: the boundary tolerance and metrics_every
# ---------------------------------------------------------------------------------------------


def test_on_boundary_relative_tolerance():
    # unit norms c·(1 − 1e-7) (inside, within tolerance: on the boundary), c·(1 − 1e-4) (inside,
    # not on it), 2c (projected), 0 (a zero unit)
    c = 2.0
    scales = np.array([1 - 1e-7, 1 - 1e-4, 2.0, 0.0])
    kernel = np.zeros((3, 4))
    kernel[0] = c * scales  # each column has one non-zero entry: its norm is exactly c·scale
    params = {"kernel": jnp.asarray(kernel, jnp.float32)}
    new, state, _ = one_step(optareg.max_norm(c), params)
    assert float(optareg.metrics(state)["max_norm/on_boundary"]) == 0.5
    np.testing.assert_allclose(new["kernel"][0], [c * (1 - 1e-7), c * (1 - 1e-4), c, 0], rtol=1e-7)
    _, state, _ = one_step(optareg.unit_norm(), params)
    assert float(optareg.metrics(state)["unit_norm/on_boundary"]) == 0.75


def test_metrics_every_holds_the_value_between_metric_steps():
    params = {"kernel": jnp.ones((4, 2))}  # column norms 2
    tx = optareg.max_norm(1.0, metrics_every=3)
    step = jax.jit(tx.update)
    state = tx.init(params)
    seen = []
    for i in range(5):
        # steps 0..4: the updates alternate between shrinking the units inside the ball (0) and
        # leaving them at norm 2 (1)
        factor = -0.9 if i % 2 == 0 else 0.0
        _, state = step(jax.tree.map(lambda p, f=factor: p * f, params), state, params)
        seen.append(float(optareg.metrics(state)["max_norm/on_boundary"]))
    # computed on steps 0 and 3 only (0: inside -> 0.0; 3: outside -> 1.0), held in between
    assert seen == [0.0, 0.0, 0.0, 1.0, 1.0]


# ---------------------------------------------------------------------------------------------
# project: optax.projections wrapped, whole tree and per leaf
# ---------------------------------------------------------------------------------------------


def test_project_whole_tree_equals_optax_projection():
    params = rng_params(7, a=(3, 2), b=(4,))
    grads = rng_params(8, a=(3, 2), b=(4,))

    def ball(t):
        return optax.projections.projection_l1_ball(t, 2.0)

    tx = optareg.chain(optax.sgd(0.5), optareg.project(ball))
    u, state = tx.update(grads, tx.init(params), params)
    new = optax.apply_updates(params, u)
    x = jax.tree.map(lambda p, g: p - 0.5 * g, params, grads)
    chex.assert_trees_all_close(new, ball(x), atol=1e-6)
    assert float(optax.tree.norm(new, ord=1)) == pytest.approx(2.0, rel=1e-5)
    assert float(optareg.metrics(state)["project/on_boundary"]) == 1.0
    # inside the ball: nothing changes, the metric says so
    small = jax.tree.map(lambda p: p * 1e-3, params)
    _, state, u = one_step(optareg.project(ball), small)
    chex.assert_trees_all_equal(u, jax.tree.map(jnp.zeros_like, small))
    assert float(optareg.metrics(state)["project/on_boundary"]) == 0.0


def test_project_per_leaf_and_mask():
    params = {"a": jnp.array([3.0, 4.0]), "b": jnp.array([0.3, 0.4]), "c": jnp.array([-2.0])}

    def ball(x):
        return optax.projections.projection_l2_ball(x, 1.0)

    new, state, _ = one_step(optareg.project(ball, per_leaf=True), params)
    np.testing.assert_allclose(new["a"], [0.6, 0.8], rtol=1e-6)
    np.testing.assert_allclose(new["b"], [0.3, 0.4], rtol=1e-7)
    np.testing.assert_allclose(new["c"], [-1.0], rtol=1e-7)
    assert float(optareg.metrics(state)["project/on_boundary"]) == pytest.approx(2 / 3)
    # the masked tree is projected as a whole: the L2 ball of radius 1 over {a, b} only
    mask = {"a": True, "b": True, "c": False}
    new, state, _ = one_step(optareg.project(ball, mask=mask), params)
    ab = np.concatenate([np.asarray(params["a"]), np.asarray(params["b"])])
    # (within the landing guarantee: an entry that rounding left outside is rounded inward)
    np.testing.assert_allclose(
        np.concatenate([new["a"], new["b"]]), ab / np.linalg.norm(ab), rtol=4e-7
    )
    assert float(new["c"][0]) == -2.0
    # box and simplex projections, per leaf
    new, _, _ = one_step(
        optareg.project(lambda x: optax.projections.projection_box(x, -0.5, 0.5), per_leaf=True),
        params,
    )
    np.testing.assert_allclose(new["a"], [0.5, 0.5])
    new, _, _ = one_step(
        optareg.project(optax.projections.projection_simplex, per_leaf=True), params
    )
    np.testing.assert_allclose(new["a"], [0.0, 1.0], atol=1e-6)  # the simplex's nearest vertex


def test_project_structure_and_shape_errors():
    params = {"a": jnp.ones(2), "b": jnp.ones(3)}
    with pytest.raises(ValueError, match="projection"):
        one_step(optareg.project(lambda t: t["a"]), params)
    with pytest.raises(ValueError, match="projection"):
        one_step(optareg.project(lambda x: x[:1], per_leaf=True), params)


# ---------------------------------------------------------------------------------------------
# penalty <-> constraint: projected gradient descent on the L1 ball reaches the Lasso solution
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def diabetes():
    x, y = load_diabetes(return_X_y=True)
    return StandardScaler().fit_transform(x), y - y.mean()


def test_l1_ball_pgd_reaches_sklearn_lasso(diabetes):
    x, y = diabetes
    alphas = np.array([8.0, 2.0, 0.5])  # 4, 7 and 8 non-zeros of 10
    refs = np.stack(
        [
            Lasso(alpha=a, fit_intercept=False, tol=1e-14, max_iter=1_000_000).fit(x, y).coef_
            for a in alphas
        ]
    )
    radii = np.abs(refs).sum(axis=1)
    with jax.enable_x64(True):
        gram, xty = jnp.asarray(x.T @ x / len(y)), jnp.asarray(x.T @ y / len(y))
        lr = 1.0 / float(np.linalg.eigvalsh(x.T @ x / len(y)).max())

        def solve(r):
            ball = lambda t: optax.projections.projection_l1_ball(t, r)  # noqa: E731
            tx = optareg.chain(optax.sgd(lr), optareg.project(ball))
            w = jnp.zeros(x.shape[1])

            def body(_, carry):
                w, s = carry
                u, s = tx.update(gram @ w - xty, s, w)
                return optax.apply_updates(w, u), s

            return jax.lax.fori_loop(0, 20_000, body, (w, tx.init(w)))[0]

        w = np.asarray(jax.jit(jax.vmap(solve))(jnp.asarray(radii)))
    for wi, ref in zip(w, refs, strict=True):
        assert np.linalg.norm(wi - ref) <= 1e-4 * np.linalg.norm(ref)
        np.testing.assert_allclose(wi, ref, atol=1e-4 * np.abs(ref).max())
        np.testing.assert_array_equal(np.abs(wi) > 1e-6, ref != 0)  # the same support


# ---------------------------------------------------------------------------------------------
# Real models: the constrained unit is an OUTPUT unit (its incoming weights) in every framework
# ---------------------------------------------------------------------------------------------


def _max_norm_oracle(theta, update, c, out_axis):
    x = np.asarray(theta, np.float64) + np.asarray(update, np.float64)
    axes = tuple(i for i in range(x.ndim) if i != out_axis % x.ndim)
    return keras_max_norm(x, c, axes, eps=0)


def _check_output_units(before, sgd_step, after, c, out_axis):
    want = _max_norm_oracle(before, sgd_step, c, out_axis)
    np.testing.assert_allclose(np.asarray(after, np.float64), want, rtol=5e-6, atol=1e-6)
    axes = tuple(i for i in range(want.ndim) if i != out_axis % want.ndim)
    out_norms = np.sqrt(np.sum(np.asarray(after, np.float64) ** 2, axis=axes))
    assert np.all(out_norms <= c * (1 + 1e-6)) and np.any(out_norms >= c * (1 - 1e-6))


def _big_grads(tree, seed=0):
    leaves, treedef = jax.tree.flatten(tree)
    rng = np.random.default_rng(seed)
    return treedef.unflatten([jnp.asarray(rng.normal(size=x.shape) * 3, x.dtype) for x in leaves])


def test_max_norm_flax_linen_dense_and_conv():
    import flax.linen as nn

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.Conv(5, (3, 3))(x)
            return nn.Dense(3)(x.reshape(x.shape[0], -1))

    params = Net().init(jax.random.PRNGKey(0), jnp.ones((1, 4, 4, 2)))["params"]
    grads = _big_grads(params)
    tx = optareg.chain(optax.sgd(1.0), optareg.max_norm(1.5))
    u, state = tx.update(grads, tx.init(params), params)
    new = optax.apply_updates(params, u)
    for layer in ("Conv_0", "Dense_0"):  # kernels (3, 3, 2, 5) and (80, 3): output axis last
        k = params[layer]["kernel"]
        _check_output_units(k, -grads[layer]["kernel"], new[layer]["kernel"], 1.5, -1)
        np.testing.assert_allclose(
            new[layer]["bias"], params[layer]["bias"] - grads[layer]["bias"], rtol=1e-6
        )
    assert float(optareg.metrics(state)["max_norm/on_boundary"]) > 0


def test_max_norm_flax_nnx_optimizer():
    from flax import nnx

    model = nnx.Linear(6, 4, rngs=nnx.Rngs(0))
    c = 0.5
    optimizer = nnx.Optimizer(
        model, optareg.chain(optax.sgd(1.0), optareg.max_norm(c)), wrt=nnx.Param
    )
    x = jnp.asarray(np.random.default_rng(0).normal(size=(8, 6)), jnp.float32)

    def loss(m):
        return jnp.sum(m(x) ** 2)

    before = np.asarray(model.kernel[...])
    grads = nnx.grad(loss)(model)
    optimizer.update(model, grads)
    _check_output_units(before, -np.asarray(grads["kernel"][...]), model.kernel[...], c, -1)
    assert "max_norm/on_boundary" in optareg.metrics(optimizer.opt_state)


def test_max_norm_haiku_mlp():
    import haiku as hk

    net = hk.without_apply_rng(hk.transform(lambda x: hk.nets.MLP([7, 3])(x)))
    params = net.init(jax.random.PRNGKey(0), jnp.ones((1, 5)))
    grads = _big_grads(params, seed=1)
    tx = optareg.chain(optax.sgd(1.0), optareg.max_norm(1.0))
    u, _ = tx.update(grads, tx.init(params), params)
    new = optax.apply_updates(params, u)
    for layer in ("mlp/~/linear_0", "mlp/~/linear_1"):  # w: (in, out), output axis last
        _check_output_units(params[layer]["w"], -grads[layer]["w"], new[layer]["w"], 1.0, -1)


def test_max_norm_equinox_mlp_with_module_mask():
    import equinox as eqx

    model = eqx.nn.MLP(5, 3, 7, 1, key=jax.random.PRNGKey(0))
    params = eqx.filter(model, eqx.is_array)
    grads = _big_grads(params, seed=2)
    # a mask that is an Equinox module of bools: the first layer's weight only
    mask = jax.tree.map(lambda _: False, params)
    mask = eqx.tree_at(lambda m: m.layers[0].weight, mask, True)
    tx = optareg.chain(optax.sgd(1.0), optareg.max_norm(1.0, mask=mask))
    u, _ = tx.update(grads, tx.init(params), params)
    new = eqx.apply_updates(model, u)
    w0 = params.layers[0].weight  # (out, in) = (7, 5): output axis first
    _check_output_units(w0, -grads.layers[0].weight, new.layers[0].weight, 1.0, 0)
    w1 = np.asarray(params.layers[1].weight) - np.asarray(grads.layers[1].weight)
    np.testing.assert_allclose(new.layers[1].weight, w1, rtol=1e-6)  # masked out
    assert np.linalg.norm(w1, axis=1).max() > 1.0  # (it would have been constrained)
    # without a mask, every weight matrix is constrained by rows; biases pass through
    tx = optareg.chain(optax.sgd(1.0), optareg.max_norm(1.0))
    u, _ = tx.update(grads, tx.init(params), params)
    new = eqx.apply_updates(model, u)
    for i in range(2):
        w = params.layers[i].weight
        _check_output_units(w, -grads.layers[i].weight, new.layers[i].weight, 1.0, 0)


# ---------------------------------------------------------------------------------------------
# dtypes, zeros, huge values
# ---------------------------------------------------------------------------------------------


_ALL = [
    lambda: optareg.max_norm(1.0),
    lambda: optareg.max_norm(1.0, mask=lambda p: jax.tree.map(lambda _: True, p)),
    lambda: optareg.unit_norm(),
    lambda: optareg.unit_norm(mask=lambda p: jax.tree.map(lambda _: True, p)),
    lambda: optareg.non_neg(),
    lambda: optareg.project(lambda t: optax.projections.projection_l2_ball(t, 1.0)),
    lambda: optareg.project(optax.projections.projection_non_negative, per_leaf=True),
]


def _tree(dtype, fill=None, seed=0):
    rng = np.random.default_rng(seed)
    shapes = {"kernel": (5, 3), "bias": (3,), "s": ()}
    return {
        k: jnp.full(s, fill, dtype) if fill is not None else jnp.asarray(rng.normal(size=s), dtype)
        for k, s in shapes.items()
    }


@pytest.mark.parametrize("make", _ALL, ids=lambda f: "")
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32], ids=["bf16", "f32"])
def test_dtype_kept_and_zeros_never_nan(make, dtype):
    tx = make()
    for params, grads in [
        (_tree(dtype), _tree(dtype, seed=1)),
        (_tree(dtype, 0.0), _tree(dtype, 0.0)),  # zero weights, zero units
        (_tree(dtype, 0.0), _tree(dtype, seed=2)),
    ]:
        u, state = tx.update(grads, tx.init(params), params)
        chex.assert_trees_all_equal_shapes_and_dtypes(u, params)
        chex.assert_tree_all_finite((u, optareg.metrics(state)))
        if not jnp.any(jnp.stack([jnp.any(g != 0) for g in jax.tree.leaves(grads)])):
            for x in jax.tree.leaves(u):  # zero weights, zero step: they stay zero
                np.testing.assert_array_equal(np.asarray(x, np.float32), 0.0)


def test_float64_params():
    with jax.enable_x64(True):
        params = {"kernel": jnp.asarray(np.random.default_rng(0).normal(size=(6, 4)) * 3)}
        assert params["kernel"].dtype == jnp.float64
        new, state, u = one_step(optareg.max_norm(1.0), params)
        assert u["kernel"].dtype == jnp.float64
        want = keras_max_norm(params["kernel"], 1.0, 0, eps=0)
        np.testing.assert_allclose(new["kernel"], want, rtol=1e-13)
        new, _, _ = one_step(optareg.unit_norm(), params)
        np.testing.assert_allclose(new["kernel"], keras_unit_norm(params["kernel"], 0, 0), 1e-13)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
def test_huge_units_do_not_overflow(dtype):
    # θ = 0 and a huge step u (entries max/4, unit norms beyond the float range): the update
    # u' = P(u) − 0 is the projection itself, so this checks that the unit norms do not overflow.
    # (From a huge θ the result θ + (P(θ + u) − θ) cancels to 0: the post-step form's limit.)
    big = float(jnp.finfo(dtype).max) / 4
    step = {"kernel": jnp.full((6, 2), big, dtype) * jnp.asarray([1.0, -1.0], dtype)}
    zero = {"kernel": jnp.zeros((6, 2), dtype)}
    for tx, norm in ((optareg.max_norm(2.0), 2.0), (optareg.unit_norm(), 1.0)):
        new, state, u = one_step(tx, zero, step)
        chex.assert_tree_all_finite(u)
        np.testing.assert_allclose(np.linalg.norm(new["kernel"], axis=0), norm, rtol=1e-2)
        np.testing.assert_allclose(new["kernel"][:, 0], norm / np.sqrt(6), rtol=1e-2)
        assert 0 <= float(jax.tree.leaves(optareg.metrics(state))[0]) <= 1


def test_nonfinite_inputs_propagate():
    # max_norm: a NaN entry stays NaN alone (its unit is not "over"); unit_norm: the NaN unit
    params = {"kernel": jnp.ones((3, 2))}
    bad = {"kernel": jnp.zeros((3, 2)).at[0, 0].set(jnp.nan)}
    _, _, u = one_step(optareg.max_norm(1.0), params, bad)
    np.testing.assert_array_equal(np.isnan(u["kernel"]), [[1, 0], [0, 0], [0, 0]])
    _, _, u = one_step(optareg.unit_norm(), params, bad)
    np.testing.assert_array_equal(np.isnan(u["kernel"]), [[1, 0], [1, 0], [1, 0]])
    _, _, u = one_step(optareg.non_neg(), params, bad)
    np.testing.assert_array_equal(np.isnan(u["kernel"]), [[1, 0], [0, 0], [0, 0]])


# ---------------------------------------------------------------------------------------------
# validation, chain placement
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("factory", "kwargs", "error", "match"),
    [
        (optareg.max_norm, {"max_value": 0.0}, ValueError, "`max_value` must be a finite"),
        (optareg.max_norm, {"max_value": -1.0}, ValueError, "`max_value`"),
        (optareg.max_norm, {"max_value": float("nan")}, ValueError, "`max_value`"),
        (optareg.max_norm, {"max_value": "1"}, TypeError, "`max_value`"),
        (optareg.max_norm, {"max_value": lambda t: -1.0}, ValueError, "`max_value`"),
        (optareg.max_norm, {"max_value": 1.0, "layout": "keras"}, ValueError, "`layout`"),
        (optareg.max_norm, {"max_value": 1.0, "axis": 1.5}, TypeError, "`axis`"),
        (optareg.max_norm, {"max_value": 1.0, "metrics_every": 0}, ValueError, "metrics_every"),
        (optareg.max_norm, {"max_value": 1.0, "mask": {"w": 1}}, TypeError, "`mask`"),
        (optareg.unit_norm, {"layout": "tf"}, ValueError, "`layout`"),
        (optareg.unit_norm, {"axis": "0"}, TypeError, "`axis`"),
        (optareg.non_neg, {"metrics_every": -1}, ValueError, "metrics_every"),
        (optareg.project, {"projection": 1.0}, TypeError, "`projection`"),
        (optareg.project, {"projection": None}, TypeError, "`projection`"),
        (optareg.project, {"projection": abs, "per_leaf": 1}, TypeError, "`per_leaf`"),
        (optareg.project, {"projection": abs, "metrics_every": 0}, ValueError, "metrics_every"),
    ],
)
def test_bad_arguments_raise_at_construction(factory, kwargs, error, match):
    with pytest.raises(error, match=match):
        factory(**kwargs)


def test_axis_missing_on_a_selected_leaf_and_missing_params():
    tx = optareg.max_norm(1.0, axis=2)
    with pytest.raises(ValueError, match="`axis`=2 does not exist"):
        tx.update(
            {"w": jnp.ones((2, 2))}, tx.init({"w": jnp.ones((2, 2))}), {"w": jnp.ones((2, 2))}
        )
    for tx in (optareg.max_norm(1.0), optareg.project(abs)):
        with pytest.raises(ValueError, match="params"):
            tx.update({"w": jnp.ones((2, 2))}, tx.init({"w": jnp.ones((2, 2))}))
    with pytest.raises(TypeError, match="floating-point"):
        optareg.project(abs).init({"i": jnp.ones(2, jnp.int32)})


def test_constraints_go_last_in_optareg_chain():
    for tx in (optareg.max_norm(1.0), optareg.non_neg(), optareg.project(abs)):
        with pytest.raises(ValueError, match="misplaced"):
            optareg.chain(tx, optax.sgd(0.1))
        optareg.chain(optax.sgd(0.1), tx)


def test_schedule_and_inject_hyperparams():
    params = {"kernel": jnp.ones((4, 2))}  # column norms 2
    sched = optax.piecewise_constant_schedule(3.0, {1: 0.5})  # 3 at step 0, then 1.5
    tx = optareg.max_norm(sched)
    state = tx.init(params)
    zero = {"kernel": jnp.zeros((4, 2))}
    u, state = tx.update(zero, state, params)
    np.testing.assert_array_equal(u["kernel"], 0.0)  # c = 3 > 2: inside
    u, state = tx.update(zero, state, params)
    np.testing.assert_allclose(np.linalg.norm(params["kernel"] + u["kernel"], axis=0), 1.5)
    injected = optax.inject_hyperparams(optareg.max_norm)(max_value=1.5)
    u2, _ = injected.update(zero, injected.init(params), params)
    np.testing.assert_array_equal(u2["kernel"], u["kernel"])


# ---------------------------------------------------------------------------------------------
# the example script, on tiny settings
# ---------------------------------------------------------------------------------------------


def test_example_constraint_equivalence_smoke(tmp_path):
    from helpers import load_example

    module = load_example("constraint_equivalence")
    args = ["--pgd-steps", "3000", "--mlp-steps", "30", "--hidden", "16", "--out", str(tmp_path)]
    result = module.main(args)
    out = tmp_path / module.FIGURE
    assert out.exists() and out.stat().st_size > 10_000
    # the same coefficients both ways (3000 steps already reach 1e-3 relative)
    diff = np.abs(result["w_lasso"] - result["w_ball"]).max()
    assert diff < 1e-3 * np.abs(result["w_lasso"]).max()
    params = result["runs"][True][0]
    for k in ("w1", "w2"):
        assert np.linalg.norm(np.asarray(params[k]), axis=0).max() <= 3.0 * (1 + 1e-5)


def test_float64_units_beyond_float32s_range_are_rescaled_in_float64():
    """The power-of-two rescaling uses float64's exponent range for float64 leaves: norms of
    1e-200 units are not flushed to 0 (they were: ``unit_norm`` left them unchanged), and a
    tree norm of 5e200 is not inf. Oracle: the closed forms (3-4-5 triangles)."""
    from optareg._extra_args import tree_norm  # noqa: PLC0415

    with jax.enable_x64(True):

        def landed(tx, w):
            u, _ = tx.update(jnp.zeros_like(w), tx.init(w), w)
            return np.asarray(optax.apply_updates(w, u)).ravel()

        tiny = jnp.array([[3e-200], [4e-200]], jnp.float64)
        np.testing.assert_allclose(landed(optareg.unit_norm(), tiny), [0.6, 0.8], rtol=1e-15)
        np.testing.assert_allclose(
            landed(optareg.max_norm(1e-200), tiny), [6e-201, 8e-201], rtol=1e-15
        )
        for scale in (1e200, 1e-200):
            norm = tree_norm([jnp.array([3 * scale, 4 * scale], jnp.float64)])
            assert norm.dtype == jnp.float64
            np.testing.assert_allclose(float(norm), 5 * scale, rtol=1e-15)


@pytest.mark.parametrize(
    "make",
    [
        lambda: optareg.max_norm(1.0),
        lambda: optareg.unit_norm(),
        lambda: optareg.spectral_clip(1.0),
        lambda: optareg.prox_group_lasso(0.1, 0.1),
        lambda: optareg.prox_nuclear(0.1, 0.1),
    ],
    ids=["max_norm", "unit_norm", "spectral_clip", "prox_group_lasso", "prox_nuclear"],
)
def test_leaves_with_no_entries_pass_through(make):
    """A (0, 3) kernel beside a real one (a layer with no units): no error, nothing to do for
    it, the other leaf as without it."""
    params = {"empty": jnp.zeros((0, 3)), "w": jnp.array([[3.0, 0.0], [4.0, 0.5]])}
    zero = jax.tree.map(jnp.zeros_like, params)
    tx = make()
    u, _ = jax.jit(tx.update)(zero, tx.init(params), params)
    assert u["empty"].shape == (0, 3)
    alone = {"w": params["w"]}
    u_alone, _ = jax.jit(tx.update)({"w": zero["w"]}, tx.init(alone), alone)
    np.testing.assert_array_equal(u["w"], u_alone["w"])
    assert optareg.spectral_norms(params)["empty"] is None


@pytest.mark.parametrize("mask", [{"w": False, "b": False}, None])
def test_project_with_nothing_selected_passes_through(mask):
    """All leaves masked out, or an empty tree: the updates pass through and the projection is
    not called (optax's projection_l1_ball raised an IndexError on the empty tree)."""
    params = {"w": jnp.array([3.0, 4.0]), "b": jnp.array([1.0])} if mask else {}
    tx = optareg.project(optax.projections.projection_l1_ball, mask=mask)
    g = jax.tree.map(lambda x: 0.5 * jnp.ones_like(x), params)
    u, state = jax.jit(tx.update)(g, tx.init(params), params)
    for a, b in zip(jax.tree.leaves(u), jax.tree.leaves(g), strict=True):
        np.testing.assert_array_equal(a, b)
    assert float(optareg.metrics(state)["project/on_boundary"]) == 0.0
