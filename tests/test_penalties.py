"""Tests of add_penalty and optareg.penalties: closed forms in numpy, bit-identity with
add_decayed_weights, the subgradient's missing zeros, orthogonality's layouts, masks."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optareg
from optareg import penalties


def _params(dtype=jnp.float32, seed=0):
    rng = np.random.default_rng(seed)
    shapes = {"conv": {"kernel": (3, 3, 2, 4)}, "dense": {"bias": (4,), "kernel": (6, 4)}, "s": ()}
    return jax.tree.map(
        lambda s: jnp.asarray(rng.normal(size=s), dtype),
        shapes,
        is_leaf=lambda x: isinstance(x, tuple),
    )


def _np(tree):
    return [np.asarray(x, np.float64) for x in jax.tree.leaves(tree)]


# ---------------------------------------------------------------------------------------------
# the ready penalties: values and gradients against closed forms
# ---------------------------------------------------------------------------------------------


def test_l2_and_l1_values_and_gradients():
    params = _params()
    leaves = _np(params)
    assert float(penalties.l2(params)) == pytest.approx(0.5 * sum(np.sum(x**2) for x in leaves))
    assert float(penalties.l1(params)) == pytest.approx(sum(np.sum(np.abs(x)) for x in leaves))
    g = jax.grad(penalties.l2)(params)
    chex.assert_trees_all_equal(g, params)  # ∇½‖θ‖² = θ, bit for bit
    w = {"w": jnp.array([-2.0, -0.0, 0.0, 0.5, 1e-30])}
    np.testing.assert_array_equal(jax.grad(penalties.l1)(w)["w"], [-1, 0, 0, 1, 1])  # 0 at 0
    assert penalties.l2({"w": jnp.ones(2, jnp.bfloat16)}).dtype == jnp.float32
    huge = {"w": jnp.asarray([3e38, -3e38], jnp.float32)}  # 2·θ would overflow; ∇ is θ exactly
    chex.assert_trees_all_equal(jax.grad(penalties.l2)(huge), huge)
    assert float(penalties.l2(huge)) == np.inf  # the value saturates (never NaN)


def test_penalties_of_float64_params_are_float64():
    with jax.enable_x64(True):
        p = {"w": jnp.asarray([[1.0, 2.0], [3.0, 4.0]], jnp.float64)}
        for r in (penalties.l2, penalties.l1, penalties.orthogonality, penalties.l2_to(p)):
            assert r(p).dtype == jnp.float64


def _unit_matrix_np(x, unit_axis):
    w = np.moveaxis(np.asarray(x, np.float64), unit_axis, -1)
    return w.reshape(-1, w.shape[-1])


def _ortho_np(w, off_diagonal=False):
    g = w.T @ w
    r = g * (1 - np.eye(len(g))) if off_diagonal else g - np.eye(len(g))
    return np.sum(r**2), 4 * w @ r  # value, gradient (G − I symmetric)


@pytest.mark.parametrize("off_diagonal", [False, True])
@pytest.mark.parametrize(
    ("layout", "name", "shape", "unit_axis"),
    [
        ("auto", "kernel", (6, 4), -1),
        ("auto", "weight", (4, 6), 0),
        ("auto", "kernel", (3, 3, 2, 5), -1),  # HWIO: W is (18, 5)
        ("auto", "weight", (5, 2, 3, 3), 0),  # OIHW: W is (18, 5)
        ("torch", "kernel", (4, 6), 0),
        ("flax", "weight", (6, 4), -1),
        ("auto", "other", (3, 7), -1),  # wide: 7 units of fan-in 3
    ],
)
def test_orthogonality_matches_numpy(layout, name, shape, unit_axis, off_diagonal):
    x = jnp.asarray(np.random.default_rng(1).normal(size=shape) * 0.5, jnp.float32)
    params = {name: x, "bias": jnp.ones(3), "scalar": jnp.asarray(2.0)}
    r = penalties.orthogonality(layout=layout, off_diagonal=off_diagonal)
    w = _unit_matrix_np(x, unit_axis)
    value, grad_w = _ortho_np(w, off_diagonal)
    assert float(r(params)) == pytest.approx(value, rel=1e-5)
    g = jax.grad(r)(params)
    want = np.moveaxis(
        grad_w.reshape(np.moveaxis(np.asarray(x), unit_axis, -1).shape), -1, unit_axis
    )
    np.testing.assert_allclose(g[name], want, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(g["bias"], 0.0)  # vectors and scalars contribute 0
    assert float(g["scalar"]) == 0.0


def test_orthogonality_two_call_forms_and_closed_values():
    w = {"kernel": jnp.array([[1.0, 1.0], [0.0, 1.0]])}  # WᵀW = [[1, 1], [1, 2]]
    assert float(penalties.orthogonality(w)) == 3.0  # 0 + 1 + 1 + 1
    assert float(penalties.orthogonality()(w)) == 3.0
    assert float(penalties.orthogonality(off_diagonal=True)(w)) == 2.0
    assert float(penalties.orthogonality({"weight": jnp.eye(3), "bias": jnp.ones(3)})) == 0.0
    q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(8, 3)))
    assert float(penalties.orthogonality({"kernel": jnp.asarray(q, jnp.float32)})) < 1e-10
    with pytest.raises(ValueError, match="`layout`"):
        penalties.orthogonality(layout="keras")
    with pytest.raises(TypeError, match="`off_diagonal`"):
        penalties.orthogonality(off_diagonal=1)
    zero = {"kernel": jnp.zeros((5, 3))}  # R = 3, gradient exactly 0 (never NaN)
    assert float(penalties.orthogonality(zero)) == 3.0
    np.testing.assert_array_equal(jax.grad(penalties.orthogonality)(zero)["kernel"], 0.0)


def test_orthogonality_penalty_drives_units_orthonormal():
    params = {"kernel": jnp.asarray(np.random.default_rng(2).normal(size=(8, 3)) * 0.4)}
    tx = optareg.chain(optareg.add_penalty(penalties.orthogonality, 1.0), optax.sgd(0.05))

    @jax.jit
    def run(params):
        def body(_, c):
            p, s = c
            u, s = tx.update(jax.tree.map(jnp.zeros_like, p), s, p)
            return optax.apply_updates(p, u), s

        return jax.lax.fori_loop(0, 500, body, (params, tx.init(params)))

    params, state = run(params)
    w = np.asarray(params["kernel"], np.float64)
    np.testing.assert_allclose(w.T @ w, np.eye(3), atol=1e-4)
    assert float(optareg.metrics(state)["add_penalty/value"]) < 1e-7


def test_l2_to_value_gradient_and_errors():
    ref = _params(seed=3)
    params = _params()
    r = penalties.l2_to(ref)
    want = 0.5 * sum(np.sum((a - b) ** 2) for a, b in zip(_np(params), _np(ref), strict=True))
    assert float(r(params)) == pytest.approx(want, rel=1e-6)
    chex.assert_trees_all_close(
        jax.grad(r)(params), jax.tree.map(jnp.subtract, params, ref), atol=1e-6
    )
    with pytest.raises(ValueError, match="`reference`"):
        penalties.l2_to(None)
    with pytest.raises(ValueError, match="`reference`"):
        penalties.l2_to({})
    with pytest.raises(ValueError, match="`reference`"):
        r({"other": jnp.ones(2)})


# ---------------------------------------------------------------------------------------------
# add_penalty(l2) == add_decayed_weights, bit for bit
# ---------------------------------------------------------------------------------------------


def _run(tx, params, steps=3, jit=True):
    step = jax.jit(tx.update) if jit else tx.update
    state, out = tx.init(params), []
    for i in range(steps):
        g = jax.tree.map(lambda p, i=i: (p * 0.3 + 0.1 * i).astype(p.dtype), params)
        u, state = step(g, state, params)
        params = optax.apply_updates(params, u)
        out.append(u)
    return out, state


@pytest.mark.parametrize(
    ("dtype", "strength", "jit"),
    [
        (jnp.float32, 1e-2, True),
        (jnp.float32, 1e-2, False),  # eager
        (jnp.float32, optax.linear_schedule(0.1, 0.01, 4), True),
        (jnp.bfloat16, 1e-2, True),
        (jnp.bfloat16, optax.linear_schedule(0.1, 0.01, 4), True),
    ],
    ids=["f32-c-jit", "f32-c-eager", "f32-s-jit", "bf16-c-jit", "bf16-s-jit"],
)
def test_add_penalty_l2_is_add_decayed_weights_bitwise(dtype, strength, jit):
    params = _params(dtype)
    mask = {"conv": {"kernel": True}, "dense": {"bias": False, "kernel": True}, "s": False}

    def chain(decay):
        return optareg.chain(optax.scale_by_adam(), decay, optax.scale_by_learning_rate(1e-2))

    for m in (None, mask):
        a, _ = _run(chain(optareg.add_penalty(penalties.l2, strength, mask=m)), params, jit=jit)
        b, _ = _run(chain(optareg.add_decayed_weights(strength, m)), params, jit=jit)
        chex.assert_trees_all_equal(a, b)
        if dtype == jnp.float32 or not callable(strength):
            # (optax's own add_decayed_weights promotes bf16 updates to a float32 schedule's dtype)
            c, _ = _run(chain(optax.add_decayed_weights(strength, m)), params, jit=jit)
            chex.assert_trees_all_equal(a, c)


def test_add_penalty_l2_is_add_decayed_weights_bitwise_float64():
    with jax.enable_x64(True):
        params = _params(jnp.float64)
        a, _ = _run(optareg.add_penalty(penalties.l2, 1e-2), params)
        b, _ = _run(optareg.add_decayed_weights(1e-2), params)
        assert jax.tree.leaves(a[0])[0].dtype == jnp.float64
        chex.assert_trees_all_equal(a, b)


def test_add_penalty_l2_to_is_l2_sp_decay():
    params, ref = _params(), _params(seed=5)
    a, _ = _run(optareg.add_penalty(penalties.l2_to(ref), 0.1), params)
    b, _ = _run(optareg.add_decayed_weights(0.1, reference=ref), params)
    chex.assert_trees_all_equal(a, b)  # float32: (θ − θ_ref) computed the same way


# ---------------------------------------------------------------------------------------------
# add_penalty: metric, masks, l1 vs prox_l1, errors
# ---------------------------------------------------------------------------------------------


def test_value_metric_is_strength_times_penalty_at_theta_t():
    sched = optax.linear_schedule(1.0, 0.0, 4)
    tx = optareg.add_penalty(penalties.l1, sched, name="l1_pen")
    params = {"w": jnp.array([1.0, -2.0])}
    state = tx.init(params)
    for t in range(3):
        u, state = tx.update({"w": jnp.zeros(2)}, state, params)
        want = float(sched(t)) * float(penalties.l1(params))
        assert float(optareg.metrics(state)["l1_pen/value"]) == pytest.approx(want)
        np.testing.assert_allclose(u["w"], float(sched(t)) * np.array([1.0, -1.0]))
        params = {"w": params["w"] * 0.5}


def test_two_penalties_in_one_chain_have_their_own_keys():
    tx = optareg.chain(
        optareg.add_penalty(penalties.l2, 0.1, name="ridge"),
        optareg.add_penalty(penalties.orthogonality, 0.01, name="ortho"),
        optax.sgd(0.1),
    )
    params = {"kernel": jnp.eye(3) * 2.0}
    _, state = tx.update({"kernel": jnp.zeros((3, 3))}, tx.init(params), params)
    m = optareg.metrics(state)
    assert float(m["ridge/value"]) == pytest.approx(0.1 * 0.5 * 12)
    assert float(m["ortho/value"]) == pytest.approx(0.01 * 3 * 9)  # diag(4 − 1)² x 3


def test_mask_masked_leaves_get_no_gradient_and_no_value():
    params = _params()
    mask = {"conv": {"kernel": True}, "dense": {"bias": False, "kernel": False}, "s": False}
    grads = jax.tree.map(jnp.ones_like, params)
    tx = optareg.add_penalty(penalties.l2, 0.5, mask=mask)
    u, state = tx.update(grads, tx.init(params), params)
    np.testing.assert_array_equal(u["dense"]["kernel"], grads["dense"]["kernel"])
    np.testing.assert_array_equal(u["dense"]["bias"], grads["dense"]["bias"])
    np.testing.assert_allclose(u["conv"]["kernel"], 1 + 0.5 * params["conv"]["kernel"], rtol=1e-6)
    want = 0.5 * 0.5 * float(jnp.sum(params["conv"]["kernel"] ** 2))
    assert float(optareg.metrics(state)["add_penalty/value"]) == pytest.approx(want, rel=1e-6)
    # l2_to with a full-size reference inside a prefix mask (a whole subtree masked out)
    ref = _params(seed=9)
    tx = optareg.add_penalty(
        penalties.l2_to(ref), 1.0, mask={"conv": True, "dense": False, "s": True}
    )
    u, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(u["s"], 1 + params["s"] - ref["s"], rtol=1e-6)
    np.testing.assert_array_equal(u["dense"]["kernel"], 1.0)


def test_subgradient_l1_never_gives_exact_zeros_but_prox_l1_does():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(100, 8)), jnp.float32)
    y = x @ jnp.asarray([2.0, -1.0, 0, 0, 0, 0, 0, 0.5]) + 0.1 * jnp.asarray(rng.normal(size=100))

    def loss(w):
        return 0.5 * jnp.mean((x @ w - y) ** 2)

    def fit(tx):
        w = jnp.zeros(8)
        s = tx.init(w)
        step = jax.jit(lambda w, s: tx.update(jax.grad(loss)(w), s, w))
        for _ in range(300):
            u, s = step(w, s)
            w = optax.apply_updates(w, u)
        return np.asarray(w)

    lam, lr = 0.3, 0.1
    w_sub = fit(optareg.chain(optareg.add_penalty(penalties.l1, lam), optax.sgd(lr)))
    w_prox = fit(optareg.chain(optax.sgd(lr), optareg.prox_l1(lam, lr)))
    assert np.sum(w_prox == 0) >= 4
    assert np.sum(w_sub == 0) == 0  # the subgradient oscillates around zero
    small = w_prox == 0
    assert np.all(np.abs(w_sub[small]) <= 2 * lr * lam)  # ... within about one step η·λ of it


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"penalty": 1.0, "strength": 0.1}, TypeError, "`penalty`"),
        ({"penalty": None, "strength": 0.1}, TypeError, "`penalty`"),
        ({"penalty": penalties.l2, "strength": -0.1}, ValueError, "`strength`"),
        ({"penalty": penalties.l2, "strength": float("inf")}, ValueError, "`strength`"),
        ({"penalty": penalties.l2, "strength": "0.1"}, TypeError, "`strength`"),
        ({"penalty": penalties.l2, "strength": 0.1, "name": ""}, ValueError, "`name`"),
        ({"penalty": penalties.l2, "strength": 0.1, "name": 3}, TypeError, "`name`"),
        ({"penalty": penalties.l2, "strength": 0.1, "mask": {"w": 0}}, TypeError, "`mask`"),
    ],
)
def test_bad_arguments_raise_at_construction(kwargs, error, match):
    with pytest.raises(error, match=match):
        optareg.add_penalty(**kwargs)


def test_runtime_errors_name_the_problem():
    params = {"w": jnp.ones(3)}
    tx = optareg.add_penalty(lambda p: p["w"] ** 2, 0.1)  # not a scalar
    with pytest.raises(ValueError, match="must return a scalar"):
        tx.update(params, tx.init(params), params)
    tx = optareg.add_penalty(penalties.l2, 0.1)
    with pytest.raises(ValueError, match="params"):
        tx.update(params, tx.init(params))
    with pytest.raises(TypeError, match="floating-point"):
        tx.init({"i": jnp.ones(2, jnp.int32)})


def test_static_zero_passes_updates_through_and_chain_order():
    params = {"w": jnp.array([1.0, -0.0])}
    g = {"w": jnp.array([-0.0, jnp.inf])}
    tx = optareg.add_penalty(penalties.l2, 0.0)
    u, state = tx.update(g, tx.init(params), params)
    assert u is g or np.array_equal(np.signbit(u["w"]), np.signbit(g["w"]))
    assert float(optareg.metrics(state)["add_penalty/value"]) == 0.0
    with pytest.raises(ValueError, match="misplaced"):
        optareg.chain(optax.sgd(0.1), optareg.max_norm(1.0), optareg.add_penalty(penalties.l2, 1.0))
    optareg.chain(optareg.add_penalty(penalties.l2, 1.0), optax.sgd(0.1), optareg.max_norm(1.0))


def test_bf16_params_keep_dtype_and_zero_params_are_finite():
    for params in (_params(jnp.bfloat16), jax.tree.map(jnp.zeros_like, _params(jnp.bfloat16))):
        for r in (penalties.l2, penalties.l1, penalties.orthogonality):
            tx = optareg.add_penalty(r, 0.1)
            u, state = tx.update(params, tx.init(params), params)
            chex.assert_trees_all_equal_shapes_and_dtypes(u, params)
            chex.assert_tree_all_finite((u, optareg.metrics(state)))


def test_works_on_equinox_and_nnx_trees():
    import equinox as eqx
    from flax import nnx

    model = eqx.nn.MLP(4, 2, 5, 1, key=jax.random.PRNGKey(0))
    params = eqx.filter(model, eqx.is_array)
    w = np.asarray(params.layers[0].weight, np.float64)  # (out, in): units are rows
    want = np.sum((w @ w.T - np.eye(5)) ** 2) + np.sum(
        (np.asarray(params.layers[1].weight) @ np.asarray(params.layers[1].weight).T - np.eye(2))
        ** 2
    )
    assert float(penalties.orthogonality(params)) == pytest.approx(want, rel=1e-5)

    lin = nnx.Linear(4, 3, rngs=nnx.Rngs(0))
    opt = nnx.Optimizer(
        lin, optareg.chain(optareg.add_penalty(penalties.l2, 0.5), optax.sgd(0.1)), wrt=nnx.Param
    )
    before = np.asarray(lin.kernel[...])
    grads = jax.tree.map(jnp.zeros_like, nnx.state(lin, nnx.Param))
    opt.update(lin, grads)
    np.testing.assert_allclose(lin.kernel[...], before * (1 - 0.1 * 0.5), rtol=1e-6)
    assert "add_penalty/value" in optareg.metrics(opt.opt_state)


@pytest.mark.parametrize(
    "penalty",
    [
        optareg.penalties.l2,
        optareg.penalties.l1,
        optareg.penalties.orthogonality,
        optareg.penalties.l2_to({"w": jnp.zeros(2)}),
    ],
    ids=["l2", "l1", "orthogonality", "l2_to"],
)
def test_penalty_under_inject_hyperparams_needs_static_args(penalty):
    """optax calls a callable argument not named in static_args with the step count: every
    penalty says so (l2_to raised an unrelated AttributeError, l2 a bare 'must be callable').
    Named in static_args, the logged value is λ·R(θ): 0.1·½·(2² + 2²) = 0.4 for l2."""
    params = {"w": jnp.full((2,), 2.0)}
    tx = optax.inject_hyperparams(optareg.add_penalty)(penalty=penalty, strength=0.1)
    with pytest.raises(TypeError, match=r"static_args=\('penalty',\)"):
        tx.init(params)
    tx = optax.inject_hyperparams(optareg.add_penalty, static_args=("penalty",))(
        penalty=penalty, strength=0.1
    )
    _, state = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
    value = float(optareg.metrics(state)["add_penalty/value"])
    assert value == pytest.approx(0.1 * float(penalty(params)), rel=1e-6)
