"""The compositions people write in real training code (issue: "Correct in the training code
people actually write"): Equinox masks, optax's drop-in at weight_decay=0, chain order, framework
layouts on real Flax linen / NNX / Haiku / Equinox models, integer parameters."""

from __future__ import annotations

import equinox as eqx
import flax.linen as nn
import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import optareg

# ---------------------------------------------------------------------------------------------
# 1. masks that are callable pytrees (an Equinox module of bools)
# ---------------------------------------------------------------------------------------------


def _eqx_params():
    model = eqx.nn.MLP(4, 3, 8, 2, key=jax.random.PRNGKey(0))
    return eqx.filter(model, eqx.is_array)


_MASKED_FACTORIES = {
    "add_decayed_weights": lambda m: optareg.add_decayed_weights(0.1, mask=m),
    "decoupled_weight_decay": lambda m: optareg.decoupled_weight_decay(0.1, mask=m),
    "prox_l1": lambda m: optareg.prox_l1(0.5, 0.1, mask=m),
    "prox_elastic_net": lambda m: optareg.prox_elastic_net(0.5, 0.1, 0.1, mask=m),
    "prox_group_lasso": lambda m: optareg.prox_group_lasso(0.5, 0.1, mask=m),
    "prox_nuclear": lambda m: optareg.prox_nuclear(0.5, 0.1, mask=m),
    "prox_adam": lambda m: optareg.prox_adam(0.1, 0.5, mask=m),
    "sam_perturb": lambda m: optareg.sam_perturb(0.1, mask=m),
    "spectral_clip": lambda m: optareg.spectral_clip(0.5, mask=m),
    "optax.masked": lambda m: optax.masked(optax.add_decayed_weights(0.1), m),
}


@pytest.mark.parametrize("name", sorted(_MASKED_FACTORIES))
@pytest.mark.parametrize("how", ["ndim", "decay_mask"])
def test_equinox_module_mask_is_a_tree(name, how):
    """A mask that is an Equinox module of bools is a tree (never called); masked-out leaves
    (the biases) pass through bit for bit and the masked-in ones change."""
    params = _eqx_params()
    if how == "ndim":
        mask = jax.tree.map(lambda x: x.ndim > 1, params)
    else:
        mask = optareg.masks.decay_mask(params)
    assert isinstance(mask, eqx.nn.MLP)
    tx = _MASKED_FACTORIES[name](mask)
    grads = jax.tree.map(lambda p: 0.3 * jnp.ones_like(p), params)
    state = tx.init(params)
    extra = {"grad_fn": lambda p: grads} if name == "sam_perturb" else {}
    updates, _ = jax.jit(lambda g, s, p: tx.update(g, s, p, **extra))(grads, state, params)
    expected = grads
    if name == "prox_adam":  # a complete optimizer: masked-out leaves get the plain Adam step
        plain = optareg.prox_adam(0.1, 0.0)
        expected, _ = plain.update(grads, plain.init(params), params)
    for layer_u, layer_g in zip(updates.layers, expected.layers, strict=True):
        np.testing.assert_array_equal(layer_u.bias, layer_g.bias)  # masked out
    changed = [
        not np.array_equal(lu.weight, lg.weight)
        for lu, lg in zip(updates.layers, grads.layers, strict=True)
    ]
    if name != "sam_perturb":  # SAM's grad_fn returns the same grads: nothing to change
        assert any(changed)


# ---------------------------------------------------------------------------------------------
# 3. add_decayed_weights(0.0) is optax's drop-in bit for bit
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mask", [None, {"w": True, "b": False}])
def test_add_decayed_weights_zero_is_bit_identical_to_optax(mask):
    params = {"w": jnp.array([np.inf, -np.inf, 1.0, 0.0]), "b": jnp.array([np.inf, 2.0])}
    grads = {"w": jnp.array([-0.0, 1.0, -0.0, 0.0]), "b": jnp.array([-0.0, 1.0])}
    ours, theirs = optareg.add_decayed_weights(0.0, mask), optax.add_decayed_weights(0.0, mask)
    u_ours, _ = jax.jit(ours.update)(grads, ours.init(params), params)
    u_theirs, _ = jax.jit(theirs.update)(grads, theirs.init(params), params)
    for a, b in zip(jax.tree.leaves(u_ours), jax.tree.leaves(u_theirs), strict=True):
        np.testing.assert_array_equal(np.signbit(a), np.signbit(b))
        np.testing.assert_array_equal(a, b)
        assert np.all(np.isfinite(a))  # g + 0·inf would be NaN
    assert np.signbit(u_ours["w"][0])  # -0. stays -0.


def test_add_decayed_weights_nonzero_still_decays():
    tx = optareg.add_decayed_weights(0.5)
    params = {"w": jnp.array([2.0])}
    u, _ = tx.update({"w": jnp.array([1.0])}, tx.init(params), params)
    np.testing.assert_allclose(u["w"], [2.0])


# ---------------------------------------------------------------------------------------------
# 6. chain order
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "build, culprit, where",
    [
        (
            lambda: optareg.chain(optareg.prox_l1(0.1, 0.1), optax.adam(1e-3)),
            "prox_l1",
            "after the optimizer",
        ),
        (
            lambda: optareg.chain(optareg.spectral_clip(1.0), optax.sgd(0.1)),
            "spectral_clip",
            "after the optimizer",
        ),
        (
            lambda: optareg.chain(optax.sgd(0.1), optareg.sam_perturb(0.05)),
            "sam_perturb",
            "first in the chain",
        ),
        (
            lambda: optareg.chain(
                optareg.chain(optax.sgd(0.1), optareg.prox_l1(0.1, 0.1)), optax.adam(1e-3)
            ),
            "prox_l1",
            "after the optimizer",
        ),
        (
            lambda: optareg.chain(
                optax.sgd(0.1),
                optareg.decoupled_weight_decay(0.1),
                optareg.add_decayed_weights(0.1),
            ),
            "add_decayed_weights",
            "before",
        ),
        # wrapped, the prox is still a prox
        (
            lambda: optareg.chain(
                optax.inject_hyperparams(optareg.prox_l1, static_args=("mask",))(0.1, 0.1),
                optax.sgd(0.1),
            ),
            "prox_l1",
            "after the optimizer",
        ),
        (
            lambda: optareg.chain(
                optax.masked(optareg.prox_l1(0.1, 0.1), {"w": True}), optax.sgd(0.1)
            ),
            "prox_l1",
            "after the optimizer",
        ),
        (
            lambda: optareg.chain(
                optax.chain(optax.sgd(0.1), optareg.prox_l1(0.1, 0.1)), optax.clip(0.01)
            ),
            "prox_l1",
            "after the optimizer",
        ),
        (
            lambda: optareg.chain(
                optax.named_chain(("prox", optareg.prox_l1(0.1, 0.1)), ("opt", optax.sgd(0.1)))
            ),
            "prox_l1",
            "after the optimizer",
        ),
        # after a wrapper that skips calls, a post-step transform would still act on them
        (
            lambda: optareg.chain(
                optareg.sam_perturb(0.05),
                optax.MultiSteps(optax.sgd(0.1), 4).gradient_transformation(),
                optareg.prox_l1(0.1, 0.1),
            ),
            "prox_l1",
            r"inside the wrapper.*optax\.MultiSteps\(optareg\.chain\(opt, prox_l1\)",
        ),
        (
            lambda: optareg.chain(
                optax.apply_if_finite(optax.adam(1e-3), 3), optareg.decoupled_weight_decay(0.1)
            ),
            "decoupled_weight_decay",
            "inside the wrapper",
        ),
        (
            lambda: optareg.chain(optareg.prox_adam(1e-3, 1e-4), optax.sgd(0.1)),
            "prox_adam",
            "after every other optimizer transform",
        ),
    ],
)
def test_chain_names_the_misplaced_transform(build, culprit, where):
    with pytest.raises(ValueError, match=rf"`{culprit}`.*must go {where}"):
        build()


def test_chain_accepts_the_documented_orders_and_equals_optax_chain():
    params = {"w": jnp.array([[1.0, -2.0], [0.5, 3.0]]), "b": jnp.array([0.1, -0.1])}
    grads = jax.tree.map(lambda p: 0.1 * p, params)

    def parts():
        return (
            optareg.track(name="raw"),
            optareg.sam_perturb(0.05),
            optax.scale_by_adam(),
            optareg.add_decayed_weights(1e-2),
            optax.scale_by_learning_rate(1e-2),
            optareg.prox_l1(1e-3, 1e-2),
            optareg.spectral_clip(2.0),
            optareg.track(name="step"),
        )

    ours, theirs = optareg.chain(*parts()), optax.chain(*parts())
    extra = {"grad_fn": lambda p: jax.tree.map(lambda x: 0.1 * x, p)}
    u_ours, _ = ours.update(grads, ours.init(params), params, **extra)
    u_theirs, _ = theirs.update(grads, theirs.init(params), params, **extra)
    for a, b in zip(jax.tree.leaves(u_ours), jax.tree.leaves(u_theirs), strict=True):
        np.testing.assert_array_equal(a, b)


def _run(tx, params, grads_seq):
    state = tx.init(params)
    for g in grads_seq:
        u, state = tx.update(g, state, params)
        params = optax.apply_updates(params, u)
    return params


def test_the_orders_the_errors_point_to_are_accepted_and_right():
    """What the MultiSteps message asks for is accepted, and it is the right computation: two
    real steps of SGD on the mean of 4 micro-batch gradients, each followed by one
    soft-threshold by lr·λ (numpy oracle)."""
    lr, lam, k = 0.1, 0.5, 4
    params = {"w": jnp.array([1.0, -0.3, 0.04, 2.0])}
    grads = [{"w": jnp.array([0.1 * i, -0.2, 0.3, 0.0])} for i in range(2 * k)]
    inner = optareg.chain(optax.sgd(lr), optareg.prox_l1(lam, lr))
    tx = optareg.chain(optareg.track(), optax.MultiSteps(inner, k).gradient_transformation())
    got = _run(tx, params, grads)["w"]
    w = np.array([1.0, -0.3, 0.04, 2.0])
    for step in range(2):
        g = np.mean([np.asarray(grads[step * k + i]["w"]) for i in range(k)], axis=0)
        x = w - lr * g
        w = np.sign(x) * np.maximum(np.abs(x) - lr * lam, 0.0)
    np.testing.assert_allclose(got, w, rtol=1e-6, atol=1e-7)
    assert float(got[2]) == 0.0  # an exact zero, not a small number
    optareg.chain(optax.apply_if_finite(inner, 3))  # the whole chain wrapped: accepted
    optareg.chain(optareg.prox_adam(1e-3, 1e-4), optareg.max_norm(1.0), optareg.track())


def test_plain_optax_chain_keeps_working_in_any_order():
    optax.chain(optareg.prox_l1(0.1, 0.1), optax.adam(1e-3))  # no check: optax's own chain


def test_prox_adam_is_an_optimizer_for_the_chain():
    optareg.chain(optareg.prox_adam(1e-3, 1e-4), optareg.spectral_clip(1.0))
    with pytest.raises(ValueError, match="`prox_l1`"):
        optareg.chain(optareg.prox_l1(0.1, 0.1), optareg.prox_adam(1e-3, 1e-4))


# ---------------------------------------------------------------------------------------------
# 7. layouts: a zeroed group is a whole output unit in every framework
# ---------------------------------------------------------------------------------------------

_IN, _OUT, _DEAD = 6, 5, 2


class _LinenMLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(3)(nn.relu(nn.Dense(_OUT)(x)))


def _linen():
    params = _LinenMLP().init(jax.random.PRNGKey(0), jnp.ones((1, _IN)))["params"]
    return params, lambda t: t["Dense_0"]["kernel"], "flax"


def _nnx():
    model = nnx.Sequential(
        nnx.Linear(_IN, _OUT, rngs=nnx.Rngs(0)), nnx.relu, nnx.Linear(_OUT, 3, rngs=nnx.Rngs(1))
    )
    params = nnx.state(model, nnx.Param)
    return params, lambda t: t["layers"][0]["kernel"].get_value(), "flax"


def _haiku():
    def f(x):
        return hk.Linear(3)(jax.nn.relu(hk.Linear(_OUT)(x)))

    params = hk.without_apply_rng(hk.transform(f)).init(jax.random.PRNGKey(0), jnp.ones((1, _IN)))
    return params, lambda t: t["linear"]["w"], "flax"


def _equinox():
    model = eqx.nn.MLP(_IN, 3, _OUT, 1, key=jax.random.PRNGKey(0))
    return eqx.filter(model, eqx.is_array), lambda t: t.layers[0].weight, "torch"


def _equinox_conv():
    conv = eqx.nn.Conv2d(3, _OUT, 3, key=jax.random.PRNGKey(0))  # weight (O, I, kh, kw)
    return eqx.filter(conv, eqx.is_array), lambda t: t.weight, "torch"


def _weaken_unit(params, get, layout):
    """Scale the incoming weights of output unit ``_DEAD`` of the first layer by 1e-3."""
    w = get(params)
    unit_axis = 0 if layout == "torch" else w.ndim - 1
    scale = jnp.ones(w.shape[unit_axis]).at[_DEAD].set(1e-3)
    shape = [1] * w.ndim
    shape[unit_axis] = -1
    target = w * scale.reshape(shape)
    leaves, treedef = jax.tree.flatten(params)
    idx = next(
        i
        for i, leaf in enumerate(leaves)
        if leaf is w or (leaf.shape == w.shape and np.array_equal(leaf, w))
    )
    leaves[idx] = target
    return jax.tree.unflatten(treedef, leaves), unit_axis


@pytest.mark.parametrize(
    "framework",
    [_linen, _nnx, _haiku, _equinox, _equinox_conv],
    ids=["linen", "nnx", "haiku", "equinox", "equinox_conv"],
)
def test_group_lasso_auto_layout_zeroes_whole_output_units(framework):
    params, get, layout = framework()
    params, unit_axis = _weaken_unit(params, get, layout)
    w = np.asarray(get(params))
    others = tuple(i for i in range(w.ndim) if i != unit_axis)
    norms = np.sqrt((w**2).sum(axis=others))
    size = w.size // w.shape[unit_axis]
    tau = float(np.sort(norms)[1]) / np.sqrt(size) * 0.5  # kills the weak unit only
    tx = optareg.chain(optax.sgd(1.0), optareg.prox_group_lasso(tau, 1.0))
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zeros, tx.init(params), params)
    new = np.asarray(get(optax.apply_updates(params, updates)))
    dead = np.take(new, _DEAD, axis=unit_axis)
    np.testing.assert_array_equal(dead, 0.0)
    alive = np.delete(new, _DEAD, axis=unit_axis)
    assert np.all(np.abs(alive).reshape(-1) > 0)
    # the same numbers as the explicit axis
    explicit = optareg.chain(
        optax.sgd(1.0),
        optareg.prox_group_lasso(tau, 1.0, axis=unit_axis - w.ndim if layout == "flax" else 0),
    )
    u2, _ = explicit.update(zeros, explicit.init(params), params)
    np.testing.assert_array_equal(np.asarray(get(optax.apply_updates(params, u2))), new)


def test_layout_flax_on_torch_leaf_groups_by_the_other_axis():
    """An explicit layout wins over the name; an explicit axis wins over the layout."""
    w = jnp.array([[3.0, 4.0], [0.01, 0.01]])  # (out, in): unit 1 is weak
    params = {"weight": w}
    zeros = {"weight": jnp.zeros_like(w)}
    for layout, axis, dead in [
        ("auto", None, (1, slice(None))),
        ("torch", None, (1, slice(None))),
        ("flax", None, None),
        ("flax", 0, (1, slice(None))),
    ]:
        tx = optareg.chain(
            optax.sgd(1.0), optareg.prox_group_lasso(0.05, 1.0, layout=layout, axis=axis)
        )
        u, _ = tx.update(zeros, tx.init(params), params)
        new = np.asarray(optax.apply_updates(params, u)["weight"])
        if dead is None:
            assert np.all(new != 0)  # columns (3, .01), (4, .01) are strong groups
        else:
            np.testing.assert_array_equal(new[dead], 0.0)


def test_layout_is_validated():
    with pytest.raises(ValueError, match="`layout`"):
        optareg.prox_group_lasso(0.1, 0.1, layout="keras")


# ---------------------------------------------------------------------------------------------
# 8. integer parameters given to a post-step transform
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "tx",
    [
        optareg.prox_l1(0.1, 0.1),
        optareg.decoupled_weight_decay(0.1),
        optareg.prox_group_lasso(0.1, 0.1),
    ],
    ids=["prox_l1", "decoupled_weight_decay", "prox_group_lasso"],
)
def test_integer_params_are_a_type_error_at_init_naming_the_leaf(tx):
    params = {"dense": {"kernel": jnp.ones((2, 2))}, "step": jnp.array(3, jnp.int32)}
    with pytest.raises(TypeError, match=r"'step'.*int32"):
        tx.init(params)
    # masked out, the integer leaf is fine
    masked = optareg.prox_l1(0.1, 0.1, mask={"dense": True, "step": False})
    masked.init(params)
