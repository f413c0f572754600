"""``metrics_every``: the statistics every k steps, bit-identical updates, the same numbers.

For ``track``, every ``prox_*`` and ``prox_adam``: with ``metrics_every=k`` the updates are
bit-identical to ``metrics_every=1`` over 3k steps; on the steps where the transform's own
counter is a multiple of k (step 0 included) the metrics equal those of ``metrics_every=1``
bit for bit, and in between the state holds the last computed values (while the
``metrics_every=1`` values move on, so the hold is observable). Also: under ``jax.jit``,
``optax.inject_hyperparams(static_args=("metrics_every",))``, ``optax.MultiSteps``; the
argument is validated at construction; and the compiled step copies no parameters (a copy of
the donated parameters is fresh memory on every step).
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optareg

K = 3
STEPS = 3 * K
LR = 0.1


def make_params(dtype=jnp.float32):
    rng = np.random.default_rng(0)
    tree = {
        "conv": {"kernel": rng.normal(size=(3, 3, 2, 4))},
        "dense": {"bias": rng.normal(size=4) * 0.1, "kernel": rng.normal(size=(6, 4))},
        "scale": np.asarray(1.5),
    }
    return jax.tree.map(lambda x: jnp.asarray(x, dtype), tree)


def grads_at(params, t):
    """Different gradients at every step (so that every metric moves from step to step)."""
    return jax.tree.map(lambda p: 0.3 * jnp.sin(3.0 * p + t) + 0.05 * t, params)


def after_sgd(tx):
    return optax.chain(optax.sgd(LR), tx)


# id -> factory(metrics_every) -> the optimizer
CASES = {
    "track": lambda k: after_sgd(optareg.track(name="t", metrics_every=k)),
    "track-per_leaf": lambda k: after_sgd(optareg.track(per_leaf=True, metrics_every=k)),
    "track-first": lambda k: optax.chain(optareg.track(metrics_every=k), optax.sgd(LR)),
    "prox_l1": lambda k: after_sgd(optareg.prox_l1(0.5, LR, metrics_every=k)),
    "prox_elastic_net": lambda k: after_sgd(
        optareg.prox_elastic_net(0.5, 0.3, LR, metrics_every=k)
    ),
    "prox_group_lasso": lambda k: after_sgd(optareg.prox_group_lasso(1.0, LR, metrics_every=k)),
    "prox_nuclear": lambda k: after_sgd(optareg.prox_nuclear(1.0, LR, metrics_every=k)),
    "prox_adam": lambda k: optareg.prox_adam(LR, 0.05, metrics_every=k),
}


def assert_same_metrics(got, want):
    """Counts, fractions of counts and ``nonfinite`` bit for bit; norms and ratios to float32
    rounding (XLA may order a sum differently inside the ``lax.cond`` of ``metrics_every``)."""
    assert set(got) == set(want)
    for k in want:
        g, w = np.asarray(got[k]), np.asarray(want[k])
        assert g.dtype == w.dtype, k
        if re.search(r"(zeros_fraction|sparsity|nonfinite|lost_update_fraction)(/|$)", k):
            np.testing.assert_array_equal(g, w, err_msg=k)
        else:
            np.testing.assert_allclose(g, w, rtol=1e-6, atol=0, err_msg=k)


def assert_bitwise(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(
            np.atleast_1d(np.asarray(x)).view(np.uint8), np.atleast_1d(np.asarray(y)).view(np.uint8)
        )  # bitwise: NaN payloads and signed zeros included


def run_pair(tx_a, tx_b, steps=STEPS, params=None):
    """Both optimizers on the same trajectory (driven by ``tx_a``'s updates), jitted; yields
    ``(t, updates_a, updates_b, metrics_a, metrics_b)`` after every step."""
    params = make_params() if params is None else params
    step_a, step_b = jax.jit(tx_a.update), jax.jit(tx_b.update)
    s_a, s_b = tx_a.init(params), tx_b.init(params)
    keys = set(optareg.metrics(s_a))
    assert set(optareg.metrics(s_b)) == keys and keys
    for t in range(steps):
        g = grads_at(params, t)
        u_a, s_a = step_a(g, s_a, params)
        u_b, s_b = step_b(g, s_b, params)
        m_a, m_b = optareg.metrics(s_a), optareg.metrics(s_b)
        assert set(m_a) == set(m_b) == keys  # the keys never change
        yield t, u_a, u_b, m_a, m_b
        params = optax.apply_updates(params, u_a)


@pytest.mark.parametrize("case", list(CASES))
def test_every_k_is_every_step_on_its_steps_and_holds_in_between(case):
    held, moved = None, False
    for t, u1, uk, m1, mk in run_pair(CASES[case](1), CASES[case](K)):
        assert_bitwise(u1, uk)  # the updates do not change by a single bit
        if t % K == 0:  # the transform's own counter was t before this update
            assert_same_metrics(mk, m1)
            held = mk
        else:
            assert_bitwise(mk, held)
            moved |= any(not np.array_equal(np.asarray(m1[k]), np.asarray(held[k])) for k in held)
    assert moved, "the metrics never changed between steps: the hold was not tested"


@pytest.mark.parametrize("case", ["track", "prox_group_lasso", "prox_adam"])
def test_every_one_step_equals_the_default(case):
    fresh = {
        "track": lambda: after_sgd(optareg.track(name="t")),
        "prox_l1": lambda: after_sgd(optareg.prox_l1(0.5, LR)),
        "prox_group_lasso": lambda: after_sgd(optareg.prox_group_lasso(1.0, LR)),
        "prox_adam": lambda: optareg.prox_adam(LR, 0.05),
    }[case]
    for _, u_a, u_b, m_a, m_b in run_pair(fresh(), CASES[case](1), steps=2):
        assert_bitwise(u_a, u_b)
        assert_bitwise(m_a, m_b)


INJECTED = {
    "track": (
        lambda k: optax.inject_hyperparams(optareg.track, static_args=("metrics_every",))(
            metrics_every=k
        ),
        lambda k: optareg.track(metrics_every=k),
    ),
    "prox_l1": (
        lambda k: optax.inject_hyperparams(optareg.prox_l1, static_args=("metrics_every",))(
            l1=0.5, learning_rate=LR, metrics_every=k
        ),
        lambda k: optareg.prox_l1(0.5, LR, metrics_every=k),
    ),
    "prox_adam": (
        lambda k: optax.inject_hyperparams(optareg.prox_adam, static_args=("metrics_every",))(
            learning_rate=LR, l1=0.05, metrics_every=k
        ),
        lambda k: optareg.prox_adam(LR, 0.05, metrics_every=k),
    ),
}


@pytest.mark.parametrize("case", list(INJECTED))
def test_inject_hyperparams_with_static_metrics_every(case):
    injected, plain = INJECTED[case]
    wrap = (lambda tx: tx) if case == "prox_adam" else after_sgd
    for _, u_a, u_b, m_a, m_b in run_pair(wrap(plain(K)), wrap(injected(K)), steps=K + 1):
        assert_bitwise(u_a, u_b)
        assert_bitwise(m_a, m_b)


@pytest.mark.parametrize("case", ["track", "prox_l1"])
def test_inject_hyperparams_with_traced_metrics_every(case):
    """Without ``static_args`` the injected ``metrics_every`` is a traced value: the same
    updates and metrics (the ``lax.cond`` is simply always traced)."""
    injected = {
        "track": lambda: optax.inject_hyperparams(optareg.track)(metrics_every=K),
        "prox_l1": lambda: optax.inject_hyperparams(optareg.prox_l1)(
            l1=0.5, learning_rate=LR, metrics_every=K
        ),
    }[case]
    plain = INJECTED[case][1]
    for _, u_a, u_b, m_a, m_b in run_pair(after_sgd(plain(K)), after_sgd(injected()), K + 1):
        assert_bitwise(u_a, u_b)
        assert_same_metrics(m_b, m_a)


@pytest.mark.parametrize("case", ["track", "prox_l1"])
def test_inside_multisteps(case):
    """Inside ``optax.MultiSteps`` the transform's counter counts the inner (accumulated)
    updates: with k micro-steps per update, the statistics are computed on inner steps
    0, K, 2K, ... and held over the accumulating micro-steps too."""
    micro = 2
    make = {
        "track": lambda k: after_sgd(optareg.track(name="t", metrics_every=k)),
        "prox_l1": lambda k: after_sgd(optareg.prox_l1(0.5, LR, metrics_every=k)),
    }[case]
    tx1 = optax.MultiSteps(make(1), every_k_schedule=micro)
    txk = optax.MultiSteps(make(K), every_k_schedule=micro)
    held = None
    for t, u1, uk, m1, mk in run_pair(tx1, txk, steps=micro * (2 * K + 1)):
        assert_bitwise(u1, uk)
        inner = t // micro  # the inner update at the end of micro-step t
        if t % micro == micro - 1 and inner % K == 0:
            assert_same_metrics(mk, m1)
            held = mk
        elif held is not None:
            assert_bitwise(mk, held)


FACTORIES = {
    "track": lambda every: optareg.track(metrics_every=every),
    "prox_l1": lambda every: optareg.prox_l1(0.5, LR, metrics_every=every),
    "prox_elastic_net": lambda every: optareg.prox_elastic_net(0.5, 0.3, LR, metrics_every=every),
    "prox_group_lasso": lambda every: optareg.prox_group_lasso(1.0, LR, metrics_every=every),
    "prox_nuclear": lambda every: optareg.prox_nuclear(1.0, LR, metrics_every=every),
    "prox_adam": lambda every: optareg.prox_adam(LR, 0.05, metrics_every=every),
}


@pytest.mark.parametrize("name", list(FACTORIES))
@pytest.mark.parametrize(
    "bad, error",
    [(0, ValueError), (-1, ValueError), (1.5, TypeError), (True, TypeError), ("2", TypeError)],
)
def test_validation_names_metrics_every(name, bad, error):
    with pytest.raises(error, match="metrics_every"):
        FACTORIES[name](bad)


def test_track_counter_counts_every_update():
    params = make_params()
    tx = optareg.track(metrics_every=K)
    state = tx.init(params)
    assert state.count.dtype == jnp.int32 and int(state.count) == 0
    update = jax.jit(tx.update)
    for t in range(4):
        _, state = update(grads_at(params, t), state, params)
    assert int(state.count) == 4


# --------------------------------------------------------------------------------------------
# no copy of the (donated) parameters in the compiled step
# --------------------------------------------------------------------------------------------

STEP_CASES = {
    "track-last": lambda k: optax.chain(optax.adam(1e-3), optareg.track(metrics_every=k)),
    "track-first": lambda k: optax.chain(optareg.track(metrics_every=k), optax.adam(1e-3)),
    "prox_l1": lambda k: optax.chain(
        optax.adam(1e-3), optareg.prox_l1(1e-4, 1e-3, metrics_every=k)
    ),
    "prox_group_lasso": lambda k: optax.chain(
        optax.adam(1e-3), optareg.prox_group_lasso(1e-4, 1e-3, metrics_every=k)
    ),
}


@pytest.mark.parametrize("every", [1, K])
@pytest.mark.parametrize("case", list(STEP_CASES))
def test_donated_step_copies_no_parameters(case, every):
    """A statistic that reads θ while the donated θ is updated in place must be ordered before
    the update, or XLA:CPU copies θ first: a fresh params-sized buffer on every step."""
    if jax.default_backend() != "cpu" or jax.device_count() > 1:
        pytest.skip("the ordering trick is specific to single-device XLA:CPU")
    tx = STEP_CASES[case](every)
    params = {"w1": jnp.ones((64, 256)), "w2": jnp.ones((256, 64)), "b": jnp.ones(256)}

    def step(carry, grads):
        p, s = carry
        u, s = tx.update(grads, s, p)
        return optax.apply_updates(p, u), s

    carry = (params, tx.init(params))
    hlo = jax.jit(step, donate_argnums=0).lower(carry, params).compile().as_text()
    entry = hlo[hlo.index("ENTRY") :]
    copies = re.findall(r"= f32\[(\d+),(\d+)\]\{[^}]*\} copy\(", entry)
    assert not copies, f"params-sized copies in the step: {copies}"
