"""Numerical helpers shared by every family: dtypes, exact rescaling, safe division, counts.

One home for each guard so that they cannot drift apart:

* :func:`compute_dtype` / :func:`upcast`: operators run in the promoted dtype, at least float32;
* :func:`pow2_scale` / :func:`max_abs_scale` / :func:`div_by_scale`: exact rescaling by a power
  of two (or a safe ``max|x|``), so squares and Gram matrices never overflow;
* :func:`safe_inv`: ``1/n`` where ``n > 0``, else 0 (a zero vector is never divided by zero);
* :func:`fused_sums` / :func:`row_sums`: several statistics of a leaf (exact int32 counts and
  float sums) in one pass over it, in the forms XLA compiles to memory speed (see
  ``bench/suite_stats.py``); :func:`zero_counts` / :func:`nonfinite_counts` /
  :func:`zeros_fraction` are built on them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

__all__ = [
    "after",
    "jit_static_ints",
    "compute_dtype",
    "count_total",
    "fraction",
    "fused_sums",
    "div_by_scale",
    "matrix_transpose",
    "max_abs_scale",
    "nonfinite_counts",
    "nonzero_count",
    "pow2_scale",
    "rounded_to",
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


def rounded_to(x: jax.Array, dtype: Any) -> jax.Array:
    """``x`` rounded to ``dtype`` (narrower than ``x``'s), kept in ``x``'s dtype.

    ``x.astype(dtype).astype(x.dtype)`` is not enough under ``jit``: XLA may drop the round
    trip (excess precision is allowed by default), so a bfloat16 rounding that makes an update
    vanish would go unseen. ``lax.reduce_precision`` is kept, and rounds the same way.
    """
    dtype = jnp.dtype(dtype)
    if dtype == x.dtype or not jnp.issubdtype(dtype, jnp.floating):
        return x
    fi = jnp.finfo(dtype)
    if jnp.finfo(x.dtype).bits <= fi.bits:
        return x.astype(dtype).astype(x.dtype)
    return jax.lax.reduce_precision(x, exponent_bits=fi.nexp, mantissa_bits=fi.nmant)


def after(x: jax.Array, *deps: Any) -> jax.Array:
    """``x``, unchanged bit for bit, made data-dependent on ``deps`` (on CPU only).

    XLA orders computations only by data dependencies. On XLA:CPU two things go wrong without
    one: a statistic that reads the parameters while the (donated) parameters are updated in
    place makes XLA copy them first, and independent leaves all run side by side, each with its
    own temporary buffers. Both cost fresh memory, i.e. page faults, on every step. ``flag``
    reads one entry of each dependency and is always false (nothing is ``> inf``, NaN
    included), but XLA cannot know that; ``where(flag, 0, x)`` fuses into ``x``'s consumer.
    """
    deps = [jnp.asarray(d) for d in deps]
    scalars = [d[(0,) * d.ndim].astype(jnp.float32).reshape(1) for d in deps if d.size]
    if not scalars:
        return x
    flag = jnp.any(jnp.concatenate(scalars) > jnp.inf)

    def cpu(x, flag):
        return jnp.where(flag, jnp.zeros_like(x), x)

    if jax.device_count() > 1:  # arrays may be sharded: no cross-device dependency for this
        return x
    return jax.lax.platform_dependent(x, flag, cpu=cpu, default=lambda x, flag: x)


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
    amax = jnp.max(jnp.abs(x), axis=axis, keepdims=True, initial=0)
    ok = (amax > 0) & jnp.isfinite(amax)
    e = jnp.ceil(jnp.log2(jnp.where(ok, amax, 1))).astype(jnp.int32)
    fi = jnp.finfo(amax.dtype if _is_float(amax) else jnp.float32)
    e = jnp.clip(e, fi.minexp, fi.maxexp - 1)  # the dtype's normal range (float64's is wider)
    return jax.lax.stop_gradient(jnp.where(ok, jnp.ldexp(jnp.ones_like(amax), e), 1))


def max_abs_scale(x: jax.Array, axis: Any = (-2, -1)) -> jax.Array:
    """``max|x|`` over ``axis`` (keepdims), replaced by 1 where it is 0, subnormal or not finite.

    Subnormal: XLA:CPU flushes denormals to zero inside arithmetic, so ``x/√a`` for a
    subnormal ``a`` is ``0/0``; such a matrix is numerically zero and is left unscaled.
    """
    a = jnp.max(jnp.abs(x), axis=axis, keepdims=True, initial=0)
    tiny = jnp.finfo(a.dtype).tiny if jnp.issubdtype(a.dtype, jnp.floating) else 1
    return jnp.where((a >= tiny) & jnp.isfinite(a), a, jnp.ones_like(a))


def div_by_scale(x: jax.Array, a: jax.Array) -> jax.Array:
    """``x / a`` as two divisions by ``√a``: XLA may compute ``x/a`` as ``x·(1/a)``, and for
    ``a`` near the float maximum ``1/a`` is subnormal and flushed to zero."""
    r = jnp.sqrt(a)
    return (x / r) / r


# --------------------------------------------------------------------------------------------
# statistics in one pass: exact counts and sums at memory speed
# --------------------------------------------------------------------------------------------
#
# What XLA compiles to memory speed (measured in ``bench/suite_stats.py``, HLO inspected with
# ``jax.jit(f).lower(...).compile().as_text()``):
#
# * XLA:CPU has no multi-output fusion of reductions: every ``jnp.sum`` is its own pass over
#   the data. One *variadic* ``lax.reduce`` of several same-shaped terms over the rows is one
#   pass for all of them, and counts in it are int32 terms (``(x == 0).astype(int32)``): exact,
#   with no fallback path for NaN, ±0 or Inf.
# * XLA:CPU vectorizes such a loop only while it holds one floating-point accumulator (only
#   then is the reduction marked ``reassoc``), so several float terms are stacked into one
#   float operand ``(..., K, C)`` beside the stacked integer terms (see :func:`_sums_cpu`).
# * A reduction of a lone integer term, or of a predicate, is rewritten by XLA:CPU into a tree
#   of ``reduce-window`` passes over a *materialized* input: never emitted here (a float term
#   always rides along, and is kept alive); a lone float term of plain arithmetic goes to
#   YNNPACK (vectorized, multi-threaded).
# * Nothing here materializes an array of the input's size: on XLA:CPU every such temporary is
#   fresh memory on every step (page faults), which costs more than the arithmetic.
# * Elsewhere (GPU, TPU), and whenever arrays may be sharded (several devices: the SPMD
#   partitioner all-gathers a variadic reduction), one plain reduction per term: XLA:GPU/TPU
#   fuse sibling reductions of the same data into one pass.
#
# Subnormals count as whatever the backend's arithmetic makes of them: XLA:CPU flushes them to
# zero (FTZ/DAZ), so there a subnormal is a zero, consistently with every other operation.

_SPLIT_1D = 16384  # 1-D leaves longer than this are summed as rows of _ROW_1D entries
_ROW_1D = 4096


def _as_rows(t: jax.Array) -> jax.Array:
    """``t`` with a last axis to reduce over: the leaf's own rows (no reshape, so a sharded leaf
    keeps its sharding); a long 1-D leaf is split into rows (its partial sums stay accurate)."""
    if t.ndim == 0:
        return t.reshape(1)
    if t.ndim == 1 and t.size > _SPLIT_1D and t.size % _ROW_1D == 0:
        return t.reshape(-1, _ROW_1D)
    return t


def _is_float(t: jax.Array) -> bool:
    return jnp.issubdtype(t.dtype, jnp.floating)


def _add(a, b):
    return tuple(x + y for x, y in zip(a, b, strict=True))


def _reduce_rows(arrays: Sequence[jax.Array], slots: bool = False) -> list[jax.Array]:
    """One (variadic) reduction of same-shaped arrays over their last axis, then the sum over
    the remaining axes (all of them, or all but the trailing slot axis when ``slots``)."""
    inits = tuple(jnp.zeros([], a.dtype) for a in arrays)
    rows = jax.lax.reduce(tuple(arrays), inits, _add, (arrays[0].ndim - 1,))
    return [jnp.sum(r, axis=tuple(range(r.ndim - slots)), dtype=r.dtype) for r in rows]


def _sums_separate(terms: list[jax.Array]) -> list[jax.Array]:
    """One plain reduction per term: XLA's SPMD partitioner splits these over any sharding
    (a variadic reduction it would all-gather), and XLA:GPU/TPU fuse sibling reductions of the
    same data into one pass (multi-output fusion)."""
    return [jnp.sum(t, dtype=t.dtype) for t in terms]


def _sums_cpu(terms: list[jax.Array]) -> list[jax.Array]:
    """One pass on XLA:CPU (see the notes above); one reduction per term with several devices
    (the arrays may be sharded, and SPMD would all-gather a variadic reduction)."""
    if jax.device_count() > 1:
        return _sums_separate(terms)
    terms = [_as_rows(t) for t in terms]
    n, riders = len(terms), []  # a rider keeps XLA on the variadic form; it must be used
    if not any(_is_float(t) for t in terms):
        riders.append(terms[0].astype(jnp.float32))
    elif len(terms) > 1 and all(_is_float(t) for t in terms):
        riders.append((terms[0] != 0).astype(jnp.int32))
    sums = _packed_sums(terms + riders)
    if not riders:
        return sums
    keep = sum((x < 0) if x.dtype == jnp.int32 else (x > jnp.inf) for x in sums[n:])  # False
    return [x + jnp.asarray(keep, x.dtype) for x in sums[:n]]


def _packed_sums(terms: list[jax.Array]) -> list[jax.Array]:
    """Several float terms stacked along a new axis (``(..., K, C)``: one float operand) beside
    the stacked integer terms: each row is read once and every slot is a vectorized loop."""
    floats = [i for i, t in enumerate(terms) if _is_float(t)]
    if len(floats) <= 1:
        return _reduce_rows(terms)
    ints = [i for i in range(len(terms)) if i not in floats]
    k = max(len(floats), len(ints))

    def stack(idx):
        slots = [terms[i] for i in idx]
        slots += [jnp.zeros_like(slots[0])] * (k - len(slots))  # zero slots cost ~nothing
        return jnp.concatenate([t[..., None, :] for t in slots], axis=-2)

    f_sums, i_sums = _reduce_rows([stack(floats), stack(ints)], slots=True)
    out: list[Any] = [None] * len(terms)
    for j, i in enumerate(floats):
        out[i] = f_sums[j]
    for j, i in enumerate(ints):
        out[i] = i_sums[j]
    return out


def fused_sums(terms: Sequence[jax.Array]) -> list[jax.Array]:
    """Σ over all entries of each same-shaped term, in one pass over the data.

    Integer terms (indicators such as ``(x == 0).astype(jnp.int32)``) are summed in int32:
    exact counts, with no fallback path for NaN, ±0 or Inf. Floating terms are summed in at
    least float32 (row sums, then a sum of the rows: accurate). The forms are those XLA
    compiles to one vectorized loop over the data (see the notes above): on CPU several float
    terms are stacked into one accumulator operand, elsewhere one variadic reduction holds them
    all.

    Args:
      terms: arrays of one shape (integer or floating), usually elementwise expressions of a
        leaf that XLA fuses into the reduction.

    Returns:
      One scalar per term (int32 for integer terms, the float dtype for float terms).

    Example:
      >>> import jax.numpy as jnp
      >>> from optareg._numerics import fused_sums
      >>> x = jnp.array([[0.0, -0.0, 2.0], [jnp.nan, jnp.inf, 3.0]])
      >>> ok = jnp.isfinite(x)
      >>> zeros, bad, ssq = fused_sums([(x == 0).astype(jnp.int32), (~ok).astype(jnp.int32),
      ...                               jnp.where(ok, x, 0) ** 2])
      >>> int(zeros), int(bad), float(ssq)
      (2, 2, 13.0)
    """
    terms = [jnp.asarray(t) for t in terms]
    if not terms:
        return []
    fdt = jnp.promote_types(
        jnp.result_type(*[t for t in terms if _is_float(t)] or [jnp.float32]), jnp.float32
    )
    terms = [t.astype(fdt) if _is_float(t) else t.astype(jnp.int32) for t in terms]
    if terms[0].size == 0:
        return [jnp.zeros([], t.dtype) for t in terms]
    if terms[0].ndim == 0:
        return terms
    return jax.lax.platform_dependent(terms, cpu=_sums_cpu, default=_sums_separate)


def nonzero_count(x: jax.Array) -> jax.Array:
    """The number of entries of ``x`` that are not zero (NaN and ±Inf count), as float32.

    Exact (an int32 count in one vectorized pass, see :func:`fused_sums`); ``-0.0`` is a zero.
    """
    (count,) = fused_sums([(jnp.asarray(x) != 0).astype(jnp.int32)])
    return count.astype(jnp.float32)


def zero_counts(leaves: Sequence[jax.Array]) -> list[jax.Array]:
    """Number of exact zeros (``+0.0`` and ``-0.0``; a NaN is not a zero) of each leaf, float32.

    One pass per leaf, exact int32 counting (no fallback path, no ``lax.cond``).
    """
    return [
        fused_sums([(jnp.asarray(x) == 0).astype(jnp.int32)])[0].astype(jnp.float32) for x in leaves
    ]


def nonfinite_counts(
    leaves: Sequence[jax.Array], probe: jax.Array | None = None
) -> list[jax.Array]:
    """Number of NaN/Inf entries of each leaf, as int32 scalars.

    Without ``probe``: one exact counting pass per leaf. A caller that already has a per-leaf
    quantity that is finite only if every entry is (e.g. the per-leaf Σx²) passes it as
    ``probe``: the exact count then runs behind one ``lax.cond`` only when a probe is not finite.
    """
    leaves = list(leaves)
    if not leaves:
        return []

    def exact(leaves):
        return jnp.stack([fused_sums([(~jnp.isfinite(x)).astype(jnp.int32)])[0] for x in leaves])

    if probe is None:
        counts = exact(leaves)
    else:
        bad = jnp.any(~jnp.isfinite(jnp.asarray(probe)))
        counts = jax.lax.cond(bad, exact, lambda _: jnp.zeros([len(leaves)], jnp.int32), leaves)
    return [counts[i] for i in range(len(leaves))]


def count_total(counts: Sequence[jax.Array], total_size: int) -> jax.Array:
    """The sum of exact per-leaf int32 counts: int32 while it cannot overflow, else float32."""
    counts = [jnp.asarray(c) for c in counts]
    if not counts:
        return jnp.zeros([], jnp.int32)
    if total_size < 2**31:
        return sum(counts[1:], counts[0].astype(jnp.int32))
    return sum((c.astype(jnp.float32) for c in counts[1:]), counts[0].astype(jnp.float32))


def fraction(count: jax.Array, total: int) -> jax.Array:
    """``count / total`` as float32 (0 when ``total`` is 0)."""
    if total == 0:
        return jnp.zeros([], jnp.float32)
    return (jnp.asarray(count).astype(jnp.float32) / jnp.float32(total)).astype(jnp.float32)


def zeros_fraction(leaves: Sequence[jax.Array]) -> jax.Array:
    """Fraction of exact zeros over all entries of ``leaves`` (0 for no entries)."""
    leaves = list(leaves)
    total = sum(int(jnp.size(x)) for x in leaves)
    counts = [
        fused_sums([(jnp.asarray(x) == 0).astype(jnp.int32)])[0] for x in leaves if jnp.size(x)
    ]
    return fraction(count_total(counts, total), total)


def jit_static_ints(*argnums: int) -> Callable[[Callable], Callable]:
    """``jax.jit`` with the integer arguments ``argnums`` static, except when one is traced.

    ``optax.inject_hyperparams`` without ``static_args`` passes an iteration count as a traced
    array, which cannot be a static argument: the function is then called unjitted (inside the
    caller's trace), where the traced count is a dynamic loop bound.
    """

    def wrap(fn: Callable) -> Callable:
        jitted = jax.jit(fn, static_argnums=argnums)

        @functools.wraps(fn)
        def call(*args):
            traced = any(isinstance(args[i], jax.core.Tracer) for i in argnums if i < len(args))
            return (fn if traced else jitted)(*args)

        return call

    return wrap
