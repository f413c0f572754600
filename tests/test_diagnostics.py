"""optareg.track and optareg.metrics: numbers against numpy float64, pass-through, nesting."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import optareg
from optareg import _numerics

METRICS = (
    "grad_norm",
    "param_norm",
    "update_norm",
    "update_ratio",
    "sparsity",
    "nonfinite",
    "applied_update_ratio",
    "lost_update_fraction",
)


def make_tree(dtype=jnp.float32, seed=0):
    """Mixed pytree (nested dict, 4-D conv kernel, bias, scalar) with a few exact zeros."""
    rng = np.random.default_rng(seed)
    tree = {
        "conv": {"kernel": rng.normal(size=(3, 3, 2, 4))},
        "dense1": {"bias": np.zeros(4), "kernel": rng.normal(size=(6, 4))},
        "scale": np.asarray(rng.normal()),
    }
    tree["dense1"]["kernel"][0] = 0.0
    return jax.tree.map(lambda x: jnp.asarray(x, dtype), tree)


def make_updates(params, seed=1, nonfinite=False):
    """Updates that cancel some parameters exactly (zeros in θ + u), optionally with NaN/Inf."""
    rng = np.random.default_rng(seed)
    u = jax.tree.map(lambda p: np.asarray(rng.normal(size=p.shape) * 0.1), params)
    u["conv"]["kernel"][0, 0] = -np.asarray(params["conv"]["kernel"][0, 0], np.float64)
    u["dense1"]["kernel"][0, :2] = 0.0  # θ = 0 there and u = 0: θ + u = 0
    if nonfinite:
        u["conv"]["kernel"][1, 1, 0, 0] = np.nan
        u["dense1"]["kernel"][3, 3] = np.inf
        u["dense1"]["bias"][1] = -np.inf
    dtype = jax.tree.leaves(params)[0].dtype
    return jax.tree.map(lambda x: jnp.asarray(x, dtype), u)


def landed(u, p):
    """``optax.apply_updates(θ, u)`` in numpy: θ + u rounded to θ's dtype, as float64."""
    p_np = np.asarray(p)
    y = (np.asarray(p, np.float64) + np.asarray(u, np.float64)).astype(p_np.dtype)
    return y.astype(np.float64)


def np_metrics(u_leaves, p_leaves):
    """float64 reference over a list of leaves."""
    u = np.concatenate([np.asarray(x, np.float64).ravel() for x in u_leaves])
    p = np.concatenate([np.asarray(x, np.float64).ravel() for x in p_leaves])
    y = np.concatenate([landed(a, b).ravel() for a, b in zip(u_leaves, p_leaves, strict=True)])
    un, pn = np.sqrt(np.sum(u**2)), np.sqrt(np.sum(p**2))
    with np.errstate(invalid="ignore"):
        d = y - p
        dn = np.sqrt(np.sum(d**2))
    moved = u != 0
    return {
        "grad_norm": un,
        "param_norm": pn,
        "update_norm": un,
        "update_ratio": un / pn if pn > 0 else 0.0,
        "sparsity": np.mean(y == 0),
        "nonfinite": np.sum(~np.isfinite(u)),
        "applied_update_ratio": dn / pn if pn > 0 else 0.0,
        "lost_update_fraction": np.sum(moved & (d == 0)) / max(np.sum(moved), 1),
    }


def path_str(path):
    return "/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)


def assert_metric(got, want, metric, dtype=jnp.float32):
    if metric == "nonfinite":
        assert got.dtype == jnp.int32
        assert int(got) == int(want)
    else:
        assert got.dtype == jnp.float32
        if np.isfinite(want):
            rtol = 1e-6 if dtype == jnp.float32 else 1e-5
            np.testing.assert_allclose(float(got), want, rtol=rtol, atol=1e-30)
        else:
            assert not np.isfinite(float(got))


# ---------------------------------------------------------------- numbers vs numpy float64


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("nonfinite", [False, True], ids=["finite", "nonfinite"])
def test_metrics_equal_numpy_float64(dtype, nonfinite):
    params = make_tree(dtype)
    updates = make_updates(params, nonfinite=nonfinite)
    tx = optareg.track(per_leaf=True, name="t")
    _, state = jax.jit(tx.update)(updates, tx.init(params), params)
    m = optareg.metrics(state)
    flat_u = jax.tree_util.tree_flatten_with_path(updates)[0]
    flat_p = jax.tree.leaves(params)
    want = np_metrics([u for _, u in flat_u], flat_p)
    if nonfinite:
        assert want["nonfinite"] == 3
    for k in METRICS:
        assert_metric(m[f"t/{k}"], want[k], k, dtype)
    # per leaf, keyed by the tree path
    for (path, u), p in zip(flat_u, flat_p, strict=True):
        want_leaf = np_metrics([u], [p])
        for k in METRICS:
            assert_metric(m[f"t/{k}/{path_str(path)}"], want_leaf[k], k, dtype)
    expected_keys = {f"t/{k}" for k in METRICS} | {
        f"t/{k}/{leaf}"
        for k in METRICS
        for leaf in ("conv/kernel", "dense1/bias", "dense1/kernel", "scale")
    }
    assert set(m) == expected_keys


def test_placement_first_sees_gradients_last_sees_final_step():
    params = make_tree()
    grads = make_updates(params, seed=3)
    lr = 0.05
    tx = optax.chain(
        optareg.track(name="raw"),
        optax.scale_by_adam(),
        optareg.add_decayed_weights(1e-2),
        optax.scale_by_learning_rate(lr),
        optareg.track(name="step"),
    )
    ref = optax.chain(optax.scale_by_adam(), optax.add_decayed_weights(1e-2), optax.sgd(lr))
    state, s_ref = tx.init(params), ref.init(params)
    update, update_ref = jax.jit(tx.update), jax.jit(ref.update)
    for i in range(3):
        grads = make_updates(params, seed=10 + i)
        u, state = update(grads, state, params)
        u_ref, s_ref = update_ref(grads, s_ref, params)
        chex.assert_trees_all_equal(u, u_ref)
        m = optareg.metrics(state)
        g_np = np_metrics(jax.tree.leaves(grads), jax.tree.leaves(params))
        s_np = np_metrics(jax.tree.leaves(u), jax.tree.leaves(params))
        for k in METRICS:
            assert_metric(m[f"raw/{k}"], g_np[k], k)
            assert_metric(m[f"step/{k}"], s_np[k], k)
        params = optax.apply_updates(params, u)
    # The last instance's sparsity is that of the parameters after the step.
    new = np.concatenate([np.ravel(x) for x in jax.tree.leaves(params)])
    np.testing.assert_allclose(float(m["step/sparsity"]), np.mean(new == 0), rtol=1e-6)


@pytest.mark.parametrize("jit", [True, False], ids=["jit", "eager"])
def test_norms_do_not_overflow(jit):
    """Entries near 1e30 (squares overflow float32): norms still match float64, ratio finite."""
    params = jax.tree.map(lambda x: x * 1e30, make_tree())
    updates = jax.tree.map(lambda x: x * 1e31, make_updates(make_tree()))
    tx = optareg.track(per_leaf=True, name="t")
    update = jax.jit(tx.update) if jit else tx.update
    _, state = update(updates, tx.init(params), params)
    m = optareg.metrics(state)
    want = np_metrics(jax.tree.leaves(updates), jax.tree.leaves(params))
    for k in ("grad_norm", "param_norm", "update_ratio"):
        np.testing.assert_allclose(float(m[f"t/{k}"]), want[k], rtol=1e-5)
    # the scalar leaf (a size-1 reduction) too
    leaf = np_metrics([updates["scale"]], [params["scale"]])
    np.testing.assert_allclose(float(m["t/param_norm/scale"]), leaf["param_norm"], rtol=1e-6)
    chex.assert_tree_all_finite(state)


def test_zero_params_give_zero_ratio_not_nan():
    params = jax.tree.map(jnp.zeros_like, make_tree())
    updates = make_updates(make_tree())
    tx = optareg.track(per_leaf=True)
    _, state = tx.update(updates, tx.init(params), params)
    m = optareg.metrics(state)
    assert float(m["optareg/update_ratio"]) == 0.0
    assert float(m["optareg/update_ratio/dense1/kernel"]) == 0.0
    assert float(m["optareg/param_norm"]) == 0.0
    assert float(m["optareg/update_norm"]) > 0
    chex.assert_tree_all_finite(state)


# ---------------------------------------------------------------- pass-through and cost


@pytest.mark.parametrize("per_leaf", [False, True])
def test_updates_bit_identical(per_leaf):
    params = make_tree(jnp.bfloat16)
    updates = make_updates(params, nonfinite=True)
    tx = optareg.track(per_leaf=per_leaf)
    out, _ = jax.jit(tx.update)(updates, tx.init(params), params)
    for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(updates), strict=True):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(
            np.asarray(a).view(np.uint16), np.asarray(b).view(np.uint16)
        )  # bitwise, NaN payloads included


def test_no_extra_gradient_evaluation():
    """track never calls grad_fn, and its compiled cost is a few flops per parameter."""
    calls = []

    def grad_fn(p):
        calls.append(1)
        return p

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(256, 64)), jnp.float32)
    y = jnp.asarray(rng.normal(size=(256, 32)), jnp.float32)
    params = {"w": jnp.zeros((64, 32)), "b": jnp.zeros(32)}
    n = 64 * 32 + 32

    def loss(p):
        return jnp.mean((x @ p["w"] + p["b"] - y) ** 2)

    def flops(tx):
        def step(p, s):
            g = jax.grad(loss)(p)
            u, s = tx.update(g, s, p, grad_fn=grad_fn)
            return optax.apply_updates(p, u), s

        compiled = jax.jit(step).lower(params, tx.init(params)).compile()
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        if not cost or "flops" not in cost:
            pytest.skip("this backend reports no cost analysis")
        return cost["flops"]

    base = flops(optax.sgd(0.1))
    with_track = flops(optax.chain(optareg.track(), optax.sgd(0.1), optareg.track(per_leaf=True)))
    grad_cost = base - 2 * n  # the forward/backward matmuls dominate
    assert calls == []
    assert with_track - base < 64 * n  # two instances: < 32 flops per parameter each
    assert with_track - base < 0.5 * grad_cost  # far less than one gradient evaluation


# ---------------------------------------------------------------- metrics() through nesting

MASK = {"conv": {"kernel": True}, "dense1": {"bias": False, "kernel": True}, "scale": False}


def nested_tx():
    inner = optax.chain(
        optareg.track(name="raw"),
        optax.inject_hyperparams(optax.scale_by_adam)(b1=0.9),
        optareg.add_decayed_weights(1e-2, mask=MASK),
        optax.masked(optareg.track(per_leaf=True, name="masked"), MASK),
        optax.inject_hyperparams(
            lambda learning_rate: optax.chain(
                optax.sgd(learning_rate), optareg.track(per_leaf=True, name="step")
            )
        )(learning_rate=0.1),
        optax.masked(optax.chain(optareg.add_decayed_weights(0.0), optareg.track()), MASK),
    )
    return optax.MultiSteps(inner, every_k_schedule=2)


LEAVES = ("conv/kernel", "dense1/bias", "dense1/kernel", "scale")
EXPECTED_KEYS = (
    {f"{n}/{k}" for n in ("raw", "masked", "step", "optareg") for k in METRICS}
    | {f"masked/{k}/{leaf}" for k in METRICS for leaf in ("conv/kernel", "dense1/kernel")}
    | {f"step/{k}/{leaf}" for k in METRICS for leaf in LEAVES}
)


def test_metrics_through_chain_masked_inject_multisteps_jit_stable_keys():
    tx = nested_tx()
    params = make_tree()
    state = tx.init(params)
    keys0 = set(optareg.metrics(state))
    assert keys0 == EXPECTED_KEYS

    @jax.jit
    def step(params, state, grads):
        u, state = tx.update(grads, state, params)
        return optax.apply_updates(params, u), state, optareg.metrics(state)

    prev = prev_grads = None
    for i in range(4):
        grads = make_updates(params, seed=20 + i)
        new_params, state, m = step(params, state, grads)
        assert set(m) == EXPECTED_KEYS
        assert all(v.shape == () for v in m.values())
        if i % 2 == 0:  # MultiSteps accumulating: the inner state (and metrics) are unchanged
            if prev is not None:
                chex.assert_trees_all_equal(m, prev)
        else:
            # the first instance sees the average of the two micro-step gradients
            avg = jax.tree.map(lambda a, b: (a + b) / 2, prev_grads, grads)
            raw = np_metrics(jax.tree.leaves(avg), jax.tree.leaves(params))
            np.testing.assert_allclose(float(m["raw/grad_norm"]), raw["grad_norm"], rtol=1e-5)
            # the masked instance sees only the masked-in leaves
            kept = [params["conv"]["kernel"], params["dense1"]["kernel"]]
            want = np.sqrt(sum(np.sum(np.asarray(p, np.float64) ** 2) for p in kept))
            assert float(m["masked/param_norm"]) == pytest.approx(want, rel=1e-6)
            assert float(m["masked/update_ratio/dense1/kernel"]) > 0
        prev, prev_grads = m, grads
        params = new_params
    # map_params sees params-structured per-leaf trees
    mapped = optax.tree.map_params(tx, lambda p: p, state)
    chex.assert_trees_all_equal(mapped, state)


def test_duplicate_names_get_suffix():
    tx = optax.chain(optareg.track(name="t"), optax.sgd(0.1), optareg.track(name="t"))
    params = make_tree()
    state = tx.init(params)
    _, state = jax.jit(tx.update)(make_updates(params), state, params)
    m = optareg.metrics(state)
    assert {"t/grad_norm", "t/grad_norm#2"} <= set(m)
    assert float(m["t/grad_norm#2"]) == pytest.approx(0.1 * float(m["t/grad_norm"]), rel=1e-6)


def test_flax_nnx_paths_and_optimizer_state():
    nnx = pytest.importorskip("flax.nnx")

    class MLP(nnx.Module):
        def __init__(self, rngs):
            self.dense1 = nnx.Linear(3, 4, rngs=rngs)
            self.dense2 = nnx.Linear(4, 2, rngs=rngs)

        def __call__(self, x):
            return self.dense2(jax.nn.relu(self.dense1(x)))

    model = MLP(nnx.Rngs(0))
    opt = nnx.Optimizer(
        model, optax.chain(optax.sgd(0.1), optareg.track(per_leaf=True)), wrt=nnx.Param
    )
    x = jnp.ones((5, 3))
    theta = [np.array(leaf) for leaf in jax.tree.leaves(nnx.state(model, nnx.Param))]  # copy
    grads = nnx.grad(lambda m: jnp.sum(m(x) ** 2))(model)
    opt.update(model, grads)
    m = optareg.metrics(opt.opt_state)
    assert "optareg/update_ratio/dense1/kernel" in m
    assert all(isinstance(v, jax.Array) for v in m.values())
    g = [np.asarray(leaf) for leaf in jax.tree.leaves(grads)]
    want = np_metrics([-0.1 * x for x in g], theta)
    np.testing.assert_allclose(float(m["optareg/update_ratio"]), want["update_ratio"], rtol=1e-5)


def test_validation():
    with pytest.raises(TypeError, match="per_leaf"):
        optareg.track(per_leaf=1)
    with pytest.raises(ValueError, match="name"):
        optareg.track(name="")
    tx = optareg.track()
    params = make_tree()
    with pytest.raises(ValueError, match="params"):
        tx.update(params, tx.init(params), None)


# ---------------------------------------------------------------- a divergence, step by step


def test_divergence_trips_ratio_then_nonfinite_before_loss_nan():
    """Least squares started next to its solution, with a learning rate 8x the limit 2/L.

    The error grows 15x per step. The final step's update/parameter ratio passes 1 at step 2,
    while the loss has risen by only 20%; the gradients turn non-finite at step 35 (they
    overflow float32 one step before the parameters do); the loss first reads NaN at step 36
    (it already read inf from step 17 on: squares overflow). With the learning rate at 1/L
    nothing trips. Steps are deterministic: fixed data, float32, no randomness in the loop.
    """
    rng = np.random.default_rng(0)
    x64 = rng.normal(size=(64, 8))
    y64 = rng.normal(size=(64,))
    x, y = jnp.asarray(x64, jnp.float32), jnp.asarray(y64, jnp.float32)
    lipschitz = 2 * float(np.linalg.eigvalsh(x64.T @ x64 / 64).max())
    w_star = np.linalg.lstsq(x64, y64, rcond=None)[0]

    def loss(p):
        return jnp.mean((x @ p["w"] - y) ** 2)

    def first_trips(lr, steps=45):
        tx = optax.chain(optareg.track(name="raw"), optax.sgd(lr), optareg.track(name="step"))
        params = {"w": jnp.asarray(w_star + 1e-3, jnp.float32)}
        state = tx.init(params)

        @jax.jit
        def step(params, state):
            value, g = jax.value_and_grad(loss)(params)
            u, state = tx.update(g, state, params)
            return optax.apply_updates(params, u), state, value, optareg.metrics(state)

        trips = {"ratio": None, "nonfinite": None, "nan": None}
        losses = []
        for t in range(steps):
            params, state, value, m = step(params, state)
            losses.append(float(value))
            ratio = float(m["step/update_ratio"])
            if trips["ratio"] is None and ratio > 1.0:
                trips["ratio"] = t
            if trips["nonfinite"] is None and int(m["raw/nonfinite"]) > 0:
                trips["nonfinite"] = t
                assert int(m["step/nonfinite"]) > 0
            if trips["nan"] is None and np.isnan(losses[-1]):
                trips["nan"] = t
            if trips["nonfinite"] is None:  # finite gradients: the overflow-safe ratio is finite
                assert np.isfinite(ratio)
        return trips, losses

    trips, losses = first_trips(16.0 / lipschitz)
    assert trips == {"ratio": 2, "nonfinite": 35, "nan": 36}
    assert losses[2] < 1.25 * losses[0]  # the loss barely moved when the ratio tripped
    assert np.isinf(losses[34])  # the loss overflowed long before: inf, not yet NaN
    trips, losses = first_trips(1.0 / lipschitz)
    assert trips == {"ratio": None, "nonfinite": None, "nan": None}
    assert losses[-1] <= losses[0]


# ---------------------------------------------------------------- the change that lands


@pytest.mark.parametrize("per_leaf", [False, True])
def test_lost_updates_closed_forms_bf16_and_f32(per_leaf):
    """θ = 1.0 and u = −1e-5: in bfloat16 (unit roundoff 2⁻⁸) θ + u rounds back to 1.0, so the
    whole step is lost; in float32 it lands (1 − 1e-5 up to one rounding)."""
    for dtype, lost, applied in ((jnp.bfloat16, 1.0, 0.0), (jnp.float32, 0.0, 1e-5)):
        params = {"a": jnp.ones((4, 8), dtype), "b": jnp.ones(8, dtype)}
        updates = jax.tree.map(lambda p: jnp.full(p.shape, -1e-5, dtype), params)
        tx = optareg.track(name="t", per_leaf=per_leaf)
        _, state = jax.jit(tx.update)(updates, tx.init(params), params)
        m = optareg.metrics(state)
        keys = [""] + (["/a", "/b"] if per_leaf else [])
        for k in keys:
            assert float(m[f"t/lost_update_fraction{k}"]) == lost
            # ‖u‖/‖θ‖ = |u| with every entry equal: 1e-5 as stored in the dtype
            step = abs(float(jnp.asarray(-1e-5, dtype)))
            np.testing.assert_allclose(float(m[f"t/update_ratio{k}"]), step, rtol=1e-6)
            got = float(m[f"t/applied_update_ratio{k}"])
            if lost:
                assert got == 0.0
            else:  # 1 − 1e-5 in float32 is 0.99999 ± 2⁻²⁵: the landed change within 1%
                np.testing.assert_allclose(got, applied, rtol=1e-2)


def test_lost_updates_partial_and_with_zero_updates():
    """Half the entries get a step below half an ulp of bfloat16 1.0 (lost), a quarter a step
    that lands, a quarter no step at all (not counted): lost = 2/3 of the moved entries."""
    p = jnp.ones(8, jnp.bfloat16)
    u = jnp.asarray([-1e-4] * 4 + [-0.5] * 2 + [0.0] * 2, jnp.bfloat16)
    tx = optareg.track(name="t")
    _, state = tx.update({"w": u}, tx.init({"w": p}), {"w": p})
    m = optareg.metrics(state)
    assert float(m["t/lost_update_fraction"]) == pytest.approx(4 / 6)
    # the applied change is exactly −0.5 on two entries: ‖d‖/‖θ‖ = √(2·0.25)/√8 = 0.25
    assert float(m["t/applied_update_ratio"]) == pytest.approx(0.25, rel=1e-6)
    # no update at all: nothing moved, nothing lost (0, not NaN)
    _, state = tx.update({"w": jnp.zeros(8, jnp.bfloat16)}, tx.init({"w": p}), {"w": p})
    assert float(optareg.metrics(state)["t/lost_update_fraction"]) == 0.0


@pytest.mark.parametrize("jit", [False, True])
def test_lost_updates_with_non_finite_parameters(jit):
    """θ = ±inf or NaN with u = 0 is not a moved entry (d = inf − inf is NaN there, not 0): the
    fraction stays in [0, 1]. Oracle: the definition, counted by hand."""
    tx = optareg.track(name="t")
    update = jax.jit(tx.update) if jit else tx.update
    cases = [  # (θ, u, lost / moved)
        ([np.inf, -np.inf, 1.0, 1.0], [0.0, 0.0, 1e-9, 0.5], 1 / 2),
        ([np.inf, 1.0], [0.0, 1e-9], 1.0),
        ([np.nan, 1.0, 2.0], [0.0, 0.25, 0.5], 0.0),
        ([np.nan, np.inf, 1.0], [1.0, 1.0, 1e-9], 1 / 3),  # d = NaN there: not a change of 0
    ]
    for th, u, want in cases:
        p = {"w": jnp.asarray(th, jnp.float32)}
        _, state = update({"w": jnp.asarray(u, jnp.float32)}, tx.init(p), p)
        assert float(optareg.metrics(state)["t/lost_update_fraction"]) == pytest.approx(want)


# ---------------------------------------------------------------- exact counts in one pass

SPECIAL = [0.0, -0.0, 1e-45, -1e-45, 1e-30, -1e-30, 1.0, -2.5, np.inf, -np.inf, np.nan, 3e38]


@given(
    st.lists(st.sampled_from(SPECIAL), min_size=1, max_size=300),
    st.sampled_from([(), (3,), (5, 7), (2, 3, 4)]),
)
@settings(max_examples=40, deadline=None)
def test_counts_are_exact_for_every_special_value(values, trailing):
    """Zero / non-finite / non-zero counts equal the comparison counts of the same backend (a
    subnormal is whatever the backend's arithmetic makes of it: a zero under XLA:CPU's
    flush-to-zero) and, without subnormals, numpy's; ±0 are zeros, NaN and ±Inf are not."""
    n = int(np.prod(trailing, dtype=np.int64)) if trailing else 1
    x = np.resize(np.asarray(values, np.float32), (len(values) * n,))
    x = x.reshape((len(values), *trailing)) if trailing else x
    xj = jnp.asarray(x)
    zeros = jax.jit(lambda x: _numerics.zero_counts([x])[0])(xj)
    bad = jax.jit(lambda x: _numerics.nonfinite_counts([x])[0])(xj)
    nonzero = jax.jit(_numerics.nonzero_count)(xj)
    frac = jax.jit(lambda x: _numerics.zeros_fraction([x, x[:1]]))(xj)
    ref_zeros = int(jax.jit(lambda x: jnp.sum(x == 0))(xj))  # the backend's own comparison
    assert float(zeros) == ref_zeros and float(nonzero) == x.size - ref_zeros
    assert int(bad) == int(np.sum(~np.isfinite(x)))
    first = int(jax.jit(lambda x: jnp.sum(x[:1] == 0))(xj))
    assert float(frac) == pytest.approx((ref_zeros + first) / (x.size + x[:1].size), rel=1e-7)
    if not np.any((x != 0) & (np.abs(x) < np.finfo(np.float32).tiny)):  # no subnormals
        assert ref_zeros == int(np.sum(x == 0))


def test_fused_sums_counts_and_floats_in_one_pass():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(37, 300)).astype(np.float32)
    x[rng.random(x.shape) < 0.3] = 0.0
    terms = lambda x: [  # noqa: E731
        (x == 0).astype(jnp.int32),
        x * x,
        jnp.abs(x),
        (x > 0).astype(jnp.int32),
        x,
    ]
    got = jax.jit(lambda x: _numerics.fused_sums(terms(x)))(jnp.asarray(x))
    x64 = x.astype(np.float64)
    assert [int(got[0]), int(got[3])] == [int(np.sum(x == 0)), int(np.sum(x > 0))]
    assert got[0].dtype == jnp.int32 and got[1].dtype == jnp.float32
    wants = (np.sum(x64**2), np.sum(np.abs(x64)), np.sum(x64))
    for g, want in zip(got[1:3] + got[4:], wants, strict=True):
        np.testing.assert_allclose(float(g), want, rtol=1e-5, atol=1e-3)


def test_counts_stay_exact_beyond_float32_integers():
    """2²⁴ + 5 zeros: a float32 accumulator would stop at 2²⁴ (its integers end there)."""
    n = 2**24 + 5
    x = jnp.zeros(n, jnp.float32).at[-3:].set(1.0)  # 2²⁴ + 2 zeros
    assert float(jax.jit(lambda x: _numerics.zero_counts([x])[0])(x)) == n - 3
    (count,) = jax.jit(lambda x: _numerics.fused_sums([(x == 0).astype(jnp.int32)]))(x)
    assert int(count) == n - 3


def test_float64_global_ratios_of_norms_below_float32s_range():
    """float64 leaves: the global ratios come from float64 norms (cast to float32 only as
    metrics), so ‖u‖/‖θ‖ = 0.01 for norms of 5e-52 / 5e-50 (it was 0: both flushed to 0)."""
    with jax.enable_x64(True):
        p = {"w": jnp.array([3e-50, 4e-50]), "v": jnp.array([0.0])}
        u = {"w": jnp.array([3e-52, 4e-52]), "v": jnp.array([0.0])}
        tx = optareg.track(per_leaf=True, name="t")
        _, state = tx.update(u, tx.init(p), p)
        m = optareg.metrics(state)
        assert m["t/update_ratio"].dtype == jnp.float32
        np.testing.assert_allclose(float(m["t/update_ratio"]), 0.01, rtol=1e-6)
        np.testing.assert_allclose(float(m["t/update_ratio/w"]), 0.01, rtol=1e-6)
