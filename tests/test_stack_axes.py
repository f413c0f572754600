"""``stack_axes``: scanned / vmapped layer stacks, one layer at a time, against numpy float64.

A linen ``nn.scan`` transformer stack, an NNX ``nnx.vmap`` MLP stack and an Equinox
``eqx.filter_vmap`` MLP stack each train a few SGD steps with ``max_norm``, ``unit_norm``,
``prox_group_lasso``, ``prox_nuclear``, ``spectral_clip`` and a ``decay_mask`` mask; every unit,
group and matrix is checked against a per-layer oracle (a Python loop over the layers in numpy
float64), which knows nothing of optareg's layout code: it is told, per framework, which
leaves are weight matrices and which axis of a layer indexes its units.
"""

from __future__ import annotations

import functools

import equinox as eqx
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import optareg
from optareg import penalties
from optareg.masks import decay_mask, path_names

L, D, LR = 3, 8, 0.1  # layers, width, learning rate
RTOL = 2e-5

# --------------------------------------------------------------------------------------------
# per-layer numpy float64 oracles (W: one layer; `unit`: the axis of W indexing its units)
# --------------------------------------------------------------------------------------------


def _units(w, unit):
    """W as (units, rest): one row per unit."""
    return np.moveaxis(w, unit, 0).reshape(w.shape[unit], -1)


def _from_units(rows, w, unit):
    moved = np.moveaxis(w, unit, 0)
    return np.moveaxis(rows.reshape(moved.shape), 0, unit)


def np_max_norm(w, unit, c):
    r = _units(w, unit)
    n = np.linalg.norm(r, axis=1, keepdims=True)
    return _from_units(np.where(n > c, r * c / np.where(n > 0, n, 1), r), w, unit)


def np_unit_norm(w, unit):
    r = _units(w, unit)
    n = np.linalg.norm(r, axis=1, keepdims=True)
    return _from_units(np.where(n > 0, r / np.where(n > 0, n, 1), r), w, unit)


def np_group_lasso(w, unit, tau):
    r = _units(w, unit)
    n = np.linalg.norm(r, axis=1, keepdims=True)
    shrink = np.maximum(1 - tau * np.sqrt(r.shape[1]) / np.where(n > 0, n, 1), 0)
    return _from_units(r * shrink, w, unit)


def np_svt(w, unit, tau):
    """Singular value thresholding of the trailing matrices of one layer (leading axes batch)."""
    del unit
    mats = w.reshape(-1, *w.shape[-2:])
    out = []
    for m in mats:
        u, s, vt = np.linalg.svd(m, full_matrices=False)
        out.append((u * np.maximum(s - tau, 0)) @ vt)
    return np.stack(out).reshape(w.shape)


def np_spectral_clip(w, unit, c):
    """Projection onto {‖W‖₂ ≤ c} of one layer viewed as (rest, units)."""
    m = _units(w, unit).T
    u, s, vt = np.linalg.svd(m, full_matrices=False)
    return _from_units(((u * np.minimum(s, c)) @ vt).T, w, unit)


def np_sigma_max(w, unit):
    return np.linalg.svd(_units(w, unit), compute_uv=False)[0]


def per_layer(fn, x, stack, unit):
    """``fn`` on every layer of a stacked leaf ``x`` (``stack`` leading axes), one at a time."""
    if stack == 0:
        return fn(x, unit)
    return np.stack([per_layer(fn, layer, stack - 1, unit) for layer in x])


# --------------------------------------------------------------------------------------------
# three stacked models: (params, loss, which leaves are matrices and their unit axis)
# --------------------------------------------------------------------------------------------


class LinenBlock(nn.Module):
    @nn.compact
    def __call__(self, x, _):
        h = nn.LayerNorm()(x)
        x = x + nn.SelfAttention(num_heads=2, qkv_features=D)(h)
        h = nn.LayerNorm()(x)
        x = x + nn.Dense(D)(nn.gelu(nn.Dense(2 * D)(h)))
        return x, None


class LinenStack(nn.Module):
    @nn.compact
    def __call__(self, x):
        scan = nn.scan(
            LinenBlock, variable_axes={"params": 0}, split_rngs={"params": True}, length=L
        )
        return nn.Dense(2)(scan(name="layers")(x, None)[0])


class NNXBlock(nnx.Module):
    def __init__(self, rngs):
        self.ln = nnx.LayerNorm(D, rngs=rngs)
        self.fc1 = nnx.Linear(D, 2 * D, rngs=rngs)
        self.fc2 = nnx.Linear(2 * D, D, rngs=rngs)

    def __call__(self, x):
        return x + self.fc2(nnx.relu(self.fc1(self.ln(x))))


class EqxStack(eqx.Module):
    layers: eqx.nn.MLP

    def __init__(self, key):
        make = functools.partial(eqx.nn.MLP, D, D, 2 * D, 1)
        self.layers = eqx.filter_vmap(lambda k: make(key=k))(jax.random.split(key, L))

    def __call__(self, x):
        def body(h, layer):
            return h + layer(h), None

        dynamic, static = eqx.partition(self.layers, eqx.is_array)
        return jax.lax.scan(lambda h, d: body(h, eqx.combine(d, static)), x, dynamic)[0]


def _xy(key, shape):
    k1, k2 = jax.random.split(key)
    return jax.random.normal(k1, shape), jax.random.normal(k2, shape[:-1] + (1,))


def linen_case():
    x, y = _xy(jax.random.key(1), (2, 4, D))
    model = LinenStack()
    params = model.init(jax.random.key(0), x)

    def loss(p):
        return jnp.mean((model.apply(p, x)[..., :1] - y) ** 2)

    def unit(path, ndim):  # linen kernels: units on the last axis; the rest is no matrix
        return ndim - 1 if path.endswith("kernel") else None

    def layers(path):  # the oracle's own count of layer axes
        return int(path.startswith("params/layers/"))

    stack = {"params": {"layers": 1}}  # a prefix: the scanned subtree has one layer axis
    return params, loss, unit, layers, stack


def nnx_case():
    x, y = _xy(jax.random.key(2), (4, D))

    @nnx.split_rngs(splits=L)
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def make(rngs):
        return NNXBlock(rngs)

    graphdef, params, rest = nnx.split(make(nnx.Rngs(0)), nnx.Param, ...)

    def loss(p):
        blocks = nnx.merge(graphdef, p, rest)

        @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
        def run(h, block):
            return block(h)

        return jnp.mean((run(x, blocks)[:, :1] - y) ** 2)

    def unit(path, ndim):
        return ndim - 1 if path.endswith("kernel") else None

    return params, loss, unit, lambda path: 1, 1


def equinox_case():
    x, y = _xy(jax.random.key(3), (D,))
    params, static = eqx.partition(EqxStack(jax.random.key(0)), eqx.is_array)

    def loss(p):
        return jnp.mean((eqx.combine(p, static)(x)[:1] - y) ** 2)

    def unit(path, ndim):  # Equinox Linear weight (out, in): units on the first axis
        return 0 if path.endswith("weight") else None

    def stack(path, leaf):  # the callable form
        del leaf
        return 1 if path.startswith("layers/") else None

    return params, loss, unit, lambda path: 1, stack


CASES = {"linen": linen_case, "nnx": nnx_case, "equinox": equinox_case}


@functools.cache
def case(name):
    params, loss, unit, layers, stack = CASES[name]()
    return params, jax.jit(jax.grad(loss)), Oracle(unit, layers), stack


class Oracle:
    """The test's own view of a model: the layer axes of a leaf, and the unit axis of one
    layer of it (``None``: not a weight matrix)."""

    def __init__(self, unit, layers):
        self._unit, self.layers = unit, layers

    def __call__(self, path, ndim):
        return self._unit(path, ndim - self.layers(path))


def _leaves(tree):
    return [np.asarray(x, np.float64) for x in jax.tree.leaves(tree)]


def _layers_of(x, n):
    return [x] if n == 0 else [w for layer in x for w in _layers_of(layer, n - 1)]


def _thresholds(params, unit):
    """Per-layer statistics of the initial matrices, to set every strength where the
    constraint is active on some units / layers and not on others."""
    norms, sigmas = [], []
    for path, x in zip(jax.tree.leaves(path_names(params)), _leaves(params), strict=True):
        ax = unit(path, x.ndim)
        if ax is None:
            continue
        for w in _layers_of(x, unit.layers(path)):
            norms.extend(np.linalg.norm(_units(w, ax), axis=1))
            sigmas.append(np_sigma_max(w, ax))
    return float(np.median(norms)), float(np.median(sigmas))


# --------------------------------------------------------------------------------------------
# training: every step against the oracle
# --------------------------------------------------------------------------------------------


def _transform(kind, params, unit, stack):
    c, sigma = _thresholds(params, unit)
    if kind == "max_norm":
        return optareg.max_norm(c, stack_axes=stack), functools.partial(np_max_norm, c=c)
    if kind == "unit_norm":
        return optareg.unit_norm(stack_axes=stack), np_unit_norm
    if kind == "prox_group_lasso":
        lam = 0.05 * c
        tx = optareg.prox_group_lasso(lam, LR, stack_axes=stack)
        return tx, lambda w, ax: np_group_lasso(w, ax, LR * lam)
    if kind == "prox_nuclear":
        tx = optareg.prox_nuclear(0.5 * sigma, LR, stack_axes=stack)
        return tx, lambda w, ax: np_svt(w, ax, LR * 0.5 * sigma)
    assert kind == "spectral_clip"
    tx = optareg.spectral_clip(sigma, stack_axes=stack)
    return tx, functools.partial(np_spectral_clip, c=sigma)


KINDS = ("max_norm", "unit_norm", "prox_group_lasso", "prox_nuclear", "spectral_clip")


@pytest.mark.parametrize("framework", list(CASES))
def test_stacked_models_train_layer_by_layer(framework):
    params, grad, unit, stack = case(framework)
    paths = jax.tree.leaves(path_names(params))
    leaves = zip(paths, _leaves(params), strict=True)
    stacked = sum(unit(p, x.ndim) is not None and unit.layers(p) == 1 for p, x in leaves)
    assert stacked >= 2
    for kind in KINDS:
        tx, oracle = _transform(kind, params, unit, stack)
        tx = optax.chain(optax.sgd(LR), tx)
        p, state, update = params, tx.init(params), jax.jit(tx.update)
        pooled_differs = False
        for _ in range(2):
            g = grad(p)
            updates, state = update(g, state, p)
            new = optax.apply_updates(p, updates)
            for path, before, dg, after in zip(
                paths, _leaves(p), _leaves(g), _leaves(new), strict=True
            ):
                x = before - LR * dg
                ax = unit(path, x.ndim)
                want = x if ax is None else per_layer(oracle, x, unit.layers(path), ax)
                if ax is not None and unit.layers(path):  # the layers pooled: other numbers
                    pooled = oracle(x, ax + 1)
                    pooled_differs |= not np.allclose(pooled, want, rtol=1e-3, atol=1e-4)
                scale = max(np.abs(x).max(), 1.0)
                np.testing.assert_allclose(
                    after, want, rtol=RTOL, atol=RTOL * scale, err_msg=f"{kind} {path}"
                )
            p = new
        # so the oracle check can fail (SVT batches leading axes: a stack of matrices was
        # already per layer; what stack_axes changes for it is the stacked bias, next test)
        assert pooled_differs or kind == "prox_nuclear", kind
        if kind == "spectral_clip":  # σ per layer in the state, before clipping
            sig = [s for s in jax.tree.leaves(state) if getattr(s, "shape", None) == (L,)]
            assert len(sig) == stacked


@pytest.mark.parametrize("framework", list(CASES))
def test_decay_mask_per_layer_rank(framework):
    params, _, unit, stack = case(framework)
    paths = jax.tree.leaves(path_names(params))
    want = {p for p, x in zip(paths, _leaves(params), strict=True) if unit(p, x.ndim) is not None}
    mask = decay_mask(params, stack_axes=stack)
    got = {p for p, f in zip(paths, jax.tree.leaves(mask), strict=True) if f}
    assert got == want
    # without names, the rank alone: a stacked bias (L, d) has per-layer rank 1
    ranks = decay_mask(params, exclude=(), stack_axes=stack)
    got = {p for p, f in zip(paths, jax.tree.leaves(ranks), strict=True) if f}
    ranks_ok = {
        p for p, x in zip(paths, _leaves(params), strict=True) if x.ndim - unit.layers(p) >= 2
    }
    assert got == ranks_ok
    # stacked= (regexes) is the alias of a callable stack_axes
    alias = decay_mask(params, exclude=(), stacked=r"^(params/)?layers/|^fc|^ln")
    assert jax.tree.leaves(alias) == jax.tree.leaves(ranks)
    # masked in, the decay runs on the kernels only: (1 − ηλ)θ
    tx = optax.chain(
        optareg.add_decayed_weights(0.5, mask=functools.partial(decay_mask, stack_axes=stack)),
        optax.sgd(LR),
    )
    zero = jax.tree.map(jnp.zeros_like, params)
    new = optax.apply_updates(params, tx.update(zero, tx.init(params), params)[0])
    for path, before, after in zip(paths, _leaves(params), _leaves(new), strict=True):
        np.testing.assert_allclose(after, before * (1 - LR * 0.5) if path in want else before)


def test_spectral_clip_mask_passes_stacked_bias():
    """``matrix_axes=1`` (the alias of ``stack_axes=1``) with ``mask=decay_mask``: the masked-out
    stacked biases ``(L, out)`` and scales pass through (they raised before)."""
    params, _, unit, _ = case("nnx")
    _, sigma = _thresholds(params, unit)
    paths = jax.tree.leaves(path_names(params))
    for kw in ({"matrix_axes": 1}, {"stack_axes": 1}):
        tx = optareg.spectral_clip(sigma, mask=decay_mask, **kw)
        zero = jax.tree.map(jnp.zeros_like, params)
        new = optax.apply_updates(params, tx.update(zero, tx.init(params), params)[0])
        for path, before, after in zip(paths, _leaves(params), _leaves(new), strict=True):
            ax = unit(path, before.ndim)
            clip = functools.partial(np_spectral_clip, c=sigma)
            want = before if ax is None else per_layer(clip, before, 1, ax)
            np.testing.assert_allclose(after, want, rtol=RTOL, atol=RTOL, err_msg=path)
        norms = optareg.spectral_norms(params, stack_axes=1)
        norms = jax.tree.leaves(norms, is_leaf=lambda v: v is None)
        for path, x, n in zip(paths, _leaves(params), norms, strict=True):
            ax = unit(path, x.ndim)
            if ax is None:
                assert n is None, path
            else:
                want = [np_sigma_max(w, ax) for w in x]
                np.testing.assert_allclose(n, want, rtol=RTOL, err_msg=path)


# --------------------------------------------------------------------------------------------
# the issue's examples, and the weight-matrix rule on an Equinox conv bias
# --------------------------------------------------------------------------------------------


def test_issue_stack_of_two_layers():
    w = jnp.stack([2 * jnp.eye(3), 0.5 * jnp.eye(3)])  # layer 0: unit norms 2, layer 1: 0.5
    params = {"kernel": w}
    zero = {"kernel": jnp.zeros_like(w)}
    for stack in (1, {"kernel": 1}, lambda path, leaf: 1):
        tx = optareg.max_norm(1.0, stack_axes=stack)
        new = optax.apply_updates(params, tx.update(zero, tx.init(params), params)[0])
        np.testing.assert_array_equal(new["kernel"][0], jnp.eye(3))
        np.testing.assert_array_equal(new["kernel"][1], w[1])  # inside the ball: untouched
    pooled = optareg.max_norm(1.0)
    new = optax.apply_updates(params, pooled.update(zero, pooled.init(params), params)[0])
    np.testing.assert_allclose(new["kernel"][1], 0.5 / np.sqrt(4.25) * np.eye(3), rtol=1e-6)
    # orthogonality: Σ_l ‖W_lᵀW_l − I‖² = 3·(4−1)² + 3·(0.25−1)² per layer, no cross-layer Gram
    want = 3 * 9 + 3 * 0.75**2
    for pen in (
        penalties.orthogonality(stack_axes=1),
        functools.partial(penalties.orthogonality, stack_axes=1),
    ):
        np.testing.assert_allclose(float(pen(params)), want, rtol=1e-6)


def test_equinox_conv_bias_passes_through():
    conv = eqx.nn.Conv2d(2, 3, 3, key=jax.random.key(0))
    conv = eqx.tree_at(lambda m: m.bias, conv, jnp.array([3.0, 4.0, 0.5]).reshape(3, 1, 1))
    params = eqx.filter(conv, eqx.is_array)
    zero = jax.tree.map(jnp.zeros_like, params)
    weight = np.asarray(params.weight, np.float64)  # OIHW: units on the first axis
    txs = {
        "max_norm": (optareg.max_norm(0.5), lambda w: np_max_norm(w, 0, 0.5)),
        "unit_norm": (optareg.unit_norm(), lambda w: np_unit_norm(w, 0)),
        "group": (optareg.prox_group_lasso(0.1, 1.0), lambda w: np_group_lasso(w, 0, 0.1)),
        "nuclear": (optareg.prox_nuclear(0.1, 1.0), lambda w: np_svt(w, 0, 0.1)),
        "spectral": (optareg.spectral_clip(0.5), lambda w: np_spectral_clip(w, 0, 0.5)),
    }
    for name, (tx, oracle) in txs.items():
        new = optax.apply_updates(params, tx.update(zero, tx.init(params), params)[0])
        np.testing.assert_array_equal(new.bias, params.bias, err_msg=name)
        np.testing.assert_allclose(new.weight, oracle(weight), rtol=1e-5, atol=1e-6, err_msg=name)
    # orthogonality: the bias contributes nothing (the weight alone, as a (O, I·H·W) matrix)
    rows = weight.reshape(3, -1)
    gram = rows @ rows.T
    want = np.sum((gram - np.eye(3)) ** 2)
    np.testing.assert_allclose(float(penalties.orthogonality(params)), want, rtol=1e-5)
    tx = optareg.add_penalty(penalties.orthogonality, 1.0)
    updates, _ = tx.update(zero, tx.init(params), params)
    np.testing.assert_array_equal(updates.bias, zero.bias)


# --------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------

_FACTORIES = {
    "max_norm": lambda **kw: optareg.max_norm(1.0, **kw),
    "unit_norm": optareg.unit_norm,
    "prox_group_lasso": lambda **kw: optareg.prox_group_lasso(0.1, 0.1, **kw),
    "prox_nuclear": lambda **kw: optareg.prox_nuclear(0.1, 0.1, **kw),
    "spectral_clip": lambda **kw: optareg.spectral_clip(1.0, **kw),
    "spectral_norms": lambda **kw: optareg.spectral_norms({"w": jnp.ones((2, 2))}, **kw),
    "orthogonality": lambda **kw: penalties.orthogonality(**kw),
    "decay_mask": lambda **kw: decay_mask({"w": jnp.ones((2, 2))}, **kw),
}


@pytest.mark.parametrize("name", list(_FACTORIES))
@pytest.mark.parametrize("bad", [-1, 1.5, "1", True, {"w": -2}, [None, 0.5], jnp.array(1)])
def test_bad_stack_axes_raise_at_construction(name, bad):
    with pytest.raises(ValueError, match="stack_axes"):
        _FACTORIES[name](stack_axes=bad)


def test_stack_axes_checked_against_selected_leaves_only():
    params = {"w": jnp.ones((2, 3, 4)), "b": jnp.ones(4)}
    zero = jax.tree.map(jnp.zeros_like, params)
    # a prefix entry that names no parameter
    tx = optareg.max_norm(1.0, stack_axes={"layers": 1})
    with pytest.raises(ValueError, match="stack_axes"):
        tx.update(zero, tx.init(params), params)
    # more stack axes than a masked-in leaf has
    tx = optareg.max_norm(1.0, stack_axes=2, mask={"w": True, "b": True})
    with pytest.raises(ValueError, match="stack_axes"):
        tx.update(zero, tx.init(params), params)
    # ... is fine when that leaf is masked out: never validated against the layout
    for tx in (
        optareg.max_norm(1.0, stack_axes=2, mask={"w": True, "b": False}),
        optareg.prox_group_lasso(0.1, 0.1, stack_axes=2, mask={"w": True, "b": False}),
        optareg.spectral_clip(1.0, stack_axes=2, mask={"w": True, "b": False}),
    ):
        updates, _ = tx.update(zero, tx.init(params), params)
        np.testing.assert_array_equal(updates["b"], zero["b"])
    # a prefix entry naming a leaf that an enclosing optax.masked removed is no error
    W = jnp.stack([2 * jnp.eye(3), 0.5 * jnp.eye(3)])
    two = {"a": W, "b": W}
    tx = optax.masked(optareg.max_norm(1.0, stack_axes={"a": 1, "b": 1}), {"a": True, "b": False})
    updates, _ = tx.update(jax.tree.map(jnp.zeros_like, two), tx.init(two), two)
    landed = optax.apply_updates(two, updates)
    np.testing.assert_allclose(np.linalg.norm(landed["a"], axis=1), [[1, 1, 1], [0.5] * 3])
    np.testing.assert_array_equal(landed["b"], W)
    # a callable returning something else than an int >= 0 or None
    tx = optareg.unit_norm(stack_axes=lambda path, leaf: -1)
    with pytest.raises(ValueError, match="stack_axes"):
        tx.update(zero, tx.init(params), params)
    # the alias and the keyword together; both spellings of decay_mask together
    with pytest.raises(ValueError, match="stack_axes"):
        optareg.spectral_clip(matrix_axes=1, stack_axes=1)
    with pytest.raises(ValueError, match="stack_axes"):
        decay_mask(params, stack_axes=1, stacked="w")


def test_prox_nuclear_masked_in_stacked_bias_is_no_matrix():
    rng = np.random.default_rng(0)
    params = {
        "kernel": jnp.asarray(rng.normal(size=(2, 3, 4)), jnp.float32),
        "bias": jnp.asarray(rng.normal(size=(2, 4)), jnp.float32),
    }
    zero = jax.tree.map(jnp.zeros_like, params)
    mask = {"kernel": True, "bias": True}
    tx = optareg.prox_nuclear(0.5, 1.0, mask=mask, stack_axes=1)
    new = optax.apply_updates(params, tx.update(zero, tx.init(params), params)[0])
    np.testing.assert_array_equal(new["bias"], params["bias"])  # one vector per layer
    kernel = np.asarray(params["kernel"], np.float64)
    np.testing.assert_allclose(new["kernel"], np_svt(kernel, None, 0.5), rtol=1e-5, atol=1e-6)
    tx = optareg.prox_nuclear(0.5, 1.0, mask=mask)  # without: the (2, 4) bias is one matrix
    new = optax.apply_updates(params, tx.update(zero, tx.init(params), params)[0])
    bias = np.asarray(params["bias"], np.float64)
    np.testing.assert_allclose(new["bias"], np_svt(bias, None, 0.5), rtol=1e-5, atol=1e-6)
