"""Where a post-step transform lands (issue 28).

* Inequality constraints hold after every step from any start: one step from 1e3, 1e4 and 1e6
  times the bound (random directions; float32, bfloat16, float64) lands inside, checked on the
  parameters ``optax.apply_updates`` returns, in numpy float64 (norms, SVD).
* Every other post-step transform lands within the landing guarantee
  ``|θ_new − P(θ + u)| ≤ ½ulp(θ) + ulp(P)`` entrywise (ulps in θ's dtype), exact zeros exact.
* The Newton–Schulz spectral clip keeps its documented bound on 300 random Gaussian matrices of
  three shapes from two generators.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optareg
from optareg import _spectral_ops

DTYPES = [jnp.float32, jnp.bfloat16, jnp.float64]
SCALES = (1e3, 1e4, 1e6)
RTOL = 1e-6  # the inequality's tolerance, relative to the bound


def _x64(dtype):
    return jax.enable_x64(dtype == jnp.float64)


def _np(x):
    return np.asarray(jnp.asarray(x).astype(jnp.float32 if x.dtype == jnp.bfloat16 else x.dtype))


def _far(dtype, shape, norm_of, bound, seed=0):
    """Params ``{"s<k>": {"kernel": θ}}`` with ``norm_of(θ) = k·bound`` (random direction) and
    updates of a tenth of that size (random direction), one leaf per scale ``k``."""
    rng = np.random.default_rng(seed)
    params, updates = {}, {}
    for k in SCALES:
        theta = rng.standard_normal(shape)
        step = rng.standard_normal(shape)
        name = f"s{int(np.log10(k))}"
        params[name] = {"kernel": jnp.asarray(theta * (k * bound / norm_of(theta)), dtype)}
        updates[name] = {"kernel": jnp.asarray(step * (0.1 * k * bound / norm_of(step)), dtype)}
    return params, updates


def _land(tx, params, updates):
    new_u, _ = jax.jit(tx.update)(updates, tx.init(params), params)
    return optax.apply_updates(params, new_u)


def _col_norms(x):
    return np.linalg.norm(x, axis=0)


def _sigma(x):
    return np.linalg.svd(x, compute_uv=False)[0]


def _leaves(tree):
    return [np.asarray(_np(x), np.float64) for x in jax.tree.leaves(tree)]


_BOX, _BALL = 0.8, 0.8

# (id, factory, measure of one landed leaf, bound, measure of the start direction, tree-wide)
_INEQUALITIES = [
    ("max_norm", lambda: optareg.max_norm(1.0), _col_norms, 1.0, _col_norms),
    ("min_max_norm", lambda: optareg.min_max_norm(0.5, 1.0), _col_norms, 1.0, _col_norms),
    ("spectral_clip", lambda: optareg.spectral_clip(1.0), _sigma, 1.0, _sigma),
    (
        "project-box",
        lambda: optareg.project(lambda t: jax.tree.map(lambda x: jnp.clip(x, -_BOX, _BOX), t)),
        lambda x: np.abs(x),
        _BOX,
        lambda x: np.max(np.abs(x)),
    ),
    (
        "project-ball-per_leaf",
        lambda: optareg.project(
            lambda x: optax.projections.projection_l2_ball(x, _BALL), per_leaf=True
        ),
        np.linalg.norm,
        _BALL,
        np.linalg.norm,
    ),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
@pytest.mark.parametrize("case", _INEQUALITIES, ids=lambda c: c[0])
def test_inequality_lands_inside_from_far_outside(case, dtype):
    _, factory, measure, bound, start_norm = case
    with _x64(dtype):
        params, updates = _far(dtype, (12, 8), start_norm, bound)
        new = _land(factory(), params, updates)
        assert jax.tree.map(lambda x: x.dtype, new) == jax.tree.map(lambda x: x.dtype, params)
        for leaf in _leaves(new):
            worst = float(np.max(measure(leaf)))
            assert worst <= bound * (1 + RTOL), worst
            assert np.all(np.isfinite(leaf))


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
def test_tree_ball_and_non_neg_land_inside(dtype):
    with _x64(dtype):
        params, updates = _far(dtype, (12, 8), np.linalg.norm, _BALL, seed=1)
        ball = optareg.project(lambda t: optax.projections.projection_l2_ball(t, _BALL))
        total = np.sqrt(sum(np.sum(x**2) for x in _leaves(_land(ball, params, updates))))
        assert total <= _BALL * (1 + RTOL), total
        # non_neg: θ and u of either sign, up to 1e6; every landed entry is >= 0 exactly
        landed = _leaves(_land(optareg.non_neg(), params, updates))
        assert min(float(x.min()) for x in landed) >= 0.0
        assert any(np.any(x == 0) for x in landed) and any(np.any(x > 0) for x in landed)


def test_inside_units_keep_their_landing():
    """Units inside the set land where the plain update lands (float32, nothing pulled in)."""
    rng = np.random.default_rng(3)
    theta = rng.standard_normal((16, 8)).astype(np.float32)
    theta *= np.float32(0.5) / np.linalg.norm(theta, axis=0).astype(np.float32)  # norms 0.5
    u = (1e-3 * rng.standard_normal((16, 8))).astype(np.float32)
    params, updates = {"kernel": jnp.asarray(theta)}, {"kernel": jnp.asarray(u)}
    x = theta + u  # float32, as optareg forms θ + u
    plain = theta + (x - theta)  # θ ⊕ (y − θ) with y = x
    for tx in (optareg.max_norm(1.0), optareg.min_max_norm(0.1, 1.0), optareg.spectral_clip(2.0)):
        np.testing.assert_array_equal(np.asarray(_land(tx, params, updates)["kernel"]), plain)


def _ulp(v, dtype):
    return np.asarray(jnp.spacing(jnp.abs(jnp.asarray(v)).astype(dtype)).astype(jnp.float32), float)


def _op_result(tx, x, dtype):
    """``P(x)`` as the transform computes it: from θ = 0 with ``u = x`` (compute dtype), the
    returned update is ``P(x)`` itself."""
    cdt = jnp.float64 if dtype == jnp.float64 else jnp.float32
    zero = jax.tree.map(lambda v: jnp.zeros(v.shape, cdt), x)
    y, _ = jax.jit(tx.update)(jax.tree.map(lambda v: v.astype(cdt), x), tx.init(zero), zero)
    return y


_GENERAL = [
    ("unit_norm", optareg.unit_norm),
    ("prox_l1", lambda: optareg.prox_l1(0.5, 1.0)),
    ("prox_group_lasso", lambda: optareg.prox_group_lasso(0.5, 1.0)),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
@pytest.mark.parametrize("case", _GENERAL, ids=lambda c: c[0])
def test_landing_guarantee(case, dtype):
    """``|θ_new − P(θ + u)| ≤ ½ulp(θ) + ulp(P)`` entrywise, exact zeros exact; from far
    (entries up to 1e6 times the unit) and from a moderate start."""
    _, factory = case
    with _x64(dtype):
        params, updates = _far(dtype, (12, 8), _col_norms, 1.0)
        params["near"] = {"kernel": params["s3"]["kernel"] / 1000}
        updates["near"] = {"kernel": updates["s3"]["kernel"] / 1000}
        tx = factory()
        new = _land(tx, params, updates)
        cdt = jnp.float64 if dtype == jnp.float64 else jnp.float32
        x = jax.tree.map(lambda p, u: p.astype(cdt) + u.astype(cdt), params, updates)
        target = _op_result(tx, x, dtype)
        for z, y, p in zip(_leaves(new), _leaves(target), _leaves(params), strict=True):
            bound = 0.5 * _ulp(p, dtype) + _ulp(y, dtype)
            assert np.all(np.abs(z - y) <= bound), float(np.max(np.abs(z - y) / bound))
            np.testing.assert_array_equal(z[y == 0], 0.0)


# --------------------------------------------------------------------------------------------
# Newton–Schulz: the documented bound, σ_max ≤ c(1 + 5e-4) one step from σ_max ≤ 16c
# --------------------------------------------------------------------------------------------

NS_BOUND = 5e-4  # docs: optareg.spectral_clip, optareg.operators.spectral_clip_matrix


def _gaussians(shape, count, scale):
    """``count`` N(0, 1) matrices, half from ``RandomState(seed).randn``, half from
    ``default_rng(seed)``, rescaled to ``σ_max = scale``."""
    mats = []
    for seed in range(count // 2):
        mats.append(np.random.RandomState(seed).randn(*shape))
        mats.append(np.random.default_rng(seed).standard_normal(shape))
    x = np.stack(mats)
    return x * (scale / _sigma_max(x))[:, None, None]


def _sigma_max(x):
    """σ_max of each matrix (float64 oracle): √ of the top eigenvalue of the short-side Gram."""
    x = np.asarray(x, np.float64)
    gram = x.transpose(0, 2, 1) @ x if x.shape[-1] <= x.shape[-2] else x @ x.transpose(0, 2, 1)
    return np.sqrt(np.linalg.eigvalsh(gram)[:, -1])


def test_newton_schulz_bound_on_random_gaussians():
    """102 matrices one step from σ_max = 16c: 34 each of 64×64, 64×256, 256×64 (two
    generators), c = 2, in one compiled call. Without the 4 extra steps on ``S`` the square
    ones reach σ_max = c(1 + 8.6e-3)."""
    c, shapes = 2.0, [(64, 64), (64, 256), (256, 64)]
    batches = tuple(jnp.asarray(_gaussians(s, 34, 16 * c), jnp.float32) for s in shapes)
    clip = jax.jit(lambda xs: [_spectral_ops.clip_newton_schulz(x, c, 8) for x in xs])
    for y in clip(batches):
        sig = _sigma_max(y)
        assert sig.max() / c - 1 <= NS_BOUND, sig.max() / c - 1
