"""optareg.metrics over a chain holding every family that records metrics.

One optimizer: ``track("raw")`` → ``sam_perturb`` → Adam with ``add_decayed_weights`` →
``prox_l1`` → ``track("after_prox")`` → ``spectral_clip(method="power")`` → ``track("step")``.
``metrics()`` must return exactly the keys each module defines (read from their
``optareg_metrics``), the same at init and at every jitted step, and the numbers recorded by two
different families must agree where they measure the same thing.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

import optareg

TRACK = (
    "grad_norm",
    "param_norm",
    "update_norm",
    "update_ratio",
    "sparsity",
    "nonfinite",
    "applied_update_ratio",
    "lost_update_fraction",
)
MATRICES = ("dense1/kernel", "dense2/kernel")


def make_params():
    rng = np.random.default_rng(0)
    return {
        "dense1": {
            "kernel": jnp.asarray(rng.normal(size=(8, 16)) * 0.5, jnp.float32),
            "bias": jnp.zeros(16, jnp.float32),
        },
        "dense2": {
            "kernel": jnp.asarray(rng.normal(size=(16, 3)) * 0.5, jnp.float32),
            "bias": jnp.zeros(3, jnp.float32),
        },
    }


rng = np.random.default_rng(1)
X = jnp.asarray(rng.normal(size=(32, 8)), jnp.float32)
Y = jnp.asarray(rng.integers(0, 3, size=32), jnp.int32)


def loss(p):
    h = jax.nn.relu(X @ p["dense1"]["kernel"] + p["dense1"]["bias"])
    logits = h @ p["dense2"]["kernel"] + p["dense2"]["bias"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, Y).mean()


def make_tx(lr=1e-2):
    return optax.chain(optareg.track(name="raw"), optareg.sam_perturb(0.05), after_sam(lr))


def after_sam(lr=1e-2):
    return optax.chain(
        optax.scale_by_adam(),
        optareg.add_decayed_weights(1e-2, mask=optareg.masks.decay_mask),
        optax.scale_by_learning_rate(lr),
        optareg.prox_l1(0.5, lr),
        optareg.track(name="after_prox"),
        optareg.spectral_clip(1.5, method="power"),
        optareg.track(name="step", per_leaf=True),
    )


EXPECTED = (
    {"sam_perturb/grad_norm", "sam_perturb/perturbed_grad_norm", "sam_perturb/cos"}
    | {"prox_l1/zeros_fraction", "prox_l1/penalty"}
    | {f"spectral_clip/sigma/{m}" for m in MATRICES}
    | {"spectral_clip/sigma_max"}
    | {f"{n}/{k}" for n in ("raw", "after_prox", "step") for k in TRACK}
    | {
        f"step/{k}/{leaf}"
        for k in TRACK
        for leaf in ("dense1/bias", "dense1/kernel", "dense2/bias", "dense2/kernel")
    }
)


def test_metrics_keys_and_cross_family_agreement():
    tx = make_tx()
    params = make_params()
    state = tx.init(params)
    assert set(optareg.metrics(state)) == EXPECTED

    @jax.jit
    def step(params, state):
        g = jax.grad(loss)(params)
        u, state = tx.update(g, state, params, grad_fn=jax.grad(loss))
        return optax.apply_updates(params, u), state, optareg.metrics(state), g

    for _ in range(5):
        new_params, state, m, g = step(params, state)
        assert set(m) == EXPECTED
        assert all(v.shape == () for v in m.values())
        chex.assert_tree_all_finite(m)
        # sam_perturb and track both measure the raw gradient's norm
        np.testing.assert_allclose(m["sam_perturb/grad_norm"], m["raw/grad_norm"], rtol=1e-6)
        g_np = np.sqrt(sum(np.sum(np.asarray(x, np.float64) ** 2) for x in jax.tree.leaves(g)))
        np.testing.assert_allclose(float(m["raw/grad_norm"]), g_np, rtol=1e-5)
        # prox_l1's produced zeros are the zeros the pass-through right after it sees
        np.testing.assert_allclose(m["prox_l1/zeros_fraction"], m["after_prox/sparsity"], rtol=1e-6)
        # float32 weights take every step: nothing is lost to rounding, the applied change is
        # the update up to one rounding of θ + u
        assert float(m["step/lost_update_fraction"]) == 0.0
        np.testing.assert_allclose(
            m["step/applied_update_ratio"], m["step/update_ratio"], rtol=1e-4
        )
        # the last track measures the final step actually applied
        new = np.concatenate([np.ravel(x) for x in jax.tree.leaves(new_params)])
        np.testing.assert_allclose(float(m["step/sparsity"]), np.mean(new == 0), rtol=1e-6)
        sig = [float(m[f"spectral_clip/sigma/{k}"]) for k in MATRICES]
        assert float(m["spectral_clip/sigma_max"]) == max(sig)
        params = new_params
    assert float(m["prox_l1/zeros_fraction"]) > 0  # the L1 step did produce zeros


def test_metrics_keys_inside_multisteps_and_inject_hyperparams():
    # sam_perturb goes outside MultiSteps (inside it raises: it would see the last micro-batch's
    # grad_fn); everything after it is accumulated and injected
    inner = optax.MultiSteps(optax.inject_hyperparams(after_sam)(lr=1e-2), every_k_schedule=2)
    tx = optax.chain(optareg.track(name="raw"), optareg.sam_perturb(0.05), inner)
    params = make_params()
    state = tx.init(params)
    update = jax.jit(lambda g, s, p: tx.update(g, s, p, grad_fn=jax.grad(loss)))
    for _ in range(4):
        u, state = update(jax.grad(loss)(params), state, params)
        assert set(optareg.metrics(state)) == EXPECTED
        params = optax.apply_updates(params, u)
