"""The bounds the spectral docstrings state, measured by float64 SVDs.

* one Adam step from a 64×64 N(0, 1) matrix with σ_max = 16c, per method;
* every step of 300 Adam steps on a 64-64-64-10 MLP on scikit-learn digits, per method (the
  power method's three phases, and its spectrum collapse against "exact");
* the Equinox MLP 64-128-128-128-10 scenario (400 steps of adam(3e-4)) with the defaults.

Each run is one jitted ``lax.scan`` (init included) whose parameter history is checked
afterwards, so a run costs one compilation. BLAS is held to one thread: on a loaded machine
OpenBLAS's spinning threads made a 128×128 ``eigh`` 30× slower (427 ms against 15 ms).
"""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optareg

C = 1.0


@pytest.fixture(scope="module", autouse=True)
def _one_blas_thread():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    # threadpoolctl limits the libraries loaded so far: load jax's LAPACK (scipy's OpenBLAS) first
    jax.block_until_ready(jnp.linalg.eigh(jnp.eye(2)))
    with threadpoolctl.threadpool_limits(1, user_api="blas"):
        yield


def sigma_max(x) -> np.ndarray:
    """σ_max of the last two axes, in float64."""
    return np.linalg.svd(np.asarray(x, np.float64), compute_uv=False)[..., 0]


def svals(x) -> np.ndarray:
    return np.linalg.svd(np.asarray(x, np.float64), compute_uv=False)


# ---------------------------------------------------------------------------------------------
# one step from far outside the ball
# ---------------------------------------------------------------------------------------------

STEP1_TOL = {"exact": 1e-5, "newton_schulz": 2e-3, "power": 3e-3}  # as the docstrings state


@pytest.mark.parametrize("method", list(STEP1_TOL))
def test_one_step_from_sixteen_times_outside(method):
    tx = optareg.chain(optax.adam(1e-3), optareg.spectral_clip(C, method=method))

    @jax.jit
    def one_step(params, grads):
        u, _ = tx.update(grads, tx.init(params), params)
        return optax.apply_updates(params, u)

    worst = -np.inf
    for seed in range(5):
        rng = np.random.default_rng(seed)
        w = rng.normal(size=(64, 64))
        params = {"w": jnp.asarray(w / sigma_max(w) * 16 * C, jnp.float32)}
        grads = {"w": jnp.asarray(rng.normal(size=(64, 64)), jnp.float32)}
        worst = max(worst, sigma_max(one_step(params, grads)["w"]) / C - 1)
    print(f"{method}: after one step from σ_max = 16c, σ_max/c − 1 ≤ {worst:.2e}")
    assert worst <= STEP1_TOL[method]


def test_exact_from_any_start():
    """One projection from σ_max/c between 2 and 1e30 (more passes where the first is far)."""
    rng = np.random.default_rng(9)
    for k in (2.0, 16.0, 1e3, 1e5, 1e30):
        w = rng.normal(size=(48, 80))
        y = optareg.operators.spectral_clip_matrix(jnp.asarray(w / sigma_max(w) * k, jnp.float32))
        assert sigma_max(y) <= 1 + 1e-5, k


# ---------------------------------------------------------------------------------------------
# 300 Adam steps on an MLP on digits
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits():
    datasets = pytest.importorskip("sklearn.datasets")
    x, y = datasets.load_digits(return_X_y=True)
    return jnp.asarray(x / 16.0, jnp.float32), jnp.asarray(y)


def _mlp_params(sizes=(64, 64, 64, 10), seed=0):
    keys = jax.random.split(jax.random.key(seed), len(sizes) - 1)
    return {
        f"layer{i}": {
            # std 1/√in: σ_max ≈ 2 at init, so the constraint is active from step 1
            "kernel": jax.random.uniform(k, (a, b), minval=-1.0, maxval=1.0) * np.sqrt(3 / a),
            "bias": jnp.zeros((b,)),
        }
        for i, (k, a, b) in enumerate(zip(keys, sizes[:-1], sizes[1:], strict=True))
    }


def _mlp(params, x):
    n = len(params)
    for i in range(n):
        x = x @ params[f"layer{i}"]["kernel"] + params[f"layer{i}"]["bias"]
        x = jax.nn.relu(x) if i < n - 1 else x
    return x


def train(tx, params, loss_fn, steps, kernels):
    """``steps`` steps of ``tx`` in one jitted scan; returns the losses and, per matrix, the
    float64 singular values after every step (``(steps, k)`` arrays)."""

    @jax.jit
    def run(params):
        def step(carry, _):
            params, state = carry
            loss, grads = jax.value_and_grad(loss_fn)(params)
            updates, state = tx.update(grads, state, params)
            params = optax.apply_updates(params, updates)
            return (params, state), (loss, kernels(params))

        return jax.lax.scan(step, (params, tx.init(params)), None, length=steps)[1]

    losses, history = run(params)
    return np.asarray(losses), [svals(h) for h in history]


@pytest.fixture(scope="module")
def mlp_runs(digits):  # three compiled 300-step runs: the slow part of this file
    x, y = digits

    def loss_fn(p):
        return optax.softmax_cross_entropy_with_integer_labels(_mlp(p, x), y).mean()

    def kernels(p):
        return [p[k]["kernel"] for k in sorted(p)]

    out = {}
    for method in ("exact", "newton_schulz", "power"):
        tx = optareg.chain(optax.adam(3e-4), optareg.spectral_clip(C, method=method))
        losses, sv = train(tx, _mlp_params(), loss_fn, 300, kernels)
        excess = np.max([s[:, 0] for s in sv], axis=0) / C - 1  # worst layer, per step
        ratio = min(float(s[-1, 4] / s[-1, 0]) for s in sv)
        out[method] = {"loss": float(losses[-1]), "excess": excess, "ratio": ratio}
        print(
            f"{method}: loss {losses[-1]:.3f}, σ_max/c − 1: step 1 {excess[0]:.1e}, max "
            f"{excess.max():.1e} (step {excess.argmax() + 1}), after 200 {excess[200:].max():.1e}"
            f"; min σ₅/σ₁ {ratio:.3f}"
        )
    return out


@pytest.mark.parametrize("method, tol", [("exact", 1e-5), ("newton_schulz", 1e-3)])
def test_projection_bound_at_every_step(mlp_runs, method, tol):
    assert mlp_runs[method]["excess"].max() <= tol
    assert mlp_runs[method]["ratio"] >= 0.99  # the top singular values pile up at c


def test_power_bound_in_its_three_phases(mlp_runs):
    excess = mlp_runs["power"]["excess"]
    assert excess[0] <= 3e-3  # step 1
    assert excess.max() <= 0.1  # the top singular values cross during the first ~100 steps
    assert excess[200:].max() <= 1e-3  # after warm-up


def test_power_collapses_the_spectrum_under_adam(mlp_runs):
    """The whole-matrix rescale shrinks every singular value with the largest: measured σ₅/σ₁
    0.25 and loss 2.05, against 1.00 and 1.42 for the projection."""
    power, exact = mlp_runs["power"], mlp_runs["exact"]
    assert power["ratio"] == pytest.approx(0.25, abs=0.05)
    assert exact["ratio"] >= 0.99
    assert power["loss"] == pytest.approx(2.05, abs=0.05)
    assert exact["loss"] == pytest.approx(1.42, abs=0.03)
    assert mlp_runs["newton_schulz"]["loss"] == pytest.approx(exact["loss"], rel=1e-2)


# ---------------------------------------------------------------------------------------------
# the Equinox scenario, with the defaults
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_equinox_mlp_with_the_defaults(digits):
    """Equinox MLP 64-128-128-128-10, digits, adam(3e-4), 400 steps, ``spectral_clip(1.0)``:
    the bound holds at every step, the loss is within 10% of ``method="exact"``, and no layer's
    σ₅/σ₁ falls below 0.5."""
    eqx = pytest.importorskip("equinox")
    x, y = digits
    model = eqx.nn.MLP(64, 10, 128, 3, key=jax.random.key(0))
    params, static = eqx.partition(model, eqx.is_array)

    def loss_fn(p):
        logits = jax.vmap(eqx.combine(p, static))(x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    def kernels(p):
        return [layer.weight for layer in p.layers]

    def run(**kwargs):
        tx = optareg.chain(optax.adam(3e-4), optareg.spectral_clip(1.0, **kwargs))
        return train(tx, params, loss_fn, 400, kernels)

    losses, sv = run()
    default = inspect.signature(optareg.spectral_clip).parameters["method"].default
    exact_loss = losses[-1] if default == "exact" else run(method="exact")[0][-1]
    excess = np.max([s[:, 0] for s in sv], axis=0) - 1
    ratios = [float(s[-1, 4] / s[-1, 0]) for s in sv]
    print(
        f"default ({default}): loss {losses[-1]:.3f} (exact {exact_loss:.3f}), max σ_max − 1 "
        f"{excess.max():.1e}, σ₅/σ₁ {np.round(ratios, 3)}"
    )
    assert excess.max() <= 1e-3
    assert abs(losses[-1] - exact_loss) <= 0.1 * exact_loss
    assert min(ratios) >= 0.5
