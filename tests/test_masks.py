"""Decay masks from tree paths on real Flax linen, Flax NNX, Haiku and Equinox models."""

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
from optareg.masks import by_path, decay_mask, path_names

D, V, H, L = 16, 11, 2, 4  # width, vocabulary, heads, stacked layers
TOKENS = jnp.zeros((2, 5), jnp.int32)


def selected(params, mask):
    """The path strings of the leaves a mask selects (and a check that it is shaped like params)."""
    assert jax.tree.structure(mask) == jax.tree.structure(params)
    names = jax.tree.leaves(path_names(params))
    flags = jax.tree.leaves(mask)
    assert len(names) == len(flags) == len(jax.tree.leaves(params))
    assert all(isinstance(f, bool) for f in flags)
    return {n for n, f in zip(names, flags, strict=True) if f}


def all_names(params):
    return set(jax.tree.leaves(path_names(params)))


def decay_step(params, mask, lam=0.1):
    """One step with zero gradients, so that only the (masked) decay moves the params."""
    tx = optax.chain(optareg.add_decayed_weights(lam, mask=mask), optax.sgd(1.0))

    @jax.jit  # one compilation instead of one per eager op
    def step(params):
        updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
        return optax.apply_updates(params, updates)

    return step(params)


def check_decay_step(params, new, chosen, lam=0.1):
    """Leaves in ``chosen`` become (1 − λ)·θ; every other leaf is bit-identical."""
    names = jax.tree.leaves(path_names(params))
    for n, before, after in zip(names, jax.tree.leaves(params), jax.tree.leaves(new), strict=True):
        if n in chosen:
            np.testing.assert_allclose(after, (1 - lam) * np.asarray(before), rtol=1e-6, err_msg=n)
            if np.any(np.asarray(before) != 0):
                assert not np.array_equal(after, before), n
        else:
            np.testing.assert_array_equal(after, before, err_msg=n)


# ---------------------------------------------------------------------------------------------
# Flax linen
# ---------------------------------------------------------------------------------------------


class LinenBlock(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.MultiHeadDotProductAttention(num_heads=H)(nn.LayerNorm()(x))
        x = x + h
        h = nn.Dense(D)(nn.gelu(nn.Dense(4 * D)(nn.LayerNorm()(x))))
        return x + h


class LinenModel(nn.Module):
    @nn.compact
    def __call__(self, tokens):
        x = LinenBlock()(nn.Embed(V, D)(tokens))
        return nn.Dense(V)(nn.LayerNorm()(x))


class LinenScanBody(nn.Module):
    @nn.compact
    def __call__(self, x, _):
        return LinenBlock()(x), None


class LinenScanned(nn.Module):
    @nn.compact
    def __call__(self, x):
        scan = nn.scan(
            LinenScanBody, variable_axes={"params": 0}, split_rngs={"params": True}, length=L
        )
        return scan(name="layers")(x, None)[0]


_LINEN_ATTN = [
    f"MultiHeadDotProductAttention_0/{n}/kernel" for n in ("query", "key", "value", "out")
]
_LINEN_BLOCK = _LINEN_ATTN + ["Dense_0/kernel", "Dense_1/kernel"]


def test_linen_transformer_block():
    params = jax.jit(LinenModel().init)(jax.random.key(0), TOKENS)
    expect = {f"params/LinenBlock_0/{n}" for n in _LINEN_BLOCK} | {"params/Dense_0/kernel"}
    assert selected(params, decay_mask(params)) == expect
    assert expect == {n for n in all_names(params) if n.endswith("/kernel")}
    # embeddings decayed when "embedding" is not excluded
    no_emb = decay_mask(params, exclude=("bias", "scale", "norm", "ln"))
    assert selected(params, no_emb) == expect | {"params/Embed_0/embedding"}
    check_decay_step(params, decay_step(params, decay_mask), expect)


def test_linen_scanned_stack():
    params = jax.jit(LinenScanned().init)(jax.random.key(0), jnp.zeros((2, 5, D)))
    scale = params["params"]["layers"]["LinenBlock_0"]["LayerNorm_0"]["scale"]
    assert scale.shape == (L, D)  # a stacked norm scale is 2-D ...
    naive = jax.tree.map(lambda x: x.ndim >= 2, params)
    assert "params/layers/LinenBlock_0/LayerNorm_0/scale" in selected(
        params, naive
    )  # ... so ndim fails
    expect = {f"params/layers/LinenBlock_0/{n}" for n in _LINEN_BLOCK}
    assert selected(params, decay_mask(params)) == expect
    check_decay_step(params, decay_step(params, decay_mask), expect)


# ---------------------------------------------------------------------------------------------
# Flax NNX
# ---------------------------------------------------------------------------------------------


class NNXBlock(nnx.Module):
    def __init__(self, rngs):
        self.ln1 = nnx.LayerNorm(D, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(num_heads=H, in_features=D, decode=False, rngs=rngs)
        self.ln2 = nnx.LayerNorm(D, rngs=rngs)
        self.mlp_in = nnx.Linear(D, 4 * D, rngs=rngs)
        self.mlp_out = nnx.Linear(4 * D, D, rngs=rngs)

    def __call__(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.mlp_out(nnx.gelu(self.mlp_in(self.ln2(x))))


class NNXModel(nnx.Module):
    def __init__(self, rngs):
        self.embedding = nnx.Embed(V, D, rngs=rngs)
        self.block = NNXBlock(rngs)
        self.ln_f = nnx.LayerNorm(D, rngs=rngs)
        self.head = nnx.Linear(D, V, rngs=rngs)

    def __call__(self, tokens):
        return self.head(self.ln_f(self.block(self.embedding(tokens))))


_NNX_BLOCK = [f"attn/{n}/kernel" for n in ("query", "key", "value", "out")] + [
    "mlp_in/kernel",
    "mlp_out/kernel",
]


def test_nnx_state_transformer_block():
    model = NNXModel(nnx.Rngs(0))
    state = nnx.state(model, nnx.Param)
    mask = decay_mask(state)
    # the mask has the structure optax sees: State and Param nodes (with `.value`) kept
    assert jax.tree.structure(mask) == jax.tree.structure(state)
    assert isinstance(mask["block"]["mlp_in"]["kernel"], nnx.Param)
    expect = {f"block/{n}" for n in _NNX_BLOCK} | {"head/kernel"}
    assert selected(state, mask) == expect
    # a precomputed mask tree in optax.masked, and the mask function
    check_decay_step(state, decay_step(state, mask), expect)
    check_decay_step(state, decay_step(state, decay_mask), expect)
    tx = optax.masked(optax.add_decayed_weights(0.1), mask)
    u, _ = tx.update(jax.tree.map(jnp.zeros_like, state), tx.init(state), state)
    np.testing.assert_array_equal(u["ln_f"]["scale"].value, 0.0)


def test_nnx_optimizer_with_decay_mask():
    model = NNXModel(nnx.Rngs(0))
    before = nnx.state(model, nnx.Param)
    before = jax.tree.map(np.array, before)
    tx = optax.chain(optareg.add_decayed_weights(0.1, mask=decay_mask), optax.sgd(1.0))
    opt = nnx.Optimizer(model, tx, wrt=nnx.Param)
    grads = jax.tree.map(jnp.zeros_like, nnx.state(model, nnx.Param))
    opt.update(model, grads)
    after = nnx.state(model, nnx.Param)
    check_decay_step(before, after, {f"block/{n}" for n in _NNX_BLOCK} | {"head/kernel"})


def test_nnx_stacked_layers():
    @nnx.split_rngs(splits=L)
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def make(rngs):
        return NNXBlock(rngs)

    state = nnx.state(make(nnx.Rngs(0)), nnx.Param)
    assert state["ln1"]["scale"].value.shape == (L, D)
    assert selected(state, decay_mask(state)) == set(_NNX_BLOCK)
    check_decay_step(state, decay_step(state, decay_mask), set(_NNX_BLOCK))


# ---------------------------------------------------------------------------------------------
# Haiku
# ---------------------------------------------------------------------------------------------


def _haiku_block(x):
    h = hk.LayerNorm(-1, create_scale=True, create_offset=True)(x)
    attn = hk.MultiHeadAttention(
        num_heads=H, key_size=D // H, w_init=hk.initializers.VarianceScaling(1.0)
    )
    x = x + attn(h, h, h)
    h = hk.LayerNorm(-1, create_scale=True, create_offset=True)(x)
    return x + hk.Linear(D)(jax.nn.gelu(hk.Linear(4 * D)(h)))


def _haiku_forward(tokens):
    x = _haiku_block(hk.Embed(V, D)(tokens))
    x = hk.layer_stack(L)(_haiku_block)(x)
    return hk.Linear(V)(hk.LayerNorm(-1, create_scale=True, create_offset=True)(x))


def test_haiku_block_and_layer_stack():
    params = jax.jit(hk.transform(_haiku_forward).init)(jax.random.key(0), TOKENS)
    attn = [f"multi_head_attention/{n}/w" for n in ("query", "key", "value", "linear")]
    block = attn + ["linear/w", "linear_1/w"]
    stack = "__layer_stack_no_per_layer"
    expect = set(block) | {f"{stack}/{n}" for n in block} | {"linear_2/w"}
    assert params[f"{stack}/linear"]["b"].shape == (L, D)  # stacked bias: 2-D
    assert selected(params, decay_mask(params)) == expect
    assert expect == {n for n in all_names(params) if n.endswith("/w")}
    check_decay_step(params, decay_step(params, decay_mask), expect)


# ---------------------------------------------------------------------------------------------
# Equinox
# ---------------------------------------------------------------------------------------------


class EqxBlock(eqx.Module):
    ln1: eqx.nn.LayerNorm
    attn: eqx.nn.MultiheadAttention
    ln2: eqx.nn.LayerNorm
    mlp_in: eqx.nn.Linear
    mlp_out: eqx.nn.Linear

    def __init__(self, key):
        k = jax.random.split(key, 3)
        self.ln1, self.ln2 = eqx.nn.LayerNorm(D), eqx.nn.LayerNorm(D)
        self.attn = eqx.nn.MultiheadAttention(H, D, key=k[0])
        self.mlp_in = eqx.nn.Linear(D, 4 * D, key=k[1])
        self.mlp_out = eqx.nn.Linear(4 * D, D, key=k[2])


class EqxModel(eqx.Module):
    embedding: eqx.nn.Embedding
    block: EqxBlock
    stack: EqxBlock  # L blocks stacked with filter_vmap (leading layer axis)
    ln_f: eqx.nn.LayerNorm
    head: eqx.nn.Linear

    def __init__(self, key):
        k = jax.random.split(key, 4)
        self.embedding = eqx.nn.Embedding(V, D, key=k[0])
        self.block = EqxBlock(k[1])
        self.stack = eqx.filter_vmap(EqxBlock)(jax.random.split(k[2], L))
        self.ln_f = eqx.nn.LayerNorm(D)
        self.head = eqx.nn.Linear(D, V, key=k[3])


def test_equinox_block_and_stack():
    model = eqx.filter_jit(EqxModel)(jax.random.key(0))
    params = eqx.filter(model, eqx.is_array)
    assert params.stack.ln1.weight.shape == (L, D)  # Equinox names the norm scale "weight"
    block = [f"attn/{n}_proj/weight" for n in ("query", "key", "value", "output")]
    block += ["mlp_in/weight", "mlp_out/weight"]
    expect = {f"block/{n}" for n in block} | {f"stack/{n}" for n in block} | {"head/weight"}
    mask = decay_mask(params)
    assert selected(params, mask) == expect
    # with optax on the filtered module, then applied back onto the model
    tx = optax.chain(optareg.add_decayed_weights(0.1, mask=decay_mask), optax.sgd(1.0))

    @eqx.filter_jit
    def step(model):
        params = eqx.filter(model, eqx.is_array)
        updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
        return eqx.apply_updates(model, updates)

    new = eqx.filter(step(model), eqx.is_array)
    check_decay_step(params, new, expect)


# ---------------------------------------------------------------------------------------------
# matching semantics
# ---------------------------------------------------------------------------------------------


def _leaf_paths(*paths, shape=(2, 2)):
    tree = {}
    for p in paths:
        node = tree
        *parents, last = p.split("/")
        for k in parents:
            node = node.setdefault(k, {})
        node[last] = jnp.ones(shape)
    return tree


@pytest.mark.parametrize(
    "path, excluded",
    [
        ("ln_1/w", True),
        ("ln1/w", True),
        ("LN/w", True),
        ("ln_f/kernel", True),
        ("blocks/kernel", False),  # "ln" is not a substring match
        ("linear/kernel", False),
        ("LayerNorm_0/scale_free", True),
        ("rmsnorm/w", True),
        ("norm2/w", True),
        ("layer_norm/w", True),
        ("normal_init/w", False),
        ("embed/embeddings", True),
        ("tok/Embedding", True),
        ("dense/b", True),  # Haiku's bias
        ("b/kernel", False),  # "b" counts as bias only as the leaf's own name
        ("mlp/biases", True),
        ("mlp/kernel", False),
        ("attn/scale_proj/kernel", True),
    ],
)
def test_exclude_matching(path, excluded):
    params = _leaf_paths(path)
    assert selected(params, decay_mask(params)) == (set() if excluded else {path})


def test_exclude_argument_forms_and_min_ndim():
    params = _leaf_paths("a/kernel", "a/bias", "gain")
    params["vec"] = jnp.ones(3)
    assert selected(params, decay_mask(params)) == {"a/kernel", "gain"}
    assert selected(params, decay_mask(params, exclude="gain")) == {"a/kernel", "a/bias"}
    assert selected(params, decay_mask(params, exclude=())) == {"a/kernel", "a/bias", "gain"}
    assert selected(params, decay_mask(params, exclude=(), min_ndim=None)) == all_names(params)
    assert selected(params, decay_mask(params, exclude=(), min_ndim=0)) == all_names(params)
    assert selected(params, decay_mask(params, min_ndim=3)) == set()


def test_stacked_counts_rank_without_layer_axis():
    params = {
        "layers": {"kernel": jnp.ones((L, D, D)), "gain": jnp.ones((L, D))},
        "head": {"w": jnp.ones((D, V))},
    }
    assert selected(params, decay_mask(params)) == {"layers/kernel", "layers/gain", "head/w"}
    assert selected(params, decay_mask(params, stacked=r"^layers/")) == {"layers/kernel", "head/w"}


def test_decay_mask_validation():
    params = _leaf_paths("a/kernel")
    with pytest.raises(TypeError, match="exclude"):
        decay_mask(params, exclude=("bias", 3))
    with pytest.raises(TypeError, match="exclude"):
        decay_mask(params, exclude=("",))
    with pytest.raises(ValueError, match="min_ndim"):
        decay_mask(params, min_ndim=-1)
    with pytest.raises(TypeError, match="min_ndim"):
        decay_mask(params, min_ndim=1.5)
    with pytest.raises(ValueError, match="stacked"):
        decay_mask(params, stacked="(")


def test_by_path():
    params = jax.jit(LinenModel().init)(jax.random.key(0), TOKENS)
    attn = by_path(r"MultiHeadDotProductAttention_0/(query|key)/kernel$")
    assert selected(params, attn(params)) == {
        "params/LinenBlock_0/MultiHeadDotProductAttention_0/query/kernel",
        "params/LinenBlock_0/MultiHeadDotProductAttention_0/key/kernel",
    }
    both = by_path([r"^params/Dense_0/", r"Embed_0"])
    assert selected(params, both(params)) == {
        "params/Dense_0/kernel",
        "params/Dense_0/bias",
        "params/Embed_0/embedding",
    }
    assert selected(params, by_path("nothing_here")(params)) == set()
    with pytest.raises(ValueError, match="pattern"):
        by_path("[")
    with pytest.raises(ValueError, match="pattern"):
        by_path([])
    with pytest.raises(TypeError, match="pattern"):
        by_path([3])


def test_by_path_as_mask_in_optax_and_optareg_on_nnx():
    state = nnx.state(NNXModel(nnx.Rngs(0)), nnx.Param)
    mask = by_path(r"^head/")
    assert selected(state, mask(state)) == {"head/kernel", "head/bias"}
    new = decay_step(state, mask)
    check_decay_step(state, new, {"head/kernel", "head/bias"})
    # optax's own transforms accept it too
    tx = optax.adamw(1e-2, weight_decay=0.5, mask=mask)
    g = jax.tree.map(jnp.zeros_like, state)
    u, _ = tx.update(g, tx.init(state), state)
    np.testing.assert_array_equal(u["block"]["mlp_in"]["kernel"].value, 0.0)
    assert np.all(np.asarray(u["head"]["kernel"].value) != 0.0)
    # and a post-step optareg transform
    tx = optareg.decoupled_weight_decay(0.5, mask=mask)
    u, _ = tx.update(g, tx.init(state), state)
    np.testing.assert_array_equal(u["ln_f"]["scale"].value, 0.0)
    np.testing.assert_allclose(
        u["head"]["kernel"].value, -0.5 * state["head"]["kernel"].value, rtol=1e-6
    )


class _EqxGPT(eqx.Module):
    wte: eqx.nn.Embedding
    tok_embed: eqx.nn.Embedding
    final: eqx.nn.LayerNorm
    head: eqx.nn.Linear
    blocks: list

    def __init__(self, key):
        k1, k2, k3, k4 = jax.random.split(key, 4)
        self.wte = eqx.nn.Embedding(10, 4, key=k1)
        self.tok_embed = eqx.nn.Embedding(10, 4, key=k2)
        self.final = eqx.nn.LayerNorm(4)
        self.head = eqx.nn.Linear(4, 3, key=k3)
        self.blocks = [eqx.nn.MLP(4, 4, 8, 1, key=k4)]


def test_equinox_embeddings_are_not_decayed_whatever_their_attribute_name():
    """``eqx.nn.Embedding`` stores its table as ``weight``, like ``Linear``: the module's class
    counts as a path component, so ``wte.weight`` / ``tok_embed.weight`` are not decayed (they
    were), as the Flax (``embedding``) and Haiku (``embeddings``) tables are not."""
    model = _EqxGPT(jax.random.PRNGKey(0))
    mask = decay_mask(eqx.filter(model, eqx.is_array))
    assert mask.wte.weight is False and mask.tok_embed.weight is False
    assert mask.final.weight is False and mask.head.bias is False
    assert mask.head.weight is True and mask.blocks[0].layers[0].weight is True
    assert decay_mask(eqx.filter(model, eqx.is_array), exclude=()).wte.weight is True
    # in a training step: the embeddings keep their values under decoupled decay
    params = eqx.filter(model, eqx.is_array)
    tx = optareg.chain(optax.sgd(0.0), optareg.decoupled_weight_decay(0.5, mask=decay_mask))
    u, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
    new = optax.apply_updates(params, u)
    np.testing.assert_array_equal(new.wte.weight, params.wte.weight)
    np.testing.assert_allclose(new.head.weight, 0.5 * params.head.weight, rtol=1e-6)


class _NnxNet(nnx.Module):
    def __init__(self, rngs):
        self.l1 = nnx.Linear(3, 4, rngs=rngs)
        self.bn = nnx.BatchNorm(4, rngs=rngs)
        self.l2 = nnx.Linear(4, 2, rngs=rngs)

    def __call__(self, x):
        return self.l2(nnx.relu(self.bn(self.l1(x))))


def test_nnx_optimizer_with_a_mask_tree_built_on_its_state():
    """``decay_mask(nnx.state(model, nnx.Param))`` keeps NNX's Param nodes, and nnx.Optimizer
    hands optax those nodes at init but plain arrays at update: the tree mask now matches both
    (it failed with optax's structure error at the first update). Oracle: by hand, the kernels
    scaled by 1 − λ, the biases and BatchNorm's scale/bias untouched (zero gradients)."""
    model = _NnxNet(nnx.Rngs(0))
    before = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    mask = decay_mask(nnx.state(model, nnx.Param))
    tx = optareg.chain(optax.sgd(0.0), optareg.decoupled_weight_decay(0.25, mask=mask))
    opt = nnx.Optimizer(model, tx, wrt=nnx.Param)
    grads = jax.tree.map(jnp.zeros_like, nnx.state(model, nnx.Param))
    opt.update(model, grads)
    after = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    for layer in ("l1", "l2"):
        np.testing.assert_allclose(after[layer]["kernel"], 0.75 * before[layer]["kernel"], 1e-6)
        np.testing.assert_array_equal(after[layer]["bias"], before[layer]["bias"])
    np.testing.assert_array_equal(after["bn"]["scale"], before["bn"]["scale"])


@pytest.mark.parametrize(
    "factory, kwargs",
    [
        (optareg.prox_l1, {"l1": 0.5, "learning_rate": 1.0}),
        (optareg.decoupled_weight_decay, {"weight_decay": 0.5}),
        (optareg.max_norm, {"max_value": 1.0}),
    ],
    ids=["prox_l1", "decoupled_weight_decay", "max_norm"],
)
def test_a_hand_written_mask_function_under_inject_hyperparams_is_a_clear_error(factory, kwargs):
    """optax calls a mask function not named in static_args with the step count; a hand-written
    one then comes back as a single False, which switched the transform off in silence (the
    oracle update −0.5 came out 0). Now a TypeError at init naming static_args; named there,
    the mask works."""

    def mask(p):
        return jax.tree.map(lambda x: x.ndim >= 2, p)

    params = {"w": jnp.full((2, 2), 2.0), "b": jnp.full((2,), 2.0)}
    tx = optax.inject_hyperparams(factory)(**kwargs, mask=mask)
    with pytest.raises(TypeError, match=r"static_args"):
        tx.init(params)
    with pytest.raises(TypeError, match=r"single bool"):
        factory(**kwargs, mask=False)
    tx = optax.inject_hyperparams(factory, static_args=("mask",))(**kwargs, mask=mask)
    u, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
    assert float(jnp.abs(u["w"]).max()) > 0 and float(jnp.abs(u["b"]).max()) == 0
