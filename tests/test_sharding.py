"""``optareg.state_shardings`` on one device (a 1x1 mesh): which leaf gets which sharding.

The multi-device suite (``tests/test_multidevice.py``) checks it against its own derivation for
every registry entry on a 2x4 mesh and runs the states it gives; here the rule itself is checked
leaf by leaf on the chains the issue names (Adam's moments, ``track(per_leaf=True)``'s scalar
metric trees, ``low_precision_updates("kahan")``'s ``None`` buffers, a masked transform).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import optareg

KERNEL, REPL = P(None, "model"), P()


def mesh():
    return jax.make_mesh((1, 1), ("data", "model"))


def params(dtype=jnp.float32):
    return {"dense": {"kernel": jnp.ones((4, 6), dtype), "bias": jnp.zeros((6,), jnp.float32)}}


def shardings(m):
    return {"dense": {"kernel": NamedSharding(m, KERNEL), "bias": NamedSharding(m, P("model"))}}


def specs(tree):
    return jax.tree.map(lambda s: s.spec, tree)


def test_adam_track_per_leaf_and_kahan():
    m = mesh()
    tx = optax.chain(
        optax.adam(1e-3),
        optareg.track(per_leaf=True),
        optareg.low_precision_updates("kahan"),
    )
    p = params(jnp.bfloat16)  # bf16 kernel, float32 bias: the bias's buffer is None
    got = optareg.state_shardings(tx, p, shardings(m), m)
    state = jax.eval_shape(tx.init, p)
    assert jax.tree.structure(got) == jax.tree.structure(state)

    adam = got[0][0]
    assert adam.count.spec == REPL
    for moments in (adam.mu, adam.nu):
        assert specs(moments) == {"dense": {"kernel": KERNEL, "bias": P("model")}}
    # every per-leaf metric is a scalar: replicated, although the tree looks like the params
    per_leaf = got[1].per_leaf
    assert per_leaf, "track(per_leaf=True) records per-leaf metric trees"
    for tree in per_leaf.values():
        assert all(s.spec == REPL for s in jax.tree.leaves(tree))
    comp = got[2].compensation
    assert comp["dense"]["bias"] is None and comp["dense"]["kernel"].spec == KERNEL
    # the state made with these shardings has them
    made = jax.jit(tx.init, out_shardings=got)(p)
    for x, s in zip(jax.tree.leaves(made), jax.tree.leaves(got), strict=True):
        assert x.sharding.is_equivalent_to(s, x.ndim)


def test_map_params_recipe_would_mis_shard_the_metric_trees():
    """Why the README points at state_shardings: optax's recipe gives scalars kernel specs."""
    m = mesh()
    tx = optax.chain(optax.sgd(0.1), optareg.track(per_leaf=True))
    p = params()
    naive = optax.tree.map_params(
        tx,
        lambda _, s: s,
        jax.eval_shape(tx.init, p),
        shardings(m),
        transform_non_params=lambda _: NamedSharding(m, REPL),
    )
    assert any(s.spec == KERNEL for s in jax.tree.leaves(naive[1].per_leaf))
    ours = optareg.state_shardings(tx, p, shardings(m), m)
    assert all(s.spec == REPL for s in jax.tree.leaves(ours[1].per_leaf))


def test_masked_spectral_clip_and_partition_specs():
    """Masked-out leaves (``MaskedNode``) stay; power vectors (not param-shaped) replicated;
    ``PartitionSpec`` leaves are read on the mesh; ShapeDtypeStructs are enough."""
    m = mesh()
    tx = optax.chain(
        optax.sgd(0.1),
        optareg.spectral_clip(1.0, method="power", mask={"dense": {"kernel": True, "bias": False}}),
        optareg.decoupled_weight_decay(1e-2, reference=params()),
    )
    shapes = jax.eval_shape(lambda: params())
    got = optareg.state_shardings(tx, shapes, {"dense": {"kernel": KERNEL, "bias": P("model")}}, m)
    state = jax.eval_shape(tx.init, shapes)
    assert jax.tree.structure(got) == jax.tree.structure(state)
    clip, decay = got[1], got[2]
    # the power vectors u (4,) and v (6,) sit at the kernel's place: not its shape, replicated
    # (v has the bias's shape, but not at the bias's place)
    clip = clip.inner_state  # (masked)
    assert clip.u["dense"]["kernel"].spec == REPL and clip.v["dense"]["kernel"].spec == REPL
    assert isinstance(clip.u["dense"]["bias"], optax.MaskedNode)
    assert jax.tree.leaves(decay) and {
        "kernel": decay.reference["dense"]["kernel"].spec,
        "bias": decay.reference["dense"]["bias"].spec,
    } == {"kernel": KERNEL, "bias": P("model")}
    n_kernel = sum(x.shape == (4, 6) for x in jax.tree.leaves(state))
    n_kernel_spec = sum(s.spec == KERNEL for s in jax.tree.leaves(got))
    assert n_kernel == n_kernel_spec == 1  # the decay reference's kernel


def test_bad_arguments():
    m = mesh()
    tx = optax.adam(1e-3)
    with pytest.raises(ValueError, match="param_shardings"):
        optareg.state_shardings(tx, params(), {"dense": {"kernel": KERNEL}}, m)
    with pytest.raises(TypeError, match="param_shardings"):
        optareg.state_shardings(tx, params(), {"dense": {"kernel": KERNEL, "bias": "x"}}, m)
    with pytest.raises(TypeError, match="mesh"):
        optareg.state_shardings(tx, params(), shardings(m), "mesh")


def test_single_device_is_a_pass_through():
    """Off explicit meshes the sharding helpers call the operator unchanged."""
    x = jnp.asarray(np.arange(6.0).reshape(2, 3))
    assert optareg.sharding.explicit_spec(x) is None
    assert optareg.sharding.run_local(lambda a: a * 2, x) is not None
    np.testing.assert_array_equal(optareg.sharding.run_local(lambda a: a * 2, x), 2 * np.asarray(x))
