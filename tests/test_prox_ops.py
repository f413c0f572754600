"""Tests of the proximal operators in optareg.operators against closed forms, jaxopt and SVD."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import jaxopt
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from optareg.operators import (
    elastic_net_threshold,
    group_soft_threshold,
    singular_value_threshold,
    soft_threshold,
)

# ---------------------------------------------------------------------------------------------
# golden vectors (written by hand)
# ---------------------------------------------------------------------------------------------


def test_soft_threshold_golden():
    y = soft_threshold(jnp.array([1.0, 3.0, -0.5, -2.5]), 2.0)
    np.testing.assert_array_equal(y, [0.0, 1.0, 0.0, -0.5])
    assert not np.any(np.signbit(np.asarray(y)[[0, 2]]))  # +0.0, not -0.0


def test_group_soft_threshold_golden():
    x = jnp.array([[3.0, 4.0], [0.1, 0.1]])
    y = group_soft_threshold(x, 1.0, axis=0)  # row j is group j, |g| = 2, ‖row 1‖ = 5
    np.testing.assert_allclose(y[0], (1 - np.sqrt(2) / 5) * np.array([3.0, 4.0]), rtol=1e-6)
    np.testing.assert_array_equal(y[1], [0.0, 0.0])


def test_group_soft_threshold_axis_meaning():
    # axis=-1 on (in, out): group j = column j (incoming weights of unit j), |g| = in = 3.
    x = jnp.array([[1.0, 0.1], [2.0, 0.1], [2.0, 0.1]])  # column norms 3 and ~0.17
    y = group_soft_threshold(x, 0.5, axis=-1)
    np.testing.assert_allclose(y[:, 0], (1 - 0.5 * np.sqrt(3) / 3) * x[:, 0], rtol=1e-6)
    np.testing.assert_array_equal(y[:, 1], 0.0)
    # 1-D: every entry its own group, i.e. soft thresholding.
    v = jnp.array([1.0, -3.0, 0.2])
    np.testing.assert_array_equal(group_soft_threshold(v, 0.5), soft_threshold(v, 0.5))


def test_elastic_net_golden():
    y = elastic_net_threshold(jnp.array([1.0, 3.0, -0.5, -2.5]), 2.0, 1.0)
    np.testing.assert_array_equal(y, [0.0, 0.5, 0.0, -0.25])


def test_svt_golden():
    y = singular_value_threshold(jnp.diag(jnp.array([3.0, 1.0, 0.5])), 0.75)
    np.testing.assert_allclose(y, np.diag([2.25, 0.25, 0.0]), atol=1e-6)


# ---------------------------------------------------------------------------------------------
# against jaxopt and an SVD reference
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tau", [0.0, 0.3, 1.7])
def test_soft_threshold_equals_jaxopt(tau):
    x = jnp.asarray(np.random.default_rng(0).normal(size=(7, 5)), jnp.float32)
    np.testing.assert_allclose(
        soft_threshold(x, tau), jaxopt.prox.prox_lasso(x, tau), rtol=1e-6, atol=1e-7
    )
    # jaxopt's (l1reg, scaling) form: threshold = l1reg · scaling.
    np.testing.assert_allclose(
        soft_threshold(x, tau), jaxopt.prox.prox_lasso(x, tau / 2, scaling=2.0), atol=1e-6
    )


@pytest.mark.parametrize(("tau1", "tau2"), [(0.3, 0.5), (1.0, 2.0), (0.01, 0.0)])
def test_elastic_net_equals_jaxopt(tau1, tau2):
    # jaxopt: argmin ½‖x−y‖² + s·λ(‖y‖₁ + γ/2‖y‖²) → τ₁ = s·λ, τ₂ = s·λ·γ, so γ = τ₂/τ₁.
    x = jnp.asarray(np.random.default_rng(1).normal(size=(11,)), jnp.float32)
    ref = jaxopt.prox.prox_elastic_net(x, (tau1, tau2 / tau1))
    np.testing.assert_allclose(elastic_net_threshold(x, tau1, tau2), ref, rtol=1e-6, atol=1e-7)
    ref2 = jaxopt.prox.prox_elastic_net(x, (tau1 / 4, tau2 / tau1), scaling=4.0)
    np.testing.assert_allclose(elastic_net_threshold(x, tau1, tau2), ref2, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("tau", [0.1, 0.9, 5.0])
def test_group_soft_threshold_one_group_equals_jaxopt(tau):
    # One group: shape (1, d) grouped along axis 0, |g| = d; jaxopt's block threshold has no √|g|.
    d = 6
    x = jnp.asarray(np.random.default_rng(2).normal(size=(1, d)), jnp.float32)
    ref = jaxopt.prox.prox_group_lasso(x[0], tau * np.sqrt(d))
    np.testing.assert_allclose(group_soft_threshold(x, tau, axis=0)[0], ref, rtol=1e-6, atol=1e-7)


def test_group_soft_threshold_many_groups_equals_jaxopt_vmapped():
    x = jnp.asarray(np.random.default_rng(3).normal(size=(4, 5, 3)), jnp.float32)
    tau = 0.4
    ours = group_soft_threshold(x, tau, axis=1)
    blocks = jnp.moveaxis(x, 1, 0).reshape(5, -1)
    ref = jax.vmap(lambda b: jaxopt.prox.prox_group_lasso(b, tau * np.sqrt(12)))(blocks)
    ref = jnp.moveaxis(ref.reshape(5, 4, 3), 0, 1)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)


def _svt_reference(x, tau):
    u, s, vh = np.linalg.svd(np.asarray(x, np.float64), full_matrices=False)
    return (u * np.maximum(s - tau, 0)[..., None, :]) @ vh


@pytest.mark.parametrize("shape", [(5, 3), (3, 5), (4, 4), (2, 3, 6, 4)])
def test_svt_equals_svd_reference_float64(shape):
    x = np.random.default_rng(4).normal(size=shape)
    tau = 1.0
    with jax.enable_x64(True):
        y = singular_value_threshold(jnp.asarray(x), tau)
        assert y.dtype == jnp.float64
        np.testing.assert_allclose(np.asarray(y), _svt_reference(x, tau), atol=1e-12)


def test_svt_kills_rank_and_float32_close():
    x = np.random.default_rng(5).normal(size=(6, 4)).astype(np.float32)
    s = np.linalg.svd(x, compute_uv=False)
    tau = float((s[1] + s[2]) / 2)
    y = singular_value_threshold(jnp.asarray(x), tau)
    assert y.dtype == jnp.float32
    assert np.linalg.matrix_rank(np.asarray(y, np.float64), tol=1e-4) == 2
    np.testing.assert_allclose(y, _svt_reference(x, tau), atol=1e-5)
    np.testing.assert_array_equal(singular_value_threshold(jnp.asarray(x), s[0] + 1), 0.0)


def test_svt_rejects_vectors():
    with pytest.raises(ValueError, match="ndim >= 2"):
        singular_value_threshold(jnp.ones(3), 1.0)


def test_group_axis_validation():
    with pytest.raises(TypeError, match="axis"):
        group_soft_threshold(jnp.ones((2, 2)), 1.0, axis=0.5)
    with pytest.raises(ValueError, match="axis"):
        group_soft_threshold(jnp.ones((2, 2)), 1.0, axis=2)


# ---------------------------------------------------------------------------------------------
# jit / vmap / grad safety
# ---------------------------------------------------------------------------------------------

OPS = {
    "l1": lambda x: soft_threshold(x, 0.5),
    "enet": lambda x: elastic_net_threshold(x, 0.5, 0.3),
    "group": lambda x: group_soft_threshold(x, 0.5, axis=0),
    "group_last": lambda x: group_soft_threshold(x, 0.5, axis=-1),
    "svt": lambda x: singular_value_threshold(x, 0.5),
}


@pytest.mark.parametrize("name", list(OPS))
def test_grad_finite_at_zero(name):
    op = OPS[name]
    x0 = jnp.zeros((3, 4))
    g = jax.grad(lambda x: jnp.sum(op(x) ** 2 + op(x)))(x0)
    assert np.all(np.isfinite(g))
    np.testing.assert_array_equal(g, 0.0)  # the prox is 0 in a neighbourhood of 0
    # Also where only one group has norm 0 (the other groups are kept).
    x1 = x0.at[0].set(jnp.array([1.0, 2.0, 3.0, 4.0])).at[:, 0].set(jnp.array([5.0, 6, 7]))
    x1 = x1.at[1:, 1:].set(0.0)
    g1 = jax.grad(lambda x: jnp.sum(op(x) ** 2))(x1)
    assert np.all(np.isfinite(g1))


@pytest.mark.parametrize("name", list(OPS))
def test_jit_and_vmap_match_eager(name):
    op = OPS[name]
    x = jnp.asarray(np.random.default_rng(6).normal(size=(5, 3, 4)), jnp.float32)
    eager = jnp.stack([op(xi) for xi in x])
    np.testing.assert_allclose(jax.jit(jax.vmap(op))(x), eager, rtol=1e-5, atol=1e-6)


def test_grads_match_finite_differences_float64():
    rng = np.random.default_rng(7)
    with jax.enable_x64(True):
        for name, op in OPS.items():
            x = jnp.asarray(rng.normal(size=(4, 3)))
            dx = jnp.asarray(rng.normal(size=(4, 3)))
            _, jvp = jax.jvp(op, (x,), (dx,))
            h = 1e-6
            fd = (op(x + h * dx) - op(x - h * dx)) / (2 * h)
            np.testing.assert_allclose(np.asarray(jvp), np.asarray(fd), atol=1e-6, err_msg=name)


def test_svt_grad_at_repeated_singular_values():
    # X = 2·Q (all singular values equal 2); SVT is differentiable there (τ = 0.5 ≠ 2).
    with jax.enable_x64(True):
        q, _ = np.linalg.qr(np.random.default_rng(8).normal(size=(4, 4)))
        x = jnp.asarray(2.0 * q)
        dx = jnp.asarray(np.random.default_rng(9).normal(size=(4, 4)))
        op = OPS["svt"]
        _, jvp = jax.jvp(op, (x,), (dx,))
        h = 1e-6
        fd = (op(x + h * dx) - op(x - h * dx)) / (2 * h)
        np.testing.assert_allclose(np.asarray(jvp), np.asarray(fd), atol=1e-6)
        g = jax.grad(lambda x: jnp.sum(jnp.sin(op(x))))(x)
        assert np.all(np.isfinite(np.asarray(g)))


def test_grad_wrt_tau():
    x = jnp.array([1.0, 3.0, -0.5, -2.5])
    g = jax.grad(lambda t: jnp.sum(soft_threshold(x, t)))(2.0)
    np.testing.assert_allclose(g, -1.0 + 1.0)  # d/dτ: −sign(x) on the survivors 3 and −2.5
    with jax.enable_x64(True):
        m = jnp.diag(jnp.array([3.0, 1.0]))
        gt = jax.grad(lambda t: jnp.sum(singular_value_threshold(m, t)))(0.5)
        np.testing.assert_allclose(gt, -2.0)


@pytest.mark.parametrize("name", ["l1", "enet", "group", "svt"])
def test_dtypes_kept_and_zeros_exact_bf16(name):
    x = jnp.asarray(np.random.default_rng(10).normal(size=(4, 6)), jnp.bfloat16)
    y = OPS[name](x * 0.1)  # all small: thresholded away
    assert y.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(y, np.float32), 0.0)
    y = OPS[name](x)
    assert y.dtype == jnp.bfloat16
    assert np.all(np.isfinite(np.asarray(y, np.float32)))


def test_per_coordinate_and_infinite_tau():
    x = jnp.array([1.0, -2.0, 3.0])
    np.testing.assert_array_equal(soft_threshold(x, jnp.array([0.5, 3.0, jnp.inf])), [0.5, 0, 0])
    g = jax.grad(lambda x: jnp.sum(soft_threshold(x, jnp.inf)))(jnp.zeros(3))
    np.testing.assert_array_equal(g, 0.0)
    # τ = inf zeroes ±inf too (x − clip(x) alone is inf − inf = NaN there); finite τ keeps them
    big = jnp.array([jnp.inf, -jnp.inf, 1.0, jnp.nan])
    out = np.asarray(soft_threshold(big, jnp.inf))
    np.testing.assert_array_equal(out[:3], [0.0, 0.0, 0.0])
    assert np.isnan(out[3])  # NaN stays NaN
    np.testing.assert_array_equal(soft_threshold(big[:2], 2.0), [jnp.inf, -jnp.inf])
    g = jax.grad(lambda x: jnp.sum(soft_threshold(x, jnp.inf)))(big[:3])
    np.testing.assert_array_equal(g, 0.0)


# ---------------------------------------------------------------------------------------------
# property tests (hypothesis)
# ---------------------------------------------------------------------------------------------

_floats = st.floats(-10, 10, allow_nan=False, allow_infinity=False, width=64)
_mat = hnp.arrays(np.float64, st.tuples(st.integers(1, 4), st.integers(1, 4)), elements=_floats)
_tau = st.floats(0.0, 5.0, allow_nan=False, width=64)


@functools.partial(jax.jit, static_argnums=0)  # one compile per shape, not per primitive
def _prox(name, x, tau):
    if name == "l1":
        return soft_threshold(x, tau)
    if name == "enet":
        return elastic_net_threshold(x, tau, 0.5 * tau)
    if name == "group0":
        return group_soft_threshold(x, tau, axis=0)
    if name == "group1":
        return group_soft_threshold(x, tau, axis=1)
    return singular_value_threshold(x, tau)


PROX_NAMES = ["l1", "enet", "group0", "group1", "svt"]


@pytest.mark.parametrize("name", PROX_NAMES)
@given(data=st.data())
def test_firmly_nonexpansive(name, data):
    x = data.draw(_mat)
    y = data.draw(hnp.arrays(np.float64, x.shape, elements=_floats))
    tau = data.draw(_tau)
    with jax.enable_x64(True):
        px = np.asarray(_prox(name, jnp.asarray(x), tau))
        py = np.asarray(_prox(name, jnp.asarray(y), tau))
    d = px - py
    assert np.sum(d * d) <= np.sum(d * (x - y)) + 1e-9 * (1 + np.sum((x - y) ** 2))


@given(x=hnp.arrays(np.float64, st.integers(1, 12), elements=_floats), tau=_tau)
def test_moreau_identity_l1(x, tau):
    # x = prox_{τ‖·‖₁}(x) + τ·prox_{g*/τ}(x/τ), g* = indicator of the ℓ∞ unit ball (a projection).
    tau = max(tau, 1e-3)
    with jax.enable_x64(True):
        p = np.asarray(soft_threshold(jnp.asarray(x), tau))
    proj = np.clip(x / tau, -1.0, 1.0)
    np.testing.assert_allclose(p + tau * proj, x, atol=1e-12)


def _dual_and_value(name, r, p, tau):
    """(dual norm of r / τ, ⟨r, p⟩, τ·g(p)) for the norm g of each operator."""
    if name in ("l1", "enet"):
        return np.max(np.abs(r)), np.sum(r * p), tau * np.sum(np.abs(p))
    if name.startswith("group"):
        axis = int(name[-1])
        others = 1 - axis
        size = p.shape[others]
        rn = np.sqrt(np.sum(r * r, axis=others)) / np.sqrt(size)
        pn = np.sqrt(np.sum(p * p, axis=others)) * np.sqrt(size)
        return np.max(rn), np.sum(r * p), tau * np.sum(pn)
    return (
        np.linalg.norm(r, 2),
        np.sum(r * p),
        tau * np.sum(np.linalg.svd(p, compute_uv=False)),
    )


@pytest.mark.parametrize("name", PROX_NAMES)
@given(x=_mat, tau=_tau)
def test_optimality_condition(name, x, tau):
    # x − prox(x) ∈ τ∂g(prox(x)) ⇔ g°(r) ≤ τ and ⟨r, p⟩ = τ g(p) (g a norm, g° its dual norm);
    # for the elastic net the ridge part is moved to the left: r = x − (1 + τ₂)p.
    with jax.enable_x64(True):
        p = np.asarray(_prox(name, jnp.asarray(x), tau))
    r = x - p * (1 + 0.5 * tau) if name == "enet" else x - p
    dual, inner, value = _dual_and_value(name, r, p, tau)
    scale = 1 + np.abs(x).max()
    assert dual <= tau + 1e-9 * scale
    assert abs(inner - value) <= 1e-8 * scale * (1 + np.abs(p).sum())


@pytest.mark.parametrize("name", PROX_NAMES)
@given(x=_mat, t1=_tau, t2=_tau)
def test_zero_count_monotone_in_tau(name, x, t1, t2):
    lo, hi = sorted((t1, t2))
    with jax.enable_x64(True):
        p_lo = np.asarray(_prox(name, jnp.asarray(x), lo))
        p_hi = np.asarray(_prox(name, jnp.asarray(x), hi))
    if name == "svt":  # the count of zero singular values: rank is non-increasing in τ
        r_lo = np.linalg.matrix_rank(p_lo, tol=1e-9)
        r_hi = np.linalg.matrix_rank(p_hi, tol=1e-9)
        assert r_hi <= r_lo
    else:
        assert np.all(p_hi[p_lo == 0] == 0)  # zeros stay zeros, hence the count is monotone
        assert np.sum(p_hi == 0) >= np.sum(p_lo == 0)
