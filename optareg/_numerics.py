"""Numerical helpers shared by every family: dtypes, exact rescaling, safe division, counts.

One home for each guard so that they cannot drift apart:

* :func:`compute_dtype` / :func:`upcast`: operators run in the promoted dtype, at least float32;
* :func:`pow2_scale` / :func:`max_abs_scale` / :func:`div_by_scale`: exact rescaling by a power
  of two (or a safe ``max|x|``), so squares and Gram matrices never overflow;
* :func:`safe_inv`: ``1/n`` where ``n > 0``, else 0 (a zero vector is never divided by zero);
* :func:`zero_counts` / :func:`nonfinite_counts` / :func:`zeros_fraction`: exact counts in the
  forms XLA compiles to memory speed (see ``bench/suite_stats.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

__all__ = [
    "compute_dtype",
    "div_by_scale",
    "matrix_transpose",
    "max_abs_scale",
    "nonfinite_counts",
    "nonzero_count",
    "pow2_scale",
    "safe_inv",
    "upcast",
    "zero_counts",
    "zeros_fraction",
]


def compute_dtype(*xs: Any) -> jnp.dtype:
    """The dtype an operator runs in: the promoted dtype of ``xs``, at least float32."""
    return jnp.promote_types(jnp.result_type(*xs), jnp.float32)


def upcast(x: jax.Array) -> jax.Array:
    """``x`` in its compute dtype (bf16/f16 → float32; float32/float64 unchanged)."""
    return x.astype(compute_dtype(x))


def matrix_transpose(x: jax.Array) -> jax.Array:
    """Swap the last two axes (a batch of matrices transposed)."""
    return jnp.swapaxes(x, -1, -2)


def safe_inv(n: jax.Array, eps: Any = 0.0) -> jax.Array:
    """``1/(n + eps)`` where ``n > 0``, else 0."""
    return jnp.where(n > 0, 1.0 / (n + eps), 0.0)


def pow2_scale(x: jax.Array, axis: Any = None) -> jax.Array:
    """A power of two ``≥ max|x|`` over ``axis`` (keepdims; 1 where that max is 0 or not finite).

    Dividing by it is exact in the normal range and puts every entry in ``[-1, 1]``, so squares,
    Gram matrices and matrix-vector products of entries up to the dtype's max/4 cannot overflow,
    and the result of a scale-equivariant computation is recovered by multiplying back.
    """
    amax = jnp.max(jnp.abs(x), axis=axis, keepdims=True)
    ok = (amax > 0) & jnp.isfinite(amax)
    e = jnp.ceil(jnp.log2(jnp.where(ok, amax, 1))).astype(jnp.int32)
    e = jnp.clip(e, -126, 127)
    return jax.lax.stop_gradient(jnp.where(ok, jnp.ldexp(jnp.ones_like(amax), e), 1))


def max_abs_scale(x: jax.Array, axis: Any = (-2, -1)) -> jax.Array:
    """``max|x|`` over ``axis`` (keepdims), replaced by 1 where it is 0 or not finite."""
    a = jnp.max(jnp.abs(x), axis=axis, keepdims=True)
    return jnp.where((a > 0) & jnp.isfinite(a), a, jnp.ones_like(a))


def div_by_scale(x: jax.Array, a: jax.Array) -> jax.Array:
    """``x / a`` as two divisions by ``√a``: XLA may compute ``x/a`` as ``x·(1/a)``, and for
    ``a`` near the float maximum ``1/a`` is subnormal and flushed to zero."""
    r = jnp.sqrt(a)
    return (x / r) / r


# --------------------------------------------------------------------------------------------
# exact counts at memory speed
# --------------------------------------------------------------------------------------------


def nonzero_count(x: jax.Array) -> jax.Array:
    """Σ|sign(x)| in float32: the number of non-zero entries, NaN if ``x`` holds a NaN.

    Arithmetic rather than a summed predicate: XLA's CPU backend vectorizes a sum of floats but
    not a sum of booleans (``bench/suite_stats.py`` measures both forms).
    """
    return jnp.sum(jnp.abs(jnp.sign(x)), dtype=jnp.float32)


def zero_counts(leaves: Sequence[jax.Array]) -> list[jax.Array]:
    """Number of exact zeros of each leaf, as float32 scalars.

    One vectorized pass per leaf; only when some leaf holds a NaN does a ``lax.cond`` recount all
    of them exactly with comparisons (a NaN is not a zero).
    """
    leaves = list(leaves)
    if not leaves:
        return []
    fast = jnp.stack([x.size - nonzero_count(x) for x in leaves])

    def exact(leaves):
        return jnp.stack([jnp.sum(x == 0, dtype=jnp.float32) for x in leaves])

    counts = jax.lax.cond(jnp.any(jnp.isnan(fast)), exact, lambda _: fast, leaves)
    return [counts[i] for i in range(len(leaves))]


def nonfinite_counts(
    leaves: Sequence[jax.Array], probe: jax.Array | None = None
) -> list[jax.Array]:
    """Number of NaN/Inf entries of each leaf, as int32 scalars.

    A cheap probe decides whether the exact count is needed: by default Σ x·0 per leaf (0 when
    every entry is finite, NaN otherwise); a caller that already has the per-leaf Σx² passes it
    as ``probe`` (it is finite only if every entry is). The exact count runs behind one
    ``lax.cond``.
    """
    leaves = list(leaves)
    if not leaves:
        return []
    if probe is None:
        probe = jnp.stack([jnp.sum(x * 0, dtype=jnp.float32) for x in leaves])
    probe = jnp.where(jnp.isfinite(probe), 0.0, jnp.nan)

    def exact(leaves):
        return jnp.stack([jnp.sum(~jnp.isfinite(x), dtype=jnp.int32) for x in leaves])

    def none(_):
        return jnp.zeros([len(leaves)], jnp.int32)

    counts = jax.lax.cond(jnp.any(jnp.isnan(probe)), exact, none, leaves)
    return [counts[i] for i in range(len(leaves))]


def zeros_fraction(leaves: Sequence[jax.Array]) -> jax.Array:
    """Fraction of exact zeros over all entries of ``leaves`` (0 for no entries)."""
    leaves = list(leaves)
    total = sum(int(x.size) for x in leaves)
    if total == 0:
        return jnp.zeros([], jnp.float32)
    return (sum(zero_counts(leaves)) / total).astype(jnp.float32)
