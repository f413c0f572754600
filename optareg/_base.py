"""Shared machinery for every optareg transform.

Three pieces live here, and every family module uses them instead of rolling its own:

* **Argument validation** (:func:`check_scalar`, :func:`check_choice`, :func:`check_int`,
  :func:`check_mask`): a bad argument is a ``ValueError`` (or ``TypeError``) at construction that
  names the argument and the allowed range, never a NaN three steps later.
* **Schedules** (:func:`evaluate`): a strength is an ``optax.ScalarOrSchedule``; a schedule is
  evaluated on the transform's own int32 step counter, which saturates (``optax.safe_increment``).
* **Post-step transforms** (:func:`post_step_updates`, :func:`post_step_transformation`): an
  operator ``P`` applied to the would-be new parameters, returned as an update
  ``u' = P(θ + u) − θ`` so that ``optax.apply_updates`` lands exactly on ``P(θ + u)``; exact zeros
  produced by ``P`` survive because ``θ + (0 − θ) == 0`` in floating point.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

ScalarOrSchedule = optax.ScalarOrSchedule
MaskOrFn = Any  # a pytree (or prefix) of bools, or a callable params -> such a pytree

NO_PARAMS_MSG = (
    "{name}: `params` is None. This transform needs the current parameters: call "
    "`tx.update(updates, state, params)`. Post-step transforms also go last in `optax.chain`."
)

__all__ = [
    "NO_PARAMS_MSG",
    "PostStepState",
    "check_choice",
    "check_int",
    "check_mask",
    "check_scalar",
    "evaluate",
    "is_concrete",
    "post_step_transformation",
    "post_step_updates",
    "require_params",
]


# --------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------


def is_concrete(value: Any) -> bool:
    """True when ``value`` can be read as a Python number now (not a tracer)."""
    if isinstance(value, jax.core.Tracer):
        return False
    try:
        float(jnp.asarray(value).reshape(-1)[0]) if jnp.size(value) else None
    except (jax.errors.ConcretizationTypeError, TypeError):
        return False
    return True


def _describe_range(low, high, low_inclusive, high_inclusive) -> str:
    parts = []
    if low is not None:
        parts.append(f"{'>=' if low_inclusive else '>'} {low}")
    if high is not None:
        parts.append(f"{'<=' if high_inclusive else '<'} {high}")
    return "a finite number " + " and ".join(parts) if parts else "a finite number"


def _check_number(name, x, low, high, low_inclusive, high_inclusive, where=""):
    allowed = _describe_range(low, high, low_inclusive, high_inclusive)
    arr = jnp.asarray(x)
    if arr.ndim != 0:
        raise ValueError(f"`{name}` must be a scalar{where}; got an array of shape {arr.shape}.")
    v = float(arr)
    bad = not math.isfinite(v)
    if low is not None and (v < low or (v == low and not low_inclusive)):
        bad = True
    if high is not None and (v > high or (v == high and not high_inclusive)):
        bad = True
    if bad:
        raise ValueError(f"`{name}` must be {allowed}{where}; got {v!r}.")


def check_scalar(
    name: str,
    value: Any,
    *,
    low: float | None = 0.0,
    high: float | None = None,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
    allow_schedule: bool = True,
) -> None:
    """Validate a strength, learning rate or other real hyperparameter at construction.

    Constants (Python numbers, NumPy or concrete JAX scalars) are checked now. A schedule is
    checked by evaluating it at step 0, when that gives a concrete number (a value equal to an
    exclusive lower bound is allowed there, for warmups that start at 0); values at later steps
    are the schedule's responsibility. Traced values (``optax.inject_hyperparams`` under ``jit``)
    cannot be checked and are accepted.

    Raises:
      TypeError: ``value`` is neither a number nor (where allowed) a callable schedule.
      ValueError: ``value`` is outside the allowed range, NaN or infinite. The message names the
        argument and the allowed range.
    """
    if callable(value):
        if not allow_schedule:
            raise TypeError(f"`{name}` must be a number, not a schedule; got {value!r}.")
        try:
            v0 = value(jnp.zeros([], jnp.int32))
        except Exception as e:  # noqa: BLE001 - any failure here is the user's schedule
            raise ValueError(f"`{name}` is a schedule that fails at step 0: {e}") from e
        if is_concrete(v0):
            # A schedule may start at the bound (a warmup from 0); it may not start beyond it.
            _check_number(name, v0, low, high, True, high_inclusive, " (schedule at step 0)")
        return
    if isinstance(value, (bool, str, bytes)) or value is None:
        raise TypeError(
            f"`{name}` must be a number{' or a schedule' if allow_schedule else ''}; "
            f"got {type(value).__name__} {value!r}."
        )
    if isinstance(value, jax.core.Tracer):
        return
    try:
        arr = jnp.asarray(value)
    except TypeError as e:
        raise TypeError(f"`{name}` must be a number; got {type(value).__name__}.") from e
    if not jnp.issubdtype(arr.dtype, jnp.number):
        raise TypeError(f"`{name}` must be a real number; got dtype {arr.dtype}.")
    if not is_concrete(arr):
        return
    _check_number(name, arr, low, high, low_inclusive, high_inclusive)


def check_int(name: str, value: Any, *, low: int | None = 0, high: int | None = None) -> int:
    """Validate an integer hyperparameter (number of iterations, patience, period)."""
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise TypeError(f"`{name}` must be an integer; got {type(value).__name__} {value!r}.")
    v = int(value.__index__())
    if (low is not None and v < low) or (high is not None and v > high):
        rng = " and ".join(
            p for p in (f">= {low}" if low is not None else "", f"<= {high}" if high else "") if p
        )
        raise ValueError(f"`{name}` must be an integer {rng}; got {v}.")
    return v


def check_choice(name: str, value: Any, choices: Sequence[str]) -> str:
    """Validate a method / norm / mode name against the allowed strings."""
    if not isinstance(value, str) or value not in choices:
        allowed = ", ".join(repr(c) for c in choices)
        raise ValueError(f"`{name}` must be one of {allowed}; got {value!r}.")
    return value


def check_mask(name: str, mask: Any) -> None:
    """Validate a mask argument at construction: None, a callable, or a pytree of bools."""
    if mask is None or callable(mask):
        return
    for leaf in jax.tree.leaves(mask):
        if callable(leaf):
            continue
        if not isinstance(leaf, (bool, jnp.bool_)) and not (
            hasattr(leaf, "dtype") and jnp.asarray(leaf).dtype == jnp.bool_
        ):
            raise TypeError(
                f"`{name}` must be a pytree of booleans (True = apply) or a callable returning "
                f"one; found a leaf of type {type(leaf).__name__}."
            )


def check_mask_matches(name: str, mask: Any, params: Any) -> None:
    """At ``init``: a pytree mask must be a prefix of the params tree (optax semantics)."""
    if mask is None:
        return
    tree = mask(params) if callable(mask) else mask
    try:
        jax.tree.map(lambda m, p: None, tree, params)
    except (ValueError, TypeError) as e:
        raise ValueError(
            f"`{name}`: the mask's tree structure does not match the params (it must be the "
            f"same tree or a prefix of it).\n  mask:   {jax.tree.structure(tree)}\n  params: "
            f"{jax.tree.structure(params)}"
        ) from e


def is_params_placeholder(x: Any) -> bool:
    """True for the placeholder that ``optax.tree.map_params`` passes to ``init``."""
    return type(x).__name__ == "_ParamsPlaceholder"


def require_params(params: Any, name: str) -> None:
    """Raise the standard error when a transform that needs params got none."""
    if params is None:
        raise ValueError(NO_PARAMS_MSG.format(name=name))


# --------------------------------------------------------------------------------------------
# schedules and counters
# --------------------------------------------------------------------------------------------


def evaluate(value: ScalarOrSchedule, count: jax.Array) -> Any:
    """The value of a constant or schedule at step ``count``."""
    return value(count) if callable(value) else value


def init_count() -> jax.Array:
    """A fresh int32 step counter (shape ``()``)."""
    return jnp.zeros([], jnp.int32)


increment = optax.safe_increment


# --------------------------------------------------------------------------------------------
# post-step transforms: u' = P(θ + u) − θ
# --------------------------------------------------------------------------------------------


def _is_none(x):
    return x is None


def compute_dtype(*xs: jax.Array) -> jnp.dtype:
    """The dtype an operator runs in: the promoted dtype, at least float32."""
    return jnp.promote_types(jnp.result_type(*xs), jnp.float32)


def post_step_updates(
    leaf_fn: Callable[..., Any],
    updates: Any,
    params: Any,
    *rest: Any,
    select: Callable[[jax.Array], bool] | None = None,
    has_aux: bool = False,
) -> Any:
    """Apply an operator after the step, leaf by leaf, and return it as an update.

    For each leaf, ``x = θ + u`` is formed in (at least) float32, ``y = leaf_fn(x, *rest_leaves)``
    and the returned update is ``(y − θ)`` cast to the update's dtype, so that
    ``optax.apply_updates(θ, u')`` equals ``y``; an exact zero in ``y`` stays exactly zero.

    Args:
      leaf_fn: ``leaf_fn(x, *rest)`` returning ``y`` (or ``(y, aux)`` when ``has_aux``).
      updates: the incoming updates (the signed step).
      params: the current parameters θ.
      *rest: further pytrees with the structure of ``params`` passed leaf by leaf.
      select: static predicate on the parameter leaf; leaves it rejects pass through unchanged
        (their ``aux`` is ``None``).
      has_aux: whether ``leaf_fn`` returns an auxiliary value per leaf.

    Returns:
      The new updates (and, with ``has_aux``, a tree of the auxiliary values).
    """

    def one(u, p, *r):
        if u is None:
            return (None, None) if has_aux else None
        if select is not None and not select(p):
            return (u, None) if has_aux else u
        dt = compute_dtype(p, u)
        p32 = p.astype(dt)
        out = leaf_fn(p32 + u.astype(dt), *r)
        y, aux = out if has_aux else (out, None)
        new_u = (y.astype(dt) - p32).astype(u.dtype)
        return (new_u, aux) if has_aux else new_u

    if not has_aux:
        return jax.tree.map(one, updates, params, *rest, is_leaf=_is_none)
    pairs = jax.tree.map(one, updates, params, *rest, is_leaf=_is_none)
    treedef = jax.tree.structure(updates, is_leaf=_is_none)
    flat = treedef.flatten_up_to(pairs)
    new_u = treedef.unflatten([f[0] for f in flat])
    aux = treedef.unflatten([f[1] for f in flat])
    return new_u, aux


class PostStepState(NamedTuple):
    """State of a stateless-operator post-step transform.

    Attributes:
      count: int32 step counter of shape ``()`` on which the schedules are evaluated.
      stats: scalar statistics of the last step, keyed ``"<name>/<stat>"``
        (read with :func:`optareg.metrics`).
    """

    count: jax.Array  # int32, shape ()
    stats: dict[str, jax.Array]

    def optareg_metrics(self) -> dict[str, jax.Array]:
        return dict(self.stats)


def post_step_transformation(
    operator: Callable[..., jax.Array],
    *,
    name: str,
    hyperparams: Mapping[str, ScalarOrSchedule] | None = None,
    mask: MaskOrFn = None,
    select: Callable[[jax.Array], bool] | None = None,
    stats: Mapping[str, Callable[[Sequence[jax.Array]], jax.Array]] | None = None,
) -> optax.GradientTransformationExtraArgs:
    """Turn an operator ``P(x, **hyperparams)`` into a post-step transform.

    The transform returns ``P(θ + u) − θ`` on every selected leaf, so it goes **last** in an
    ``optax.chain``; ``optax.apply_updates`` then lands on ``P(θ + u)`` exactly.

    Args:
      operator: ``operator(x, **hp)`` for one leaf, where ``hp`` holds the current values of
        ``hyperparams`` (constants or schedules evaluated on this transform's own counter).
      name: the transform's name, used in error messages and as the metrics prefix.
      hyperparams: name → constant or schedule.
      mask: optax mask semantics (pytree/prefix of bools or callable; ``True`` = apply); the
        transform is wrapped in ``optax.masked``. Leaves masked out pass through unchanged.
      select: static per-leaf predicate used in addition to the mask (e.g. "matrices only").
      stats: name → reducer over the list of new selected leaves ``y``; each result is recorded
        as a scalar ``"<name>/<stat>"`` in the state for :func:`optareg.metrics`.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` (extra keyword arguments are ignored).
    """
    hyperparams = dict(hyperparams or {})
    stats = dict(stats or {})

    def empty_stats():
        return {f"{name}/{k}": jnp.zeros([], jnp.float32) for k in stats}

    def init_fn(params):
        del params
        return PostStepState(count=init_count(), stats=empty_stats())

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args
        require_params(params, name)
        hp = {k: evaluate(v, state.count) for k, v in hyperparams.items()}
        new_updates = post_step_updates(lambda x: operator(x, **hp), updates, params, select=select)
        new_stats = empty_stats()
        if stats:
            ys = [
                p + u
                for u, p in zip(jax.tree.leaves(new_updates), jax.tree.leaves(params), strict=True)
                if select is None or select(p)
            ]
            for k, fn in stats.items():
                new_stats[f"{name}/{k}"] = jnp.asarray(fn(ys), jnp.float32)
        return new_updates, PostStepState(count=increment(state.count), stats=new_stats)

    tx = optax.GradientTransformationExtraArgs(init_fn, update_fn)
    return masked_if(tx, mask)


def masked_if(tx: optax.GradientTransformation, mask: MaskOrFn) -> Any:
    """``optax.masked(tx, mask)`` when a mask is given, else ``tx`` (with extra-args support)."""
    if mask is None:
        return optax.with_extra_args_support(tx)
    masked = optax.masked(tx, mask)

    def init_fn(params):
        if not is_params_placeholder(params):
            check_mask_matches("mask", mask, params)
        return masked.init(params)

    return optax.GradientTransformationExtraArgs(init_fn, masked.update)


# --------------------------------------------------------------------------------------------
# small reductions shared by stats and diagnostics
# --------------------------------------------------------------------------------------------


def _nonzero_fast(x: jax.Array) -> jax.Array:
    """Σ|sign(x)| in float32: the count of non-zero entries, NaN if ``x`` holds a NaN.

    Written as arithmetic rather than a comparison because XLA's CPU backend vectorizes a sum of
    floats but not a sum of predicates (measured: ~6 ms vs ~40 ms on 10M entries).
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
    fast = jnp.stack([x.size - _nonzero_fast(x) for x in leaves])

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


def global_norm(tree: Any) -> jax.Array:
    """Euclidean norm over all leaves, accumulated in float32 (0 for an empty tree)."""
    leaves = [x for x in jax.tree.leaves(tree) if x is not None]
    if not leaves:
        return jnp.zeros([], jnp.float32)
    sq = sum(jnp.sum(jnp.square(x.astype(compute_dtype(x)))) for x in leaves)
    return jnp.sqrt(sq)
