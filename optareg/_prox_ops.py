"""Proximal operators (implementation; public in :mod:`optareg.operators`).

Each operator solves ``prox_{τg}(x) = argmin_y ½‖x − y‖² + τ·g(y)`` for one penalty ``g`` on one
array. All are pure and jit-, vmap- and grad-safe: zeros are produced *exactly* (``== 0.0``) and
the gradient is finite everywhere, also at ``x = 0`` and at groups of norm 0.
"""

from __future__ import annotations

import operator

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

__all__ = [
    "elastic_net_threshold",
    "group_norms_after_threshold",
    "group_soft_threshold",
    "singular_value_threshold",
    "soft_threshold",
]


def _float(x):
    """``x`` as a floating array (integers promote to float32; float dtypes are kept)."""
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.float32)
    return x


def _check_threshold(name: str, tau) -> None:
    """A threshold given as a Python / NumPy number or array must be >= 0 (inf allowed), not NaN.

    JAX arrays and tracers are not inspected (no device sync on the hot path).
    """
    if isinstance(tau, bool) or not isinstance(tau, (int, float, np.number, np.ndarray)):
        return
    t = np.asarray(tau, np.float64)
    if np.isnan(t).any() or (t < 0).any():
        raise ValueError(f"`{name}` must be >= 0 (inf allowed) and not NaN; got {tau!r}.")


def _param(t, dtype):
    """A threshold / strength cast to the operator's dtype (keeps its shape for broadcasting)."""
    return jnp.asarray(t).astype(dtype)


def soft_threshold(x: jax.Array, tau: ArrayLike) -> jax.Array:
    r"""Soft thresholding, the proximal map of ``τ‖·‖₁``: ``sign(x)·max(|x| − τ, 0)``.

    .. math::

        \operatorname{prox}_{\tau\|\cdot\|_1}(x)_i = \operatorname{sign}(x_i)\,\max(|x_i|-\tau, 0)

    Computed as ``x − clip(x, −τ, τ)``, which is bit-identical to the formula above for
    ``|x| > τ`` and gives an exact ``+0.0`` for ``|x| ≤ τ`` (never ``-0.0`` or a tiny residue).
    ``τ`` may be an array broadcastable to ``x`` (per-coordinate thresholds) and may be ``inf``
    (the coordinate is zeroed, ``x = ±inf`` included; no NaN, also in the gradient). The
    gradient is ``1{|x| > τ}``, finite at ``x = 0``.

    Args:
      x: input array (any shape; float dtypes are kept, integers become float32).
      tau: threshold ``τ ≥ 0``, a scalar or an array broadcastable to ``x``.

    Returns:
      An array of ``x``'s shape and (floating) dtype.

    Example:
      >>> import jax.numpy as jnp
      >>> from optareg.operators import soft_threshold
      >>> soft_threshold(jnp.array([1.0, 3.0, -0.5, -2.5]), 2.0)
      Array([ 0. ,  1. ,  0. , -0.5], dtype=float32)

    References:
      Donoho, "De-noising by soft-thresholding", IEEE Trans. Inf. Theory, 1995.
      Parikh & Boyd, "Proximal Algorithms", Found. Trends Optim., 2014, §6.5.2.
    """
    _check_threshold("tau", tau)
    x = _float(x)
    tau = _param(tau, x.dtype)
    # the select only matters for x = ±inf with τ = inf (inf − inf); elsewhere it is a no-op
    return jnp.where(jnp.abs(x) <= tau, jnp.zeros_like(x), x - jnp.clip(x, -tau, tau))


def elastic_net_threshold(x: jax.Array, tau_l1: ArrayLike, tau_l2: ArrayLike) -> jax.Array:
    r"""Proximal map of ``τ₁‖·‖₁ + (τ₂/2)‖·‖²``: ``soft_threshold(x, τ₁) / (1 + τ₂)``.

    .. math::

        \operatorname{prox}(x) = \frac{\operatorname{sign}(x)\max(|x|-\tau_1, 0)}{1+\tau_2}

    Args:
      x: input array.
      tau_l1: L1 threshold ``τ₁ ≥ 0`` (scalar or broadcastable array).
      tau_l2: ridge strength ``τ₂ ≥ 0`` (scalar or broadcastable array).

    Returns:
      An array of ``x``'s shape and (floating) dtype; exact zeros where ``|x| ≤ τ₁``.

    Example:
      >>> import jax.numpy as jnp
      >>> from optareg.operators import elastic_net_threshold
      >>> elastic_net_threshold(jnp.array([1.0, 3.0, -0.5, -2.5]), 2.0, 1.0)
      Array([ 0.  ,  0.5 ,  0.  , -0.25], dtype=float32)

    References:
      Zou & Hastie, "Regularization and variable selection via the elastic net", JRSS-B, 2005.
    """
    _check_threshold("tau_l1", tau_l1)
    _check_threshold("tau_l2", tau_l2)
    x = _float(x)
    # Multiply by the reciprocal: the same rounding whether τ₂ is a traced value or a constant
    # XLA folds (bit-identical under optax.inject_hyperparams).
    return soft_threshold(x, tau_l1) * (1 / (1 + _param(tau_l2, x.dtype)))


def _normalize_axis(axis, ndim: int) -> int:
    if isinstance(axis, bool) or not hasattr(axis, "__index__"):
        raise TypeError(f"`axis` must be an int; got {type(axis).__name__} {axis!r}.")
    axis = operator.index(axis)
    if not -ndim <= axis < ndim:
        raise ValueError(
            f"`axis` must be in [-{ndim}, {ndim}) for an array of ndim {ndim}; got {axis}."
        )
    return axis % ndim


def group_soft_threshold(x: jax.Array, tau: ArrayLike, axis: int = -1) -> jax.Array:
    r"""Group soft thresholding, the proximal map of ``τ·Σ_g √|g|·‖x_g‖``.

    .. math::

        \operatorname{prox}(x)_g = \max\!\Big(1 - \frac{\tau\sqrt{|g|}}{\|x_g\|_2},\, 0\Big)\, x_g

    Group ``j`` is the slice ``x[..., j, ...]`` at index ``j`` along ``axis`` (all other axes), so
    ``|g| = x.size / x.shape[axis]``; with ``axis=-1`` on a Dense kernel of shape ``(in, out)``
    each group holds the incoming weights of one output unit. On a 1-D array every entry is its
    own group (``|g| = 1``) and this is :func:`soft_threshold`; a 0-d array is one group of one.
    A group of norm 0 maps to 0 (not NaN); a group whose norm is ``≤ τ√|g|`` becomes exactly 0.
    The norm uses the double-``where`` trick, so the gradient is finite (zero) at such groups.

    Args:
      x: input array.
      tau: threshold ``τ ≥ 0`` (a scalar).
      axis: the axis that indexes the groups (a static int).

    Returns:
      An array of ``x``'s shape and (floating) dtype.

    Example:
      >>> import jax.numpy as jnp
      >>> from optareg.operators import group_soft_threshold
      >>> group_soft_threshold(jnp.array([[3.0, 4.0], [0.1, 0.1]]), 1.0, axis=0)
      Array([[2.1514719, 2.8686292],
             [0.       , 0.       ]], dtype=float32)

    References:
      Yuan & Lin, "Model selection and estimation in regression with grouped variables",
      JRSS-B, 2006.
    """
    _check_threshold("tau", tau)
    x = _float(x)
    if x.ndim == 0:
        return soft_threshold(x, tau)
    keep, scale, _ = _group_shrink(x, tau, axis)
    return jnp.where(keep, scale * x, jnp.zeros_like(x))


def _group_shrink(x: jax.Array, tau, axis: int):
    """``(keep, scale, norm)`` of every group (keepdims over the axes that are not ``axis``).

    One reduction over ``x`` (the squared group norms); the rest is per group. Shared by
    :func:`group_soft_threshold` and :func:`group_norms_after_threshold`, so that under ``jit``
    XLA computes it once when both are asked for the same ``x`` and ``tau``.
    """
    axis = _normalize_axis(axis, x.ndim)
    others = tuple(i for i in range(x.ndim) if i != axis)
    group_size = x.size // x.shape[axis] if x.shape[axis] else 1
    tau = _param(tau, x.dtype) * jnp.sqrt(jnp.asarray(group_size, x.dtype))
    sq = jnp.sum(jnp.square(x), axis=others, keepdims=True)
    positive = sq != 0  # NaN counts as positive: a NaN group stays NaN (never silently zeroed)
    norm = jnp.sqrt(jnp.where(positive, sq, 1))  # safe: never sqrt(0) on the gradient path
    keep = positive & ~(norm <= tau)
    scale = jnp.where(keep, 1 - tau / norm, 0)
    return keep, scale, norm


def group_norms_after_threshold(x: jax.Array, tau: ArrayLike, axis: int = -1) -> jax.Array:
    r"""``Σ_g √|g|·‖y_g‖`` for ``y = group_soft_threshold(x, τ, axis)``, without forming ``y``.

    ``‖y_g‖ = max(1 − τ√|g|/‖x_g‖, 0)·‖x_g‖`` from the group norms of ``x`` (the group-lasso
    penalty of the thresholded array, at the cost of a few operations per group).
    """
    x = _float(x)
    if x.ndim == 0:
        return jnp.abs(soft_threshold(x, tau))
    keep, scale, norm = _group_shrink(x, tau, axis)
    group_size = x.size // x.shape[_normalize_axis(axis, x.ndim)] if x.size else 1
    return jnp.sqrt(jnp.asarray(group_size, x.dtype)) * jnp.sum(jnp.where(keep, scale * norm, 0))


def _svt_primal(x, tau):
    u, s, vh = jnp.linalg.svd(x, full_matrices=False)
    fs = jnp.maximum(s - tau, 0)
    return u, s, vh, fs


@jax.custom_jvp
def _svt(x, tau):
    u, _, vh, fs = _svt_primal(x, tau)
    return (u * fs[..., None, :]) @ vh


def _mT(a):
    return jnp.swapaxes(a, -1, -2)


@_svt.defjvp
def _svt_jvp(primals, tangents):
    # Derivative of the spectral function Y = U f(Σ) Vᵀ with f(σ) = max(σ − τ, 0) (Lewis &
    # Sendov): with dP = Uᵀ dX V, S/A its symmetric/antisymmetric parts,
    #   dY = U (D1∘S + D2∘A) Vᵀ + (I − UUᵀ) dX V diag(f/σ) Vᵀ + U diag(f/σ) Uᵀ dX (I − VVᵀ),
    # D1_ij = (f_i − f_j)/(σ_i − σ_j) (→ f'(σ_i) when equal), D2_ij = (f_i + f_j)/(σ_i + σ_j)
    # (→ f'(0) when both are 0). Both lie in [0, 1]: no division by a vanishing gap, so the
    # derivative is finite and correct also at repeated singular values and at X = 0.
    x, tau = primals
    dx, dtau = tangents
    u, s, vh, fs = _svt_primal(x, tau)
    y = (u * fs[..., None, :]) @ vh
    v = _mT(vh)
    ut = _mT(u)
    identity = tau <= 0  # f(σ) = σ on σ ≥ 0: SVT is the identity
    above = (s > tau) | identity
    si, sj = s[..., :, None], s[..., None, :]
    fi, fj = fs[..., :, None], fs[..., None, :]
    ai, aj = above[..., :, None], above[..., None, :]
    gap = si - sj
    nz_gap = gap != 0
    d1 = jnp.where(nz_gap, (fi - fj) / jnp.where(nz_gap, gap, 1), 0)
    d1 = jnp.where(ai & aj, 1, jnp.where(~ai & ~aj, 0, jnp.clip(d1, 0, 1)))
    ssum = si + sj
    nz_sum = ssum > 0
    d2 = jnp.where(nz_sum, (fi + fj) / jnp.where(nz_sum, ssum, 1), identity.astype(s.dtype))
    d2 = jnp.clip(d2, 0, 1)
    nz_s = s > 0
    ratio = jnp.where(nz_s, fs / jnp.where(nz_s, s, 1), identity.astype(s.dtype))
    utdx = ut @ dx
    dxv = dx @ v
    dp = utdx @ v
    sym = 0.5 * (dp + _mT(dp))
    anti = 0.5 * (dp - _mT(dp))
    inner = d1 * sym + d2 * anti
    dy = u @ inner @ vh
    dy = dy + ((dxv - u @ dp) * ratio[..., None, :]) @ vh
    dy = dy + (u * ratio[..., None, :]) @ (utdx - dp @ vh)
    # d/dτ: −U diag(1{σ > τ}) Vᵀ.
    dtau = jnp.asarray(dtau, s.dtype)
    dy = dy - dtau * ((u * (s > tau).astype(s.dtype)[..., None, :]) @ vh)
    return y, dy


def singular_value_threshold(x: jax.Array, tau: ArrayLike) -> jax.Array:
    r"""Singular value thresholding, the proximal map of the nuclear norm ``τ‖·‖_*``.

    .. math::

        \operatorname{prox}_{\tau\|\cdot\|_*}(X)
        = U\,\operatorname{diag}(\max(\sigma-\tau,0))\,V^\top
        \quad\text{for } X = U\operatorname{diag}(\sigma)V^\top

    Acts on the last two axes; leading axes are batched (each trailing matrix is thresholded on
    its own). Runs in at least float32 (an SVD in bfloat16 is not available) and returns ``x``'s
    dtype. A matrix whose singular values are all ``≤ τ`` maps to exact zeros.

    Gradient guarantee: the JVP is a closed form (Lewis–Sendov derivative of a spectral
    function) that never divides by a gap between singular values, so gradients are finite
    everywhere (including ``X = 0``, rank-deficient and repeated singular values) and equal the
    true derivative wherever SVT is differentiable, i.e. wherever no singular value equals ``τ``
    exactly; at ``σ_i = τ`` it returns the one-sided value with ``f'(τ) = 0``.

    Args:
      x: array with ``ndim ≥ 2``.
      tau: threshold ``τ ≥ 0`` (a scalar).

    Returns:
      An array of ``x``'s shape and dtype.

    Example:
      >>> import jax.numpy as jnp
      >>> from optareg.operators import singular_value_threshold
      >>> singular_value_threshold(jnp.diag(jnp.array([3.0, 1.0])), 2.0)
      Array([[1., 0.],
             [0., 0.]], dtype=float32)

    References:
      Cai, Candès & Shen, "A Singular Value Thresholding Algorithm for Matrix Completion",
      SIAM J. Optim., 2010.
      Lewis & Sendov, "Twice differentiable spectral functions", SIAM J. Matrix Anal. Appl., 2001.
    """
    _check_threshold("tau", tau)
    x = _float(x)
    if x.ndim < 2:
        raise ValueError(
            f"singular_value_threshold: `x` must have ndim >= 2 (a matrix or a batch of "
            f"matrices); got shape {x.shape}."
        )
    dt = jnp.promote_types(x.dtype, jnp.float32)
    if x.size == 0:
        return x
    xd = x.astype(dt)
    # SVT is scale-equivariant, svt(x, τ) = s·svt(x/s, τ/s): with s a power of two >= max|x|
    # (exact scaling) the SVD cannot overflow for entries up to the dtype's max/4.
    amax = jnp.max(jnp.abs(xd))
    ok = (amax > 0) & jnp.isfinite(amax)
    e = jnp.clip(jnp.ceil(jnp.log2(jnp.where(ok, amax, 1))), -126, 127).astype(jnp.int32)
    s = jax.lax.stop_gradient(jnp.where(ok, jnp.ldexp(jnp.ones_like(amax), e), 1))
    y = _svt(xd / s, jnp.asarray(tau).astype(dt) / s) * s
    return y.astype(x.dtype)
