"""optareg.min_max_norm against Keras' MinMaxNorm formula (numpy float64 oracle)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optareg


def keras_min_max_norm(w, min_value, max_value, rate, axis=0):
    """Keras ``MinMaxNorm.__call__`` in numpy float64, without its ``1e-7`` (a zero unit is 0)."""
    norms = np.sqrt(np.sum(np.square(w), axis=axis, keepdims=True))
    desired = rate * np.clip(norms, min_value, max_value) + (1 - rate) * norms
    return np.where(norms > 0, w * desired / np.where(norms > 0, norms, 1), 0.0)


def _kernel(seed=0):
    """A Dense kernel (in=6, out=6) whose unit (column) norms are 0, 0.1, 0.7, 1, 3 and 50."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((6, 6))
    w *= np.array([0.0, 0.1, 0.7, 1.0, 3.0, 50.0]) / np.linalg.norm(w, axis=0)
    return w


def _step(tx, params):
    zero = jax.tree.map(jnp.zeros_like, params)
    updates, state = tx.update(zero, tx.init(params), params)
    return optax.apply_updates(params, updates), state


@pytest.mark.parametrize("rate", [1.0, 0.5])
def test_matches_keras_formula_float64(rate):
    w = _kernel()
    with jax.enable_x64(True):
        new, state = _step(optareg.min_max_norm(0.5, 1.0, rate), {"kernel": jnp.asarray(w)})
        got = np.asarray(new["kernel"])
        metric = float(optareg.metrics(state)["min_max_norm/on_boundary"])
    want = keras_min_max_norm(w, 0.5, 1.0, rate)
    np.testing.assert_allclose(got, want, rtol=1e-14, atol=0)
    np.testing.assert_array_equal(got[:, 0], 0.0)  # the zero unit stays zero
    np.testing.assert_array_equal(got[:, 2], w[:, 2])  # inside [0.5, 1]: bit for bit
    # active bounds: the zero unit and 0.1 (below 0.5), 1 (on the sphere), 3 and 50 (above)
    assert metric == pytest.approx(5 / 6)


def test_matches_keras_formula_float32_and_torch_layout():
    w = _kernel(1)
    new, _ = _step(optareg.min_max_norm(0.5, 2.0, 0.5), {"kernel": jnp.asarray(w, jnp.float32)})
    np.testing.assert_allclose(new["kernel"], keras_min_max_norm(w, 0.5, 2.0, 0.5), rtol=2e-6)
    # torch layout (out, in): units are rows, i.e. Keras' axis=1
    new, _ = _step(
        optareg.min_max_norm(0.5, 2.0, 0.5, layout="torch"), {"weight": jnp.asarray(w.T)}
    )
    np.testing.assert_allclose(
        new["weight"], keras_min_max_norm(w.T, 0.5, 2.0, 0.5, axis=1), rtol=2e-6
    )


def test_rate_one_and_zero_min_is_max_norm():
    rng = np.random.default_rng(2)
    params = {"kernel": jnp.asarray(rng.standard_normal((5, 7)) * 3, jnp.float32)}
    a, _ = _step(optareg.min_max_norm(0.0, 1.5), params)
    b, _ = _step(optareg.max_norm(1.5), params)
    np.testing.assert_array_equal(a["kernel"], b["kernel"])


def test_stack_axes_and_masked_vector():
    w = np.stack([_kernel(3), 0.1 * _kernel(4)])  # two layers of a scanned stack
    new, _ = _step(optareg.min_max_norm(0.5, 1.0, stack_axes=1), {"kernel": jnp.asarray(w)})
    for layer in range(2):
        np.testing.assert_allclose(
            new["kernel"][layer], keras_min_max_norm(w[layer], 0.5, 1.0, 1.0), rtol=2e-6
        )
    # a masked-in vector: one unit per entry, |w_i| clipped into [min, max], signs kept
    v = jnp.array([-3.0, -0.2, 0.0, 0.7, 5.0])
    tx = optareg.min_max_norm(0.5, 1.0, mask={"bias": True})
    new, _ = _step(tx, {"bias": v})
    np.testing.assert_array_equal(new["bias"], np.float32([-1.0, -0.5, 0.0, 0.7, 1.0]))
    # without a mask, vectors pass through
    new, _ = _step(optareg.min_max_norm(0.5, 1.0), {"bias": v})
    np.testing.assert_array_equal(new["bias"], v)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"min_value": -0.1}, "min_value"),
        ({"max_value": 0.0}, "max_value"),
        ({"min_value": 2.0, "max_value": 1.0}, "min_value"),
        ({"rate": 0.0}, "rate"),
        ({"rate": 1.5}, "rate"),
        ({"layout": "keras"}, "layout"),
        ({"stack_axes": -1}, "stack_axes"),
    ],
)
def test_validation(kwargs, name):
    with pytest.raises(ValueError, match=name):
        optareg.min_max_norm(**kwargs)
