"""Long runs: 20,000 jitted steps of each transform (one ``jax.lax.scan`` in one jitted call).

Checked after the run: step counters hold the exact number of steps and saturate at the int32
maximum instead of wrapping (also from a counter set to ``2**31 − 3``), power-iteration vectors
are still unit vectors, nothing drifted into NaN/Inf, and the state has exactly the structure,
shapes, dtypes and byte size it had after ``init`` (no growth).
"""

from __future__ import annotations

import chex
import helpers as tc
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from registry import Entry

import optareg

STEPS = 20_000
INT32_MAX = int(np.iinfo(np.int32).max)
NEAR_MAX = INT32_MAX - 2  # 2**31 − 3


CASES = tc.one_per(
    lambda e: (e.factory, e.kwargs.get("method"), e.kwargs.get("reuse_every", 1) > 1)
)


def _grads(params, i):
    """The suite's smooth loss gradient plus a bounded, step-dependent wiggle (never zero)."""
    wiggle = 0.1 * jnp.sin(0.37 * i.astype(jnp.float32))
    return jax.tree.map(lambda g: (g + wiggle).astype(g.dtype), tc.grad_fn(params))


def make_run(tx, entry: Entry):
    extra = tc.extra_args(entry)

    @jax.jit
    def run(params, state, start, steps_arr):
        def body(carry, i):
            p, s = carry
            u, s = tx.update(_grads(p, i), s, p, **extra)
            return (optax.apply_updates(p, u), s), None

        (p, s), _ = jax.lax.scan(body, (params, state), start + steps_arr)
        return p, s

    return lambda params, state, start, n: run(
        params, state, jnp.int32(start), jnp.arange(n, dtype=jnp.int32)
    )


def _is_counter(path) -> bool:
    last = path[-1] if path else None
    return isinstance(last, jax.tree_util.GetAttrKey) and last.name in ("count", "step")


def counters(state) -> list[int]:
    return [
        int(x) for path, x in jax.tree_util.tree_flatten_with_path(state)[0] if _is_counter(path)
    ]


def set_counters(state, value: int):
    return jax.tree_util.tree_map_with_path(
        lambda path, x: jnp.full_like(x, value) if _is_counter(path) else x, state
    )


def nbytes(tree) -> int:
    return sum(int(x.nbytes) for x in jax.tree.leaves(tree))


def unit_vectors(state):
    """The power-iteration vectors ``u``, ``v`` of every SpectralClipState in ``state``."""
    out = []
    for node in jax.tree.leaves(
        state, is_leaf=lambda x: isinstance(x, optareg.spectral.SpectralClipState)
    ):
        if isinstance(node, optareg.spectral.SpectralClipState) and node.u is not None:
            for vecs in (node.u, node.v):
                out += [x for x in jax.tree.leaves(vecs) if x.size]
    return out


def optimizer(entry: Entry):
    """The transform on a small problem: ``prox_adam`` alone (a complete optimizer), gradient-side
    and extra-args transforms before SGD, post-step transforms after it."""
    if entry.factory is optareg.prox_adam:
        return entry.make()
    if entry.position == "any":
        return optax.chain(entry.make(), optax.sgd(1e-2))
    return tc.chained(entry, entry.make(), optax.sgd(1e-2))


@pytest.mark.parametrize("entry", CASES)
def test_twenty_thousand_steps(entry: Entry):
    tx = optimizer(entry)
    params = tc.make_params()
    state0 = tx.init(params)
    run = make_run(tx, entry)
    params_n, state_n = run(params, state0, 0, STEPS)

    chex.assert_tree_all_finite(params_n)
    chex.assert_tree_all_finite(jax.tree.map(lambda x: jnp.where(jnp.isposinf(x), 0, x), state_n))
    assert not any(bool(jnp.any(jnp.isnan(x))) for x in jax.tree.leaves(state_n))
    # memory flat: the same tree, shapes, dtypes and bytes as after init
    chex.assert_trees_all_equal_structs(state_n, state0)
    chex.assert_trees_all_equal_shapes_and_dtypes(state_n, state0)
    assert nbytes(state_n) == nbytes(state0)
    # every step counter counted every step (``track`` keeps none)
    assert all(c == STEPS for c in counters(state_n)), counters(state_n)
    assert counters(state_n) or entry.factory is optareg.track
    # power-iteration vectors are unit vectors (batched: the norm along the last axis)
    for vec in unit_vectors(state_n):
        np.testing.assert_allclose(np.linalg.norm(np.asarray(vec), axis=-1), 1.0, atol=1e-5)
    # the problem was actually being optimized (not frozen): the loss went down
    assert float(tc.loss(params_n)) < float(tc.loss(params))


@pytest.mark.parametrize("entry", CASES)
def test_counter_near_int32_max_saturates(entry: Entry):
    tx = optimizer(entry)
    params = tc.make_params()
    state = set_counters(tx.init(params), NEAR_MAX)
    params_n, state_n = make_run(tx, entry)(params, state, 0, 5)
    assert counters(state_n) == [INT32_MAX] * len(counters(state_n)), counters(state_n)
    chex.assert_tree_all_finite(params_n)
    chex.assert_trees_all_equal_shapes_and_dtypes(state_n, state)


def test_early_stopping_long_run_and_saturation():
    es = optareg.early_stopping(patience=INT32_MAX)
    params = {"w": jnp.zeros(3)}

    @jax.jit
    def run(state, values):
        def body(s, v):
            return es.update(s, v, params), None

        return jax.lax.scan(body, state, values)[0]

    # 20,000 calls whose value improves every 7th call: never stops, best tracked exactly.
    i = jnp.arange(STEPS)
    values = jnp.where(i % 7 == 0, -i.astype(jnp.float32), 1e9)
    state = run(es.init(params), values)
    assert int(state.step) == STEPS and not bool(state.should_stop)
    assert int(state.best_step) == (STEPS - 1) // 7 * 7
    assert int(state.wait) == (STEPS - 1) % 7
    # near the int32 maximum: step and wait saturate, the patience limit still fires
    state = state._replace(step=jnp.int32(NEAR_MAX), wait=jnp.int32(NEAR_MAX))
    state = run(state, jnp.full((5,), 1e9, jnp.float32))
    assert int(state.step) == INT32_MAX
    assert bool(state.should_stop) and int(state.wait) == INT32_MAX
    assert int(state.stopped_step) == NEAR_MAX + 1
