"""sam_perturb in real training code: Flax NNX with BatchNorm and Dropout, float64, gradient
accumulation, Equinox masks, metrics_every, and the errors that catch wrong compositions."""

from __future__ import annotations

import chex
import equinox as eqx
import helpers
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from registry.sam import ENTRIES as SAM_ENTRIES

import optareg

# ---------------------------------------------------------------------------------------------
# Flax NNX: BatchNorm + Dropout + a layer that normalizes with its running mean in training
# ---------------------------------------------------------------------------------------------

D_IN, HIDDEN, D_OUT, N = 4, 8, 3, 16
RATE, LR, RHO = 0.5, 0.1, 0.2


class RunningCenter(nnx.Module):
    """Subtracts its running mean, then updates it: the forward pass *reads* a statistic, so a
    perturbed pass that saw the clean pass's update would give another gradient."""

    def __init__(self, n):
        self.mean = nnx.BatchStat(jnp.full((n,), 0.3, jnp.float32))

    def __call__(self, x):
        y = x - self.mean[...]
        self.mean[...] = 0.9 * self.mean[...] + 0.1 * jnp.mean(x, axis=0)
        return y


class Net(nnx.Module):
    def __init__(self, rngs):
        self.l1 = nnx.Linear(D_IN, HIDDEN, rngs=rngs)
        self.bn = nnx.BatchNorm(HIDDEN, rngs=rngs)
        self.drop = nnx.Dropout(RATE, rngs=rngs)
        self.center = RunningCenter(HIDDEN)
        self.l2 = nnx.Linear(HIDDEN, D_OUT, rngs=rngs)

    def __call__(self, x):
        return self.l2(self.center(self.drop(jax.nn.relu(self.bn(self.l1(x))))))


def nnx_loss(model, x, y):
    return jnp.mean((model(x) - y) ** 2)


def make_net():
    return Net(nnx.Rngs(params=0, dropout=1))


def batch(seed=0):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(N, D_IN)), jnp.float32)
    y = jnp.asarray(rng.normal(size=(N, D_OUT)), jnp.float32)
    return x, y


@nnx.jit
def sam_step(model, optimizer, x, y):
    grad_fn = optareg.nnx_sam_grad_fn(nnx_loss, model, x, y)  # before the clean pass
    grads = nnx.grad(nnx_loss)(model, x, y)
    optimizer.update(model, grads, grad_fn=grad_fn)


clean_grad = nnx.jit(nnx.grad(nnx_loss))  # compiled once: eager NNX is slow on a loaded CPU


@nnx.jit
def plain_step(model, optimizer, x, y):
    optimizer.update(model, nnx.grad(nnx_loss)(model, x, y))


_TX = {}  # one transform per rho: the same optimizer graph, so nnx.jit compiles once per rho


def sam_optimizer(model, rho):
    if rho not in _TX:
        _TX[rho] = optareg.chain(optareg.sam_perturb(rho), optax.sgd(LR))
    return nnx.Optimizer(model, _TX[rho], wrt=nnx.Param)


_SGD = optax.sgd(LR)


def plain_optimizer(model):
    return nnx.Optimizer(model, _SGD, wrt=nnx.Param)


def _np(x):
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    return np.asarray(x)


def arrays(model, filt):
    return jax.tree.map(_np, nnx.to_pure_dict(nnx.state(model, filt)))


def assert_bit_equal(a, b):
    chex.assert_trees_all_equal_structs(a, b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)


def test_nnx_batch_stats_after_sam_step_equal_plain_step():
    """(a) The perturbed pass neither updates the model's statistics nor advances its RNG."""
    x, y = batch()
    m_sam, m_plain = make_net(), make_net()
    sam_step(m_sam, sam_optimizer(m_sam, RHO), x, y)
    plain_step(m_plain, plain_optimizer(m_plain), x, y)
    assert_bit_equal(arrays(m_sam, nnx.BatchStat), arrays(m_plain, nnx.BatchStat))
    assert_bit_equal(arrays(m_sam, nnx.RngCount), arrays(m_plain, nnx.RngCount))
    # and the batch statistics did move, by the clean pass's update (one update, not two)
    fresh = arrays(make_net(), nnx.BatchStat)
    assert not np.array_equal(arrays(m_sam, nnx.BatchStat)["bn"]["mean"], fresh["bn"]["mean"])
    # while SAM changed the step
    p_sam, p_plain = arrays(m_sam, nnx.Param), arrays(m_plain, nnx.Param)
    assert np.abs(p_sam["l1"]["kernel"] - p_plain["l1"]["kernel"]).max() > 1e-4


def test_nnx_rho_zero_is_the_plain_step_bit_for_bit():
    """(b) rho = 0: params, statistics and RNG state exactly as after a plain SGD step."""
    x, y = batch(1)
    m_sam, m_plain = make_net(), make_net()
    opt_sam = sam_optimizer(m_sam, 0.0)
    opt_plain = plain_optimizer(m_plain)
    for _ in range(2):
        sam_step(m_sam, opt_sam, x, y)
        plain_step(m_plain, opt_plain, x, y)
    assert_bit_equal(arrays(m_sam, ...), arrays(m_plain, ...))


def _hand_forward(p, center_mean, mask, x):
    """The Net in plain jax: BatchNorm in training mode (batch statistics, fast variance),
    the given Dropout mask, the running-mean centering with the given mean."""
    h = x @ p["l1"]["kernel"] + p["l1"]["bias"]
    mean = jnp.mean(h, axis=0)
    var = jnp.maximum(jnp.mean(h**2, axis=0) - mean**2, 0.0)
    h = (h - mean) * jax.lax.rsqrt(var + 1e-5) * p["bn"]["scale"] + p["bn"]["bias"]
    h = jnp.where(mask, jax.nn.relu(h) / (1 - RATE), 0.0)
    h = h - center_mean
    return h @ p["l2"]["kernel"] + p["l2"]["bias"], jnp.mean(h + center_mean, axis=0)


def test_nnx_sam_step_equals_independent_computation():
    """(c) θ₁ = θ₀ − η·∇L(θ₀ + ε) with the pre-step (snapshot) statistics and the clean pass's
    dropout mask, computed without nnx.merge or optareg."""
    x, y = batch(2)
    model = make_net()
    p0 = arrays(model, nnx.Param)
    center0 = arrays(model, nnx.BatchStat)["center"]["mean"]
    # the dropout mask the clean pass will draw: the same layer, same RNG state, on ones
    mask = np.asarray(nnx.jit(lambda m: m.drop(jnp.ones((N, HIDDEN))))(nnx.clone(model))) != 0
    assert 0 < mask.mean() < 1

    def hand_loss(p, center):
        out, _ = _hand_forward(p, center, mask, x)
        return jnp.mean((out - y) ** 2)

    hand_grad = jax.jit(jax.grad(hand_loss))
    g = hand_grad(p0, center0)
    # the hand model is the nnx model: same clean gradient
    g_nnx = nnx.to_pure_dict(clean_grad(nnx.clone(model), x, y))
    chex.assert_trees_all_close(g, g_nnx, rtol=1e-5, atol=1e-6)
    g_norm = np.sqrt(sum(np.sum(np.asarray(v, np.float64) ** 2) for v in jax.tree.leaves(g)))
    p_eps = jax.tree.map(lambda q, d: q + RHO * np.asarray(d) / g_norm, p0, g)
    g_p = hand_grad(p_eps, center0)
    expected = jax.tree.map(lambda q, d: q - LR * d, p0, g_p)

    sam_step(model, sam_optimizer(model, RHO), x, y)
    chex.assert_trees_all_close(arrays(model, nnx.Param), expected, rtol=1e-5, atol=1e-6)
    # a grad_fn that saw the clean pass's centering update, or another mask, differs by more
    g_wrong = hand_grad(p_eps, center0 + 0.05)
    assert np.abs(np.asarray(g_wrong["l1"]["kernel"] - g_p["l1"]["kernel"])).max() > 1e-3
    # the statistics are the clean pass's update of the snapshot
    _, batch_mean = jax.jit(_hand_forward)(p0, center0, mask, x)
    np.testing.assert_allclose(
        arrays(model, nnx.BatchStat)["center"]["mean"],
        0.9 * center0 + 0.1 * np.asarray(batch_mean),
        rtol=1e-5,
        atol=1e-6,
    )


def test_nnx_grad_fn_accepts_state_of_variables_and_pure_arrays():
    """Outside nnx.Optimizer: params as nnx.state's Variables (with nnx.grad's grads) work too;
    the gradient comes back in the form it was asked in, with the same numbers."""
    x, y = batch(3)
    model = make_net()
    params = nnx.state(model, nnx.Param)
    grad_fn = optareg.nnx_sam_grad_fn(nnx_loss, model, x, y)
    grads = clean_grad(nnx.clone(model), x, y)
    g_vars = jax.jit(grad_fn)(params)
    assert jax.tree.structure(g_vars) == jax.tree.structure(grads)  # Variables, like nnx.grad
    # at θ the snapshot gives the clean gradient itself (the pure form: tests above)
    chex.assert_trees_all_close(nnx.as_pure(g_vars), nnx.as_pure(grads), rtol=1e-6, atol=1e-7)


def test_nnx_grad_fn_wrong_wrt_is_a_clear_error():
    x, y = batch()
    model = make_net()
    with pytest.raises(TypeError, match="loss_fn"):
        optareg.nnx_sam_grad_fn(3, model, x, y)
    with pytest.raises(TypeError, match="model"):
        optareg.nnx_sam_grad_fn(nnx_loss, {"w": jnp.ones(2)}, x, y)
    grad_fn = optareg.nnx_sam_grad_fn(nnx_loss, model, x, y, wrt=nnx.Param)
    with pytest.raises(ValueError, match="wrt"):
        grad_fn(nnx.as_pure(nnx.state(model, nnx.BatchStat)))


# ---------------------------------------------------------------------------------------------
# float64 (jax_enable_x64): every state field keeps its dtype and shape
# ---------------------------------------------------------------------------------------------

_RNG = np.random.default_rng(0)
_M = _RNG.normal(size=(5, 5))
A64 = _M @ _M.T + 0.5 * np.eye(5)
THETA64 = _RNG.normal(size=5)


def to_tree(v, dtype):
    v = jnp.asarray(v, dtype)
    return {"a": v[:3], "b": v[3:].reshape(1, 2)}


def to_vec(tree):
    return jnp.concatenate([tree["a"], tree["b"].reshape(-1)])


def quad_grad_fn(params):
    a = jnp.asarray(A64, to_vec(params).dtype)
    return to_tree(a @ to_vec(params), to_vec(params).dtype)


_X64_CASES = [
    ({}, "float64"),
    ({"reuse_every": 3, "gsam_alpha": 0.3, "adaptive": True}, "float64"),
    (
        {
            "rho": optax.linear_schedule(0.3, 0.05, 5),
            "norm": "linf",
            "mask": {"a": True, "b": False},
        },
        "float64",
    ),
    ({"metrics_every": 2, "reuse_every": 2}, "float32"),
]


@pytest.mark.parametrize(
    "kwargs, dtype", _X64_CASES, ids=[f"{'-'.join(k) or 'l2'}-{d}" for k, d in _X64_CASES]
)
def test_x64_state_dtypes_stable_in_scan(kwargs, dtype):
    """A ``lax.scan`` training loop: its carry must keep dtypes (the state used to turn
    float64 after one update) and LookSAM's ``lax.cond`` must trace (its branches used to
    return float32 and float64 ``‖g_p‖``)."""
    with jax.enable_x64(True):
        kwargs = {"rho": 0.3, **kwargs}
        tx = optareg.chain(optareg.sam_perturb(**kwargs), optax.sgd(0.05))
        params = to_tree(THETA64, dtype)
        state0 = tx.init(params)

        def body(carry, _):
            p, s = carry
            u, s = tx.update(quad_grad_fn(p), s, p, grad_fn=quad_grad_fn)
            return (optax.apply_updates(p, u), s), None

        (p, s), _ = jax.jit(lambda c: jax.lax.scan(body, c, None, length=7))((params, state0))
        chex.assert_trees_all_equal_shapes_and_dtypes(s, state0)
        chex.assert_trees_all_equal_shapes_and_dtypes(p, params)
        chex.assert_tree_all_finite((p, s))
        m = optareg.metrics(s)
        assert {v.dtype for v in m.values()} == {jnp.dtype(jnp.float32)}


def test_x64_closed_form_in_float64_precision():
    """With float64 params the arithmetic is float64: the l2 SAM gradient to 1e-12."""
    with jax.enable_x64(True):
        tx = optareg.sam_perturb(0.3, reuse_every=3)
        params = to_tree(THETA64, "float64")
        update = jax.jit(tx.update, static_argnames="grad_fn")
        out, state = update(quad_grad_fn(params), tx.init(params), params, grad_fn=quad_grad_fn)
        g = A64 @ THETA64
        expected = g + 0.3 * A64 @ g / np.linalg.norm(g)
        np.testing.assert_allclose(np.asarray(to_vec(out)), expected, rtol=1e-12)
        assert state.grad_norm.dtype == jnp.float32
        np.testing.assert_allclose(float(state.grad_norm), np.linalg.norm(g), rtol=1e-7)


# ---------------------------------------------------------------------------------------------
# gradient accumulation: SAM outside MultiSteps; SAM inside MultiSteps / masked is an error
# ---------------------------------------------------------------------------------------------

K_MICRO = 4


def _least_squares(seed=0, k=K_MICRO, n=6, d=3):
    rng = np.random.default_rng(seed)
    xs = rng.normal(size=(k, n, d))
    ys = rng.normal(size=(k, n))
    w0, b0 = rng.normal(size=d), 0.3
    return xs, ys, w0, b0


def _ls_grad_fn(x, y):
    def loss(p):
        return 0.5 * jnp.mean((x @ p["w"] + p["b"] - y) ** 2)

    return jax.grad(loss)


def _ls_grad64(x, y, w, b):
    r = x @ w + b - y
    return x.T @ r / len(y), np.mean(r)


def test_sam_outside_multisteps_is_mean_of_per_micro_batch_sam():
    xs, ys, w0, b0 = _least_squares()
    rho, lr = 0.2, 0.1
    tx = optareg.chain(optareg.sam_perturb(rho), optax.MultiSteps(optax.sgd(lr), K_MICRO))
    params = {"w": jnp.asarray(w0, jnp.float32), "b": jnp.asarray(b0, jnp.float32)}
    state = tx.init(params)

    @jax.jit
    def update(state, params, x, y):  # one compilation for all micro-batches
        gf = _ls_grad_fn(x, y)
        return tx.update(gf(params), state, params, grad_fn=gf)

    expected_w, expected_b = np.zeros(3), 0.0
    for i in range(K_MICRO):
        u, state = update(state, params, xs[i].astype(np.float32), ys[i].astype(np.float32))
        gw, gb = _ls_grad64(xs[i], ys[i], w0, b0)
        norm = np.sqrt(gw @ gw + gb**2)
        pw, pb = _ls_grad64(xs[i], ys[i], w0 + rho * gw / norm, b0 + rho * gb / norm)
        expected_w, expected_b = expected_w + pw / K_MICRO, expected_b + pb / K_MICRO
        if i < K_MICRO - 1:
            assert all(np.all(np.asarray(v) == 0) for v in jax.tree.leaves(u))
    np.testing.assert_allclose(np.asarray(u["w"]), -lr * expected_w, rtol=2e-6, atol=1e-7)
    np.testing.assert_allclose(float(u["b"]), -lr * expected_b, rtol=2e-6, atol=1e-7)


# one per state layout (LookSAM stores g_v); the norms' arithmetic does not meet MultiSteps
@pytest.mark.parametrize(
    "entry", helpers.one_per(lambda e: e.kwargs.get("reuse_every", 1) > 1, SAM_ENTRIES)
)
def test_registry_sam_entries_before_multisteps(entry):
    """The composition the conformance "multisteps" check cannot use for SAM: SAM first, the
    accumulation after it. Zero updates while accumulating, finite, shapes and dtypes kept."""
    tx = optareg.chain(entry.make(), optax.MultiSteps(optax.sgd(0.1), every_k_schedule=2))
    params = helpers.make_params()
    state = tx.init(params)
    update = jax.jit(lambda g, s, p: tx.update(g, s, p, grad_fn=helpers.grad_fn))
    for i in range(4):
        u, state = update(helpers.grad_fn(params), state, params)
        chex.assert_tree_all_finite(u)
        chex.assert_trees_all_equal_shapes_and_dtypes(u, params)
        nonzero = any(np.any(np.asarray(v) != 0) for v in jax.tree.leaves(u))
        assert nonzero == (i % 2 == 1)
        params = optax.apply_updates(params, u)
    assert int(state[1].gradient_step) == 2


def _nested_multisteps():
    return optax.MultiSteps(optax.chain(optareg.sam_perturb(0.1), optax.sgd(0.1)), K_MICRO)


@pytest.mark.parametrize("jit", [True, False], ids=["jit", "eager"])
def test_sam_inside_multisteps_is_an_error_naming_the_fix(jit):
    tx = _nested_multisteps()
    params = to_tree(THETA64, "float32")
    update = jax.jit(tx.update, static_argnames="grad_fn") if jit else tx.update
    with pytest.raises(ValueError, match=r"MultiSteps.*optax\.chain\(optareg\.sam_perturb"):
        update(quad_grad_fn(params), tx.init(params), params, grad_fn=quad_grad_fn)


@pytest.mark.parametrize("jit", [True, False], ids=["jit", "eager"])
def test_sam_inside_optax_masked_is_an_error_pointing_to_mask_arg(jit):
    tx = optax.masked(optareg.sam_perturb(0.1), {"a": True, "b": False})
    params = to_tree(THETA64, "float32")
    update = jax.jit(tx.update, static_argnames="grad_fn") if jit else tx.update
    with pytest.raises(ValueError, match="optax.masked.*`mask=`"):
        update(quad_grad_fn(params), tx.init(params), params, grad_fn=quad_grad_fn)


def test_nesting_check_silent_in_chain_and_inject_hyperparams():
    """Not in optax.chain / optareg.chain (every other test here), nnx.Optimizer (the NNX tests),
    chain(sam, MultiSteps(opt)) (above), nor inject_hyperparams inside a chain (here)."""
    params = to_tree(THETA64, "float32")
    tx = optax.chain(optax.inject_hyperparams(optareg.sam_perturb)(rho=0.1), optax.adam(0.1))
    u, _ = jax.jit(tx.update, static_argnames="grad_fn")(
        quad_grad_fn(params), tx.init(params), params, grad_fn=quad_grad_fn
    )
    chex.assert_tree_all_finite(u)


# ---------------------------------------------------------------------------------------------
# grad_fn returning the wrong thing
# ---------------------------------------------------------------------------------------------


def test_grad_fn_returning_loss_and_grads_is_a_clear_error():
    params = to_tree(THETA64, "float32")

    def loss(p):
        return 0.5 * jnp.sum(to_vec(p) ** 2)

    tx = optareg.chain(optareg.sam_perturb(0.1), optax.sgd(0.1))
    with pytest.raises(ValueError, match=r"grad_fn.*\n?.*value_and_grad"):
        tx.update(jax.grad(loss)(params), tx.init(params), params, grad_fn=jax.value_and_grad(loss))


def test_grad_fn_returning_grads_and_aux_is_a_clear_error():
    """``jax.grad(..., has_aux=True)`` (Haiku state, Flax ``mutable=``) returns (grads, aux)."""
    params = to_tree(THETA64, "float32")

    def loss(p):
        return 0.5 * jnp.sum(to_vec(p) ** 2), {"batch_stats": jnp.zeros(3)}

    grad_fn = jax.grad(loss, has_aux=True)
    for tx in (
        optareg.chain(optareg.sam_perturb(0.1), optax.sgd(0.1)),
        optareg.chain(optareg.sharpness_monitor(num_iters=2), optax.sgd(0.1)),
    ):
        with pytest.raises(ValueError, match=r"\(grads, aux\).*has_aux=True\)\(p, \.\.\.\)\[0\]"):
            tx.update(grad_fn(params)[0], tx.init(params), params, grad_fn=grad_fn)


def test_missing_grad_fn_names_flax_train_state():
    """``TrainState.apply_gradients(grad_fn=...)`` passes it to ``.replace``, so the chain sees
    no grad_fn: the message says so."""
    params = to_tree(THETA64, "float32")
    tx = optareg.chain(optareg.sam_perturb(0.1), optax.sgd(0.1))
    with pytest.raises(ValueError, match=r"grad_fn. is missing.*TrainState.apply_gradients"):
        tx.update(params, tx.init(params), params)


def test_grad_fn_returning_wrong_structure_is_a_clear_error():
    params = to_tree(THETA64, "float32")
    tx = optareg.sam_perturb(0.1)
    with pytest.raises(ValueError, match="grad_fn"):
        tx.update(
            quad_grad_fn(params),
            tx.init(params),
            params,
            grad_fn=lambda p: {"a": quad_grad_fn(p)["a"]},
        )


# ---------------------------------------------------------------------------------------------
# a mask that is a callable pytree: an Equinox model of bools
# ---------------------------------------------------------------------------------------------


def test_equinox_module_mask_perturbs_the_weight_matrices_only():
    model = eqx.filter_jit(lambda k: eqx.nn.MLP(3, 2, width_size=4, depth=2, key=k))(
        jax.random.PRNGKey(0)
    )  # built under jit: one compilation instead of one per initializer op
    params, static = eqx.partition(model, eqx.is_array)
    mask = jax.tree.map(lambda x: x.ndim > 1, eqx.filter(model, eqx.is_array))
    assert callable(mask)  # an eqx.Module: a tree, not a mask function
    rng = np.random.default_rng(4)
    x = jnp.asarray(rng.normal(size=(8, 3)), jnp.float32)
    y = jnp.asarray(rng.normal(size=(8, 2)), jnp.float32)

    def loss(p):
        return jnp.mean((jax.vmap(eqx.combine(p, static))(x) - y) ** 2)

    grad = jax.jit(jax.grad(loss))
    rho = 0.1
    tx = optareg.sam_perturb(rho, mask=mask)
    g = grad(params)
    out, _ = jax.jit(tx.update, static_argnames="grad_fn")(g, tx.init(params), params, grad_fn=grad)
    # θ + ε in float64: only the weight matrices move, by ρ·g_W/‖g_W‖ (norm over them only)
    flags = jax.tree.leaves(mask)
    assert sum(flags) == 3 and len(flags) == 6  # three weight matrices, three biases
    p64 = [np.asarray(v, np.float64) for v in jax.tree.leaves(params)]
    g64 = [np.asarray(v, np.float64) for v in jax.tree.leaves(g)]

    def grad_at(sel):
        norm = np.sqrt(sum(np.sum(v**2) for v, f in zip(g64, sel, strict=True) if f))
        shifted = [
            q + (rho * v / norm if f else 0.0) for q, v, f in zip(p64, g64, sel, strict=True)
        ]
        return grad(
            jax.tree.unflatten(jax.tree.structure(params), [jnp.float32(v) for v in shifted])
        )

    chex.assert_trees_all_close(out, grad_at(flags), rtol=1e-5, atol=1e-7)
    unmasked = grad_at([True] * len(flags))  # the perturbation without the mask differs
    diffs = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), out, unmasked)
    assert max(jax.tree.leaves(diffs)) > 1e-5


# ---------------------------------------------------------------------------------------------
# metrics_every
# ---------------------------------------------------------------------------------------------

K_METRICS = 3


def _run_metrics(every, kwargs, jit=True):
    tx = optareg.sam_perturb(0.3, metrics_every=every, **kwargs)
    params = to_tree(THETA64, "float32")
    state = tx.init(params)
    update = jax.jit(tx.update, static_argnames="grad_fn") if jit else tx.update
    ups, mets = [], []
    for _ in range(3 * K_METRICS):
        u, state = update(quad_grad_fn(params), state, params, grad_fn=quad_grad_fn)
        ups.append(u)
        mets.append(optareg.metrics(state))
        params = optax.apply_updates(params, jax.tree.map(lambda v: -0.05 * v, u))
    return ups, mets


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"reuse_every": 2, "gsam_alpha": 0.3, "adaptive": True}],
    ids=["l2", "reuse2-gsam-adaptive"],
)
def test_metrics_every_keeps_updates_bit_identical(kwargs):
    u1, m1 = _run_metrics(1, kwargs)
    uk, mk = _run_metrics(K_METRICS, kwargs)
    assert_bit_equal(uk, u1)
    period = kwargs.get("reuse_every", 1)
    for t in range(3 * K_METRICS):
        if t % K_METRICS:  # not a metrics step: the previous values
            assert_bit_equal(mk[t], mk[t - 1])
            continue
        want = dict(m1[t])
        if t % period:  # a LookSAM reuse step computes no g_p: the last value computed
            want["sam_perturb/perturbed_grad_norm"] = mk[t - 1]["sam_perturb/perturbed_grad_norm"]
        assert_bit_equal(mk[t], want)
    assert float(mk[0]["sam_perturb/cos"]) != 0.0


def test_metrics_every_traced_under_inject_hyperparams():
    params = to_tree(THETA64, "float32")
    plain = optareg.sam_perturb(0.3, metrics_every=2)
    injected = optax.inject_hyperparams(optareg.sam_perturb)(0.3, metrics_every=2)
    s_p, s_i = plain.init(params), injected.init(params)
    up_p = jax.jit(plain.update, static_argnames="grad_fn")
    up_i = jax.jit(injected.update, static_argnames="grad_fn")
    for _ in range(4):
        g = quad_grad_fn(params)
        u_p, s_p = up_p(g, s_p, params, grad_fn=quad_grad_fn)
        u_i, s_i = up_i(g, s_i, params, grad_fn=quad_grad_fn)
        assert_bit_equal(u_i, u_p)
        assert_bit_equal(optareg.metrics(s_i), optareg.metrics(s_p))
        params = optax.apply_updates(params, jax.tree.map(lambda v: -0.05 * v, u_p))


@pytest.mark.parametrize("value, exc", [(0, ValueError), (-2, ValueError), (1.5, TypeError)])
def test_metrics_every_validated_at_construction(value, exc):
    with pytest.raises(exc, match="metrics_every"):
        optareg.sam_perturb(metrics_every=value)
