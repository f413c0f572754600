"""The shared conformance suite: every public transform in ``tests/registry`` passes every check.

Checks (one test function each, parametrized over the registry):
  jit vs eager (chex variants); shapes and dtypes of updates vs params and of the state across 10
  steps; float32 and bfloat16 dtypes kept; finite outputs, also for all-zero gradients and all-zero
  params; inside ``optax.chain`` (first/last as required, with the chained result equal to the
  manual composition), ``optax.masked`` and ``optax.MultiSteps(every_k_schedule=2)``;
  ``optax.inject_hyperparams`` and constant schedules give identical results; the state survives
  ``jax.lax.cond``; unexpected extra keyword arguments are accepted without recompiling;
  ``optax.tree.map_params`` works on the state.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from absl.testing import parameterized
from helpers import (
    MASK,
    assert_close,
    assert_identical,
    chained,
    extra_args,
    grad_fn,
    grads_for,
    loss,
    make_params,
    make_step,
    run_steps,
    skip_if,
)
from registry import ENTRIES, Entry

import optareg

pytestmark = pytest.mark.conformance

IDS = [e.id for e in ENTRIES]
STEPS = 10


# ---------------------------------------------------------------------------------------------


class JitVsEagerTest(parameterized.TestCase):
    """jit and eager updates agree (chex variants)."""

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(*[(e.id, e) for e in ENTRIES])
    def test_jit_matches_eager(self, entry):
        skip_if(entry, "jit")
        tx = entry.make()
        params = make_params()
        extra = extra_args(entry)
        state_ref = state_var = tx.init(params)
        update = self.variant(lambda g, s, p: tx.update(g, s, p, **extra))
        for i in range(3):
            g = grads_for(params, seed=20 + i)
            u_ref, state_ref = tx.update(g, state_ref, params, **extra)
            u_var, state_var = update(g, state_var, params)
            assert_close(u_var, u_ref, entry.atol)
            assert_close(state_var, state_ref, entry.atol)
            params = optax.apply_updates(params, u_ref)


DTYPES = pytest.mark.parametrize(
    "dtype", [jnp.float32, jnp.bfloat16, jnp.float64], ids=["f32", "bf16", "f64"]
)


def x64_if(dtype):
    """float64 runs inside ``jax.enable_x64`` (it does not leak into other tests)."""
    return jax.enable_x64(dtype == jnp.float64)


@DTYPES
@pytest.mark.parametrize("entry", ENTRIES, ids=IDS)
def test_shapes_dtypes_and_state_stable(entry, dtype):
    skip_if(entry, "dtype")
    with x64_if(dtype):
        _check_shapes_dtypes_and_state(entry, dtype)


def _check_shapes_dtypes_and_state(entry, dtype):
    tx = entry.make()
    params = make_params(dtype)
    state0 = tx.init(params)
    for updates, state, new_params in run_steps(tx, params, STEPS, entry=entry):
        chex.assert_trees_all_equal_shapes_and_dtypes(updates, params)
        chex.assert_trees_all_equal_shapes_and_dtypes(new_params, params)
        chex.assert_trees_all_equal_structs(state, state0)
        chex.assert_trees_all_equal_shapes_and_dtypes(state, state0)
        chex.assert_tree_all_finite(updates)
        chex.assert_tree_all_finite(state)


@DTYPES
@pytest.mark.parametrize("entry", ENTRIES, ids=IDS)
def test_zeros_stay_finite(entry, dtype):
    """All-zero gradients, all-zero params, and both: finite updates and state, dtypes kept."""
    with x64_if(dtype):
        _check_zeros_stay_finite(entry, dtype)


def _check_zeros_stay_finite(entry, dtype):
    tx = entry.make()
    step = make_step(tx, entry)
    for zero in ("grads", "params", "both"):
        params = make_params(dtype, zero=zero in ("params", "both"))
        for updates, state, _ in run_steps(
            tx, params, 3, entry=entry, zero_grads=zero in ("grads", "both"), step=step
        ):
            chex.assert_tree_all_finite(updates)
            chex.assert_tree_all_finite(state)
            chex.assert_trees_all_equal_shapes_and_dtypes(updates, params)


@pytest.mark.parametrize("entry", ENTRIES, ids=IDS)
def test_in_chain_equals_manual_composition(entry):
    """``optax.chain`` with a base optimizer equals running the two transforms by hand."""
    skip_if(entry, "chain")
    base = optax.adam(1e-2)
    tx = entry.make()
    chain = chained(entry, entry.make(), base)
    params = make_params()
    extra = extra_args(entry)
    s_chain = chain.init(params)
    s_base, s_tx = base.init(params), tx.init(params)
    for i in range(4):
        g = grads_for(params, seed=30 + i)
        u_chain, s_chain = chain.update(g, s_chain, params, **extra)
        if entry.position == "first":
            u, s_tx = tx.update(g, s_tx, params, **extra)
            u, s_base = base.update(u, s_base, params)
        else:
            u, s_base = base.update(g, s_base, params)
            u, s_tx = tx.update(u, s_tx, params, **extra)
        assert_identical(u_chain, u)
        chex.assert_tree_all_finite(u_chain)
        params = optax.apply_updates(params, u_chain)


@pytest.mark.parametrize("entry", ENTRIES, ids=IDS)
def test_inside_optax_masked(entry):
    """Masked-out leaves pass through bit for bit; masked-in leaves match the unmasked result."""
    skip_if(entry, "masked")
    tx = optax.masked(entry.make(), MASK)
    params = make_params()
    extra = extra_args(entry)
    state = tx.init(params)
    for i in range(3):
        g = grads_for(params, seed=40 + i)
        u, state = tx.update(g, state, params, **extra)
        chex.assert_trees_all_equal_shapes_and_dtypes(u, params)
        chex.assert_tree_all_finite(u)
        np.testing.assert_array_equal(u["dense"]["bias"], g["dense"]["bias"])
        np.testing.assert_array_equal(u["scale"], g["scale"])
        params = optax.apply_updates(params, u)


@pytest.mark.parametrize("entry", ENTRIES, ids=IDS)
def test_inside_multisteps(entry):
    """``optax.MultiSteps(every_k_schedule=2)``: zero updates on odd steps, finite throughout."""
    skip_if(entry, "multisteps")
    tx = optax.MultiSteps(chained(entry, entry.make()), every_k_schedule=2)
    params = make_params()
    extra = extra_args(entry)
    state = tx.init(params)
    update = jax.jit(lambda g, s, p: tx.update(g, s, p, **extra))
    for i in range(4):
        g = grads_for(params, seed=50 + i)
        u, state = update(g, state, params)
        chex.assert_tree_all_finite(u)
        chex.assert_trees_all_equal_shapes_and_dtypes(u, params)
        if i % 2 == 0:
            for leaf in jax.tree.leaves(u):
                np.testing.assert_array_equal(leaf, 0.0)
        params = optax.apply_updates(params, u)
    assert int(state.gradient_step) == 2


def _static_args(entry: Entry):
    return tuple(k for k in entry.kwargs if k not in entry.inject)


@pytest.mark.parametrize(
    "entry", [e for e in ENTRIES if e.inject], ids=[e.id for e in ENTRIES if e.inject]
)
def test_inject_hyperparams_identical(entry):
    plain = entry.make()
    injected = optax.inject_hyperparams(entry.factory, static_args=_static_args(entry))(
        **entry.kwargs
    )
    params = make_params()
    extra = extra_args(entry)
    s_plain, s_inj = plain.init(params), injected.init(params)
    update_plain = jax.jit(lambda g, s, p: plain.update(g, s, p, **extra))
    update_inj = jax.jit(lambda g, s, p: injected.update(g, s, p, **extra))
    for i in range(5):
        g = grads_for(params, seed=60 + i)
        u_plain, s_plain = update_plain(g, s_plain, params)
        u_inj, s_inj = update_inj(g, s_inj, params)
        assert_identical(u_inj, u_plain)
        params = optax.apply_updates(params, u_plain)
    for k in entry.inject:
        assert k in s_inj.hyperparams


@pytest.mark.parametrize(
    "entry", [e for e in ENTRIES if e.inject], ids=[e.id for e in ENTRIES if e.inject]
)
def test_constant_schedule_equals_constant(entry):
    sched = {k: optax.constant_schedule(entry.kwargs[k]) for k in entry.inject}
    a, b = entry.make(), entry.make(**sched)
    params = make_params()
    for (ua, _, _), (ub, _, _) in zip(
        run_steps(a, params, 4, entry=entry), run_steps(b, params, 4, entry=entry), strict=True
    ):
        assert_identical(ua, ub)


@pytest.mark.parametrize("entry", ENTRIES, ids=IDS)
def test_state_survives_lax_cond(entry):
    tx = entry.make()
    params = make_params()
    extra = extra_args(entry)
    state = tx.init(params)
    g = grads_for(params)

    @jax.jit
    def maybe_update(pred, state):
        return jax.lax.cond(pred, lambda s: tx.update(g, s, params, **extra)[1], lambda s: s, state)

    s_true = maybe_update(True, state)
    s_false = maybe_update(False, state)
    chex.assert_trees_all_equal_shapes_and_dtypes(s_true, state)
    assert_identical(s_false, state)
    assert_close(s_true, tx.update(g, state, params, **extra)[1], entry.atol)


@pytest.mark.parametrize("entry", ENTRIES, ids=IDS)
def test_extra_kwargs_accepted_without_recompile(entry):
    tx = entry.make()
    params = make_params()
    extra = extra_args(entry)
    traces = []

    @jax.jit
    def update(g, s, p, unrelated):
        traces.append(1)
        return tx.update(g, s, p, unexpected_kwarg=unrelated, **extra)

    state = tx.init(params)
    g = grads_for(params)
    u1, state = update(g, state, params, jnp.float32(1.0))
    u2, state = update(g, state, params, jnp.float32(2.0))
    assert len(traces) == 1
    chex.assert_tree_all_finite((u1, u2))


@pytest.mark.parametrize("entry", ENTRIES, ids=IDS)
def test_tree_map_params(entry):
    skip_if(entry, "map_params")
    tx = entry.make()
    params = make_params()
    state = tx.init(params)
    state, _ = state, None
    extra = extra_args(entry)
    _, state = tx.update(grads_for(params), state, params, **extra)
    mapped = optax.tree.map_params(tx, lambda p: p, state)
    assert_identical(mapped, state)
    # A real use: give every params-shaped part of the state the dtype of its params.
    cast = optax.tree.map_params(
        tx, lambda p: p.astype(jnp.bfloat16), state, transform_non_params=lambda x: x
    )
    chex.assert_trees_all_equal_structs(cast, state)


def _converge_setup(entry):
    """(transform, steps): a complete optimizer (``prox_adam``) alone, anything else where it
    belongs relative to ``optax.sgd(0.1)``."""
    if entry.factory is optareg.prox_adam:
        return entry.make(), 400
    if entry.position == "any":  # gradient-side: before the learning rate, like weight decay
        return optax.chain(entry.make(), optax.sgd(0.1)), 60
    return chained(entry, entry.make(), optax.sgd(0.1)), 60


@pytest.mark.parametrize("entry", ENTRIES, ids=IDS)
def test_converges_on_a_small_target(entry):
    """On the suite's smooth loss the iterates settle: the last step is below 1e-3 of the first
    (a fixed point of the regularized problem) and the loss went down; an entry whose
    regularizer leaves the unregularized minimizer in reach also closes 90% of the gap to it."""
    skip_if(entry, "converge")
    tx, steps = _converge_setup(entry)
    params = make_params()
    extra = extra_args(entry)

    def body(carry, _):
        params, state = carry
        updates, state = tx.update(grad_fn(params), state, params, **extra)
        return (optax.apply_updates(params, updates), state), optax.global_norm(updates)

    run = jax.jit(lambda c: jax.lax.scan(body, c, None, steps))
    (final, _), step_norms = run((params, tx.init(params)))
    n = sum(x.size for x in jax.tree.leaves(params))
    minimum = n * (0.5 * X_STAR**2 + np.sin(X_STAR))
    start, end = float(loss(params)), float(loss(final))
    gap = (end - minimum) / (start - minimum)
    assert end < start
    assert float(step_norms[-1]) <= 1e-3 * float(step_norms[0]) or gap <= 0.1, (gap, step_norms)


X_STAR = -0.7390851332151607  # the root of x + cos(x) = 0: the minimizer of x²/2 + sin(x)
