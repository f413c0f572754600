r"""Constraints (post-step projections) and explicit penalties (gradient-side).

Every penalty has a constrained twin. The penalized problem ``min f(θ) + λ·R(θ)`` and the
constrained problem ``min f(θ) s.t. R(θ) ≤ r`` have the same solutions for matched ``λ ↔ r``
(Lagrange duality, convex ``f`` and ``R``): the penalty fixes the price of ``R``, the constraint
fixes its budget. optareg ships both sides:

* **constraints** — post-step transforms that go **last** in the chain and return
  ``P(θ + u) − θ``, so ``optax.apply_updates`` lands on ``P(θ + u)``, the projection onto the
  feasible set (projected gradient descent with ``optax.sgd``): :func:`max_norm`,
  :func:`unit_norm`, :func:`non_neg`, and :func:`project` for any projection
  (``optax.projections``);
* **explicit penalties** — :func:`add_penalty` adds ``λ_t·∇R(θ)`` to the gradient for any
  differentiable ``R`` (ready ones in :mod:`optareg.penalties`), before the optimizer.

Units (``layout``, ``axis``): a constrained *unit* is one output feature of a layer with its
incoming weights — a column of a Flax / Haiku Dense kernel ``(in, out)``, a row of an Equinox /
PyTorch Linear weight ``(out, in)``, one output channel of a conv kernel (HWIO: last axis; OIHW:
first). ``layout="auto"`` decides per leaf from its name (``weight``: first axis; ``kernel`` /
``w``: last axis; anything else: last axis); ``"flax"`` / ``"torch"`` force the last / first axis;
``axis=k`` makes the unit the slice at each index along axis ``k`` (the norm is over all other
axes), like :func:`optareg.prox_group_lasso`'s groups. Keras' ``MaxNorm(axis=0)`` names the axes
it *reduces*; for a Dense kernel ``(in, out)`` that is ``max_norm(c, axis=-1)`` here.

Layer stacks (``stack_axes``): in a scanned or vmapped stack of layers (``nn.scan``,
``nnx.scan`` / ``nnx.vmap``, ``eqx.filter_vmap``) a kernel ``(L, in, out)`` holds ``L`` layers;
``stack_axes=1`` says so, and every layer's units are constrained on their own (a unit never
spans two layers). ``layout`` and ``axis`` then count within the per-layer array. It takes an
int (every selected leaf), a pytree prefix of the params with int / ``None`` leaves, or a
callable ``(path, leaf) -> int | None``; the default ``None`` means no stack axes (a stack is
never guessed from shapes). Without a mask the constraints act on the weight matrices only:
leaves whose per-layer rank is ``≥ 2`` and whose name is not a bias (an Equinox conv bias
``(O, 1, 1)`` included), a norm scale or an embedding (the name rules of
:func:`optareg.masks.decay_mask`).

Metrics (read with :func:`optareg.metrics`): every constraint records ``"<name>/on_boundary"``,
the fraction of units (``non_neg``: entries; ``project``: leaves) that sit on the boundary of the
feasible set after the step — the share of the constraint that is *active*; ``add_penalty``
records ``"<name>/value"`` ``= λ_t·R(θ_t)``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optareg import _chain, _counters, _masking, _numerics, _paths, _poststep, _validation

__all__ = [
    "AddPenaltyState",
    "add_penalty",
    "max_norm",
    "min_max_norm",
    "non_neg",
    "project",
    "unit_norm",
]

BOUNDARY_RTOL = 1e-6
"""Relative tolerance of ``max_norm``'s boundary test: a unit is on it if ``‖w‖ ≥ c(1 − 1e-6)``."""

_STATS = ("on_boundary",)


def _hp(value: Any, dt: Any) -> jax.Array:
    """A hyperparameter as a scalar of dtype ``dt``, opaque to XLA's constant folding (so that a
    Python-float ``max_value`` and an injected one compile to the same arithmetic)."""
    return jax.lax.optimization_barrier(jnp.asarray(value).astype(dt))


def _check_axis(axis: Any) -> int | None:
    if axis is None:
        return None
    if isinstance(axis, jax.core.Tracer):
        raise TypeError(
            "`axis` must be a static Python int, not a traced value; with "
            "`optax.inject_hyperparams` pass `static_args=('axis',)`."
        )
    return _validation.check_int("axis", axis, low=None)


def _unit_axis_fn(
    name: str, layout: str, axis: int | None
) -> Callable[[jax.Array, str], tuple[int, ...]]:
    """``leaf_axis(x, path)``: the axes that index one unit of a selected leaf — its stack axes
    (``stack_axes``, :func:`optareg._paths.layout_of`) and its unit axis (``layout`` / ``axis``
    within the per-layer array); every axis when the per-layer array has rank < 2."""

    def leaf_axis(x, path):
        stack = _paths.layout_of(path, x).stack
        return _paths.kept_axes(name, layout, axis, x, path, stack)

    return leaf_axis


def _unit_norms(x: jax.Array, axis: Any) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(x/s, s, r)`` with, per unit (keepdims), a power of two ``s ≥ max|x_unit|`` and
    ``r = ‖x_unit‖/s``, so ``‖x_unit‖ = s·r`` is computed without overflow or underflow.

    ``axis``: the axes that index the units (``leaf_axis``'s tuple, or one int); the norm runs
    over the others."""
    kept = (axis,) if isinstance(axis, int) else tuple(axis)
    others = tuple(i for i in range(x.ndim) if i not in kept)
    s = _numerics.pow2_scale(x, axis=others)
    xs = x / s
    return xs, s, jnp.sqrt(jnp.sum(jnp.square(xs), axis=others, keepdims=True))


def _fraction(hits: Sequence[jax.Array], total: int) -> jax.Array:
    if total == 0:
        return jnp.zeros([], jnp.float32)
    return (sum(jnp.sum(h, dtype=jnp.float32) for h in hits) / total).astype(jnp.float32)


def _default_select(mask: Any) -> Callable[[Any, str], bool] | None:
    """Without a mask: the weight matrices (:func:`optareg._paths.leaf_layouts`: per-layer rank
    ``≥ 2``, not a bias / norm scale / embedding); with a mask, the mask alone decides."""
    return (lambda p, path: _paths.layout_of(path, p).matrix) if mask is None else None


def _unit_args(name, layout, axis, mask, stack_axes=None):
    layout = _paths.check_layout(layout)
    _masking.check_mask("mask", mask)
    _paths.check_stack_axes(stack_axes)
    return _unit_axis_fn(name, layout, _check_axis(axis))


# --------------------------------------------------------------------------------------------
# max_norm / unit_norm / non_neg
# --------------------------------------------------------------------------------------------


def max_norm(
    max_value: _validation.ScalarOrSchedule,
    *,
    layout: str = "auto",
    axis: int | None = None,
    mask: _validation.MaskOrFn = None,
    metrics_every: int = 1,
    stack_axes: Any = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Max-norm constraint: every unit's incoming weights have norm at most ``c`` (post-step).

    .. math::

        w_j \leftarrow w_j \cdot \min\!\Big(1, \frac{c_t}{\|w_j\|_2}\Big),
        \qquad w = \theta + u

    the exact Euclidean projection onto ``{‖w_j‖ ≤ c}`` for every unit ``j`` (Keras' ``MaxNorm``
    without its ``1e-7``): a unit inside the ball is returned bit for bit, a unit outside lands
    on norm ``c``; a zero unit stays zero. Units follow ``layout`` / ``axis`` (module docstring):
    for a Flax / Haiku Dense kernel ``(in, out)`` unit ``j`` is column ``j``, for an Equinox
    ``Linear`` weight ``(out, in)`` it is row ``j`` — in both the incoming weights of output
    ``j``. Norms are computed after exact power-of-two rescaling, so they do not overflow.

    Which leaves: without a mask, the weight matrices — per-layer rank ``≥ 2`` and not named as
    a bias (an Equinox conv bias ``(O, 1, 1)`` too), a norm scale or an embedding; the others
    pass through. With a mask, the mask alone decides, and a masked-in leaf whose per-layer
    rank is below 2 has one unit per entry: ``|w_i| ≤ c``, i.e. ``clip(w, −c, c)``. With
    ``stack_axes=k`` the leading ``k`` axes index layers and each layer is constrained on its
    own (module docstring).

    Metric ``"max_norm/on_boundary"``: the fraction of units with ``‖w_j‖ ≥ c(1 − 1e-6)`` after
    the step (those the projection moved, and those within a relative ``1e-6`` of the sphere).

    Args:
      max_value: the bound ``c > 0`` (constant or schedule; a schedule may start at 0).
      layout: ``"auto"``, ``"flax"`` (unit = last axis) or ``"torch"`` (unit = first axis).
      axis: the axis indexing the units of every selected leaf with ``ndim ≥ 2`` (overrides
        ``layout``; static, under ``optax.inject_hyperparams`` pass it in ``static_args``).
      mask: optax mask (pytree/prefix of bools, e.g. an Equinox module of bools, or a callable).
      metrics_every: compute the metric when ``count % metrics_every == 0``.
      stack_axes: the number of leading layer axes: ``None`` (none), an int ``≥ 0``, a pytree
        prefix of the params with int / ``None`` leaves, or a callable
        ``(path, leaf) -> int | None`` (static; under ``optax.inject_hyperparams`` pass it in
        ``static_args``).

    Returns:
      A post-step ``optax.GradientTransformationExtraArgs``; put it **last** in the chain.

    Raises:
      ValueError: ``max_value ≤ 0``, a bad ``layout`` or ``stack_axes``; when traced, an
        ``axis`` or ``stack_axes`` that a selected leaf does not have.

    Example:
      >>> import jax, jax.numpy as jnp, optax, optareg
      >>> tx = optareg.chain(optax.sgd(1.0), optareg.max_norm(1.0))
      >>> params = {"kernel": jnp.array([[3.0, 0.3], [4.0, 0.4]]), "bias": jnp.array([5.0, 5.0])}
      >>> zero = jax.tree.map(jnp.zeros_like, params)
      >>> updates, state = tx.update(zero, tx.init(params), params)
      >>> new = optax.apply_updates(params, updates)
      >>> new["kernel"].round(6)  # column 0 (norm 5) lands on norm 1; column 1 (0.5) stays
      Array([[0.6, 0.3],
             [0.8, 0.4]], dtype=float32)
      >>> new["bias"]  # vectors pass through without a mask
      Array([5., 5.], dtype=float32)
      >>> float(optareg.metrics(state)["max_norm/on_boundary"])
      0.5
      >>> stack = {"kernel": jnp.stack([2 * jnp.eye(2), 0.5 * jnp.eye(2)])}  # 2 layers
      >>> tx = optareg.chain(optax.sgd(1.0), optareg.max_norm(1.0, stack_axes=1))
      >>> updates, _ = tx.update({"kernel": jnp.zeros((2, 2, 2))}, tx.init(stack), stack)
      >>> optax.apply_updates(stack, updates)["kernel"]  # layer 1 (norm 0.5) is untouched
      Array([[[1. , 0. ],
              [0. , 1. ]],
      <BLANKLINE>
             [[0.5, 0. ],
              [0. , 0.5]]], dtype=float32)

    References:
      Srebro & Shraibman, "Rank, Trace-Norm and Max-Norm", COLT 2005.
      Srivastava et al., "Dropout: A Simple Way to Prevent Neural Networks from Overfitting",
      JMLR 2014 (dropout with max-norm ``c = 3``–``4``).
    """
    name = "max_norm"
    _validation.check_scalar("max_value", max_value, low=0.0, low_inclusive=False)
    leaf_axis = _unit_args(name, layout, axis, mask, stack_axes)

    def norms(x, path):
        kept = leaf_axis(x, path)
        if len(kept) == x.ndim:  # one unit per entry
            return jnp.abs(x)
        _, s, r = _unit_norms(x, kept)
        return s * r

    def op(leaf, max_value):
        x = leaf.x
        c = _hp(max_value, x.dtype)
        kept = leaf_axis(x, leaf.path)
        if len(kept) == x.ndim:  # one unit per entry (per-layer rank below 2)
            return jnp.clip(x, -c, c)
        xs, s, r = _unit_norms(x, kept)
        over = s * r > c  # a NaN unit is not "over": its NaN entries stay NaN, the rest as is
        return jnp.where(over, xs * (c / jnp.where(over, r, 1)), x)

    def inside(leaf, y, new_state, land_at, max_value):  # units left outside: round them down
        del new_state, land_at
        z = leaf.landed.astype(y.dtype)
        return ~(norms(z, leaf.path) > _hp(max_value, y.dtype)), y, -jnp.sign(y)

    def stats(leaves, ys, hp):
        hits, total = [], 0
        for leaf in leaves:
            n = norms(leaf.x, leaf.path)
            hits.append(n >= _hp(hp["max_value"], n.dtype) * (1 - BOUNDARY_RTOL))
            total += n.size
        return {"on_boundary": _fraction(hits, total)}

    tx = _poststep.transformation(
        op,
        name=name,
        hyperparams={"max_value": max_value},
        mask=mask,
        select=_default_select(mask),
        stats=(_STATS, stats),
        metrics_every=metrics_every,
        inequality=inside,
    )
    return _paths.with_layouts(tx, stack_axes, name)


def unit_norm(
    *,
    layout: str = "auto",
    axis: int | None = None,
    mask: _validation.MaskOrFn = None,
    metrics_every: int = 1,
    stack_axes: Any = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Unit-norm constraint: every unit's incoming weights have norm exactly 1 (post-step).

    .. math::

        w_j \leftarrow \frac{w_j}{\|w_j\|_2} \quad (w_j \ne 0), \qquad
        w_j \leftarrow 0 \quad (w_j = 0), \qquad w = \theta + u

    the projection onto the unit sphere of each unit (Keras' ``UnitNorm`` without its ``1e-7``);
    a zero unit has no nearest point on the sphere and stays zero (never NaN). Units, leaves and
    ``stack_axes`` as in :func:`max_norm` (without a mask: the weight matrices; a masked-in leaf
    of per-layer rank below 2 has one unit per entry, ``w_i ← sign(w_i)``).

    Metric ``"unit_norm/on_boundary"``: the fraction of units on the sphere after the step, i.e.
    the non-zero ones (``1 −`` the fraction of dead units).

    Args:
      layout: ``"auto"``, ``"flax"`` (unit = last axis) or ``"torch"`` (unit = first axis).
      axis: the axis indexing the units (overrides ``layout``; static).
      mask: optax mask.
      metrics_every: compute the metric when ``count % metrics_every == 0``.
      stack_axes: the number of leading layer axes (as in :func:`max_norm`).

    Returns:
      A post-step ``optax.GradientTransformationExtraArgs``; put it **last** in the chain.

    Example:
      >>> import jax.numpy as jnp, optax, optareg
      >>> tx = optareg.chain(optax.sgd(1.0), optareg.unit_norm(layout="torch"))
      >>> params = {"weight": jnp.array([[3.0, 4.0], [0.0, 0.0]])}  # (out, in): rows are units
      >>> updates, state = tx.update({"weight": jnp.zeros((2, 2))}, tx.init(params), params)
      >>> optax.apply_updates(params, updates)["weight"].round(6)
      Array([[0.6, 0.8],
             [0. , 0. ]], dtype=float32)
      >>> float(optareg.metrics(state)["unit_norm/on_boundary"])
      0.5

    References:
      Salimans & Kingma, "Weight Normalization", NeurIPS 2016 (the unit-norm direction).
    """
    name = "unit_norm"
    leaf_axis = _unit_args(name, layout, axis, mask, stack_axes)

    def radii(x, path):
        kept = leaf_axis(x, path)
        if len(kept) == x.ndim:  # one unit per entry
            return jnp.abs(x)
        return _unit_norms(x, kept)[2]

    def op(leaf):
        x = leaf.x
        kept = leaf_axis(x, leaf.path)
        if len(kept) == x.ndim:  # one unit per entry (per-layer rank below 2)
            return jnp.sign(x)
        xs, _, r = _unit_norms(x, kept)
        nonzero = r != 0  # NaN counts as non-zero: a NaN unit stays NaN
        return jnp.where(nonzero, xs / jnp.where(nonzero, r, 1), x)

    def stats(leaves, ys, hp):
        hits = [radii(leaf.x, leaf.path) > 0 for leaf in leaves]
        return {"on_boundary": _fraction(hits, sum(h.size for h in hits))}

    tx = _poststep.transformation(
        op,
        name=name,
        mask=mask,
        select=_default_select(mask),
        stats=(_STATS, stats),
        metrics_every=metrics_every,
    )
    return _paths.with_layouts(tx, stack_axes, name)


def _check_min_max(min_value: Any, max_value: Any, rate: Any) -> None:
    """``min_max_norm``'s arguments: ``0 ≤ min ≤ max``, ``max > 0``, ``0 < rate ≤ 1``."""
    _validation.check_scalar("min_value", min_value, low=0.0)
    _validation.check_scalar("max_value", max_value, low=0.0, low_inclusive=False)
    _validation.check_scalar("rate", rate, low=0.0, high=1.0, low_inclusive=False)
    both = [v for v in (min_value, max_value) if not callable(v) and _validation.is_concrete(v)]
    if len(both) == 2 and float(min_value) > float(max_value):
        raise ValueError(
            "min_max_norm: `min_value` must be <= `max_value` (0 <= min_value <= max_value, "
            f"max_value > 0); got min_value={min_value!r} > max_value={max_value!r}."
        )


def min_max_norm(
    min_value: _validation.ScalarOrSchedule = 0.0,
    max_value: _validation.ScalarOrSchedule = 1.0,
    rate: _validation.ScalarOrSchedule = 1.0,
    *,
    layout: str = "auto",
    axis: int | None = None,
    stack_axes: Any = None,
    mask: _validation.MaskOrFn = None,
    metrics_every: int = 1,
) -> optax.GradientTransformationExtraArgs:
    r"""Min-max-norm constraint: every unit's norm is pulled into ``[min, max]`` (post-step).

    .. math::

        w_j \leftarrow w_j \cdot
        \frac{\rho\,\mathrm{clip}(\|w_j\|_2, m, M) + (1 - \rho)\,\|w_j\|_2}{\|w_j\|_2},
        \qquad w = \theta + u

    Keras' ``MinMaxNorm(min_value=m, max_value=M, rate=ρ)`` per unit, with the exact norm
    (no ``1e-7``): with ``ρ = 1`` every unit lands on a norm in ``[m, M]`` (the projection
    onto the shell for ``m > 0``, onto the ball for ``m = 0``, i.e. :func:`max_norm`);
    ``ρ < 1`` moves each norm the fraction ``ρ`` of the way. A unit already in ``[m, M]`` is
    returned bit for bit, and a zero unit stays zero (it has no direction to scale; Keras
    divides by ``1e-7`` and also leaves it at zero). Units, leaves and ``stack_axes`` as in
    :func:`max_norm` (module docstring): without a mask, the weight matrices; a masked-in leaf
    of per-layer rank below 2 has one unit per entry. Norms are computed after exact power-of-two
    rescaling (no overflow).

    The upper bound holds after every step, from any start: a unit that rounding in
    ``optax.apply_updates`` would leave above ``max(M, ρ·clip + (1 − ρ)‖w_j‖)`` is landed with
    its entries rounded toward zero (:mod:`optareg._poststep`'s inequality mechanism). The
    lower bound holds to the landing guarantee (``½ulp(θ) + ulp(w)`` per entry).

    Metric ``"min_max_norm/on_boundary"``: the fraction of units whose bound is active this
    step: ``‖w_j‖ ≥ M(1 − 10⁻⁶)``, or ``m > 0`` and ``‖w_j‖ ≤ m(1 + 10⁻⁶)`` (zero units
    included), measured on ``w = θ + u`` as in :func:`max_norm`.

    Args:
      min_value: the lower bound ``m ≥ 0`` (constant or schedule).
      max_value: the upper bound ``M > 0``, ``M ≥ m`` (constant or schedule; where a schedule
        gives ``m > M``, ``M`` wins).
      rate: ``0 < ρ ≤ 1``, the fraction of the way to the clipped norm (constant or schedule).
      layout: ``"auto"``, ``"flax"`` (unit = last axis) or ``"torch"`` (unit = first axis).
      axis: the axis indexing the units (overrides ``layout``; static).
      stack_axes: the number of leading layer axes (as in :func:`max_norm`; static).
      mask: optax mask.
      metrics_every: compute the metric when ``count % metrics_every == 0``.

    Returns:
      A post-step ``optax.GradientTransformationExtraArgs``; put it **last** in the chain.

    Raises:
      ValueError: ``min_value < 0``, ``max_value ≤ 0``, ``min_value > max_value`` (constants),
        ``rate`` outside ``(0, 1]``, a bad ``layout`` or ``stack_axes``.

    Example:
      >>> import jax.numpy as jnp, optax, optareg
      >>> tx = optareg.chain(optax.sgd(1.0), optareg.min_max_norm(0.5, 1.0))
      >>> params = {"kernel": jnp.array([[3.0, 0.06, 0.0, 0.45], [4.0, 0.08, 0.0, 0.6]])}
      >>> updates, state = tx.update({"kernel": jnp.zeros((2, 4))}, tx.init(params), params)
      >>> optax.apply_updates(params, updates)["kernel"].round(6)  # norms 5, 0.1, 0, 0.75
      Array([[0.6 , 0.3 , 0.  , 0.45],
             [0.8 , 0.4 , 0.  , 0.6 ]], dtype=float32)
      >>> float(optareg.metrics(state)["min_max_norm/on_boundary"])  # all but the last column
      0.75

    References:
      Keras ``keras.constraints.MinMaxNorm`` (Chollet et al., 2015).
      Srebro & Shraibman, "Rank, Trace-Norm and Max-Norm", COLT 2005.
    """
    name = "min_max_norm"
    _check_min_max(min_value, max_value, rate)
    leaf_axis = _unit_args(name, layout, axis, mask, stack_axes)

    def norms(x, path):
        _, s, r = _unit_norms(x, leaf_axis(x, path))
        return s * r

    def op(leaf, min_value, max_value, rate):
        x, dt = leaf.x, leaf.x.dtype
        xs, s, r = _unit_norms(x, leaf_axis(x, leaf.path))
        n, rho = s * r, _hp(rate, dt)
        clipped = jnp.clip(n, _hp(min_value, dt), _hp(max_value, dt))
        want = jnp.where(rho < 1, rho * clipped + (1 - rho) * n, clipped)
        move = (want != n) & (r > 0)  # a zero unit stays zero; a NaN unit is left as it is
        return jnp.where(move, xs * (want / jnp.where(move, r, 1)), x)

    def inside(leaf, y, new_state, land_at, max_value, rate, **_):  # above: round down
        del new_state, land_at
        c = _hp(max_value, y.dtype)  # with ρ < 1 a unit may be meant to land above c
        bound = jnp.where(_hp(rate, y.dtype) < 1, jnp.maximum(c, norms(y, leaf.path)), c)
        return ~(norms(leaf.landed.astype(y.dtype), leaf.path) > bound), y, -jnp.sign(y)

    def stats(leaves, ys, hp):
        hits, total = [], 0
        for leaf in leaves:
            n = norms(leaf.x, leaf.path)
            lo, hi = _hp(hp["min_value"], n.dtype), _hp(hp["max_value"], n.dtype)
            hits.append(
                (n >= hi * (1 - BOUNDARY_RTOL)) | ((lo > 0) & (n <= lo * (1 + BOUNDARY_RTOL)))
            )
            total += n.size
        return {"on_boundary": _fraction(hits, total)}

    tx = _poststep.transformation(
        op,
        name=name,
        hyperparams={"min_value": min_value, "max_value": max_value, "rate": rate},
        mask=mask,
        select=_default_select(mask),
        stats=(_STATS, stats),
        metrics_every=metrics_every,
        inequality=inside,
    )
    return _paths.with_layouts(tx, stack_axes, name)


def non_neg(
    mask: _validation.MaskOrFn = None, *, metrics_every: int = 1
) -> optax.GradientTransformationExtraArgs:
    r"""Non-negativity constraint ``θ ≥ 0`` (post-step): ``w ← max(w, 0)`` entry by entry.

    The projection onto the non-negative orthant, on every leaf (vectors and scalars included;
    the mask decides). Same result as ``optax.keep_params_nonnegative`` and Keras' ``NonNeg``,
    computed in at least float32 like every post-step transform.

    Metric ``"non_neg/on_boundary"``: the fraction of entries that are exactly 0 after the step.

    Args:
      mask: optax mask (``True`` = constrain this leaf).
      metrics_every: compute the metric when ``count % metrics_every == 0``.

    Returns:
      A post-step ``optax.GradientTransformationExtraArgs``; put it **last** in the chain.

    Example:
      >>> import jax.numpy as jnp, optax, optareg
      >>> tx = optareg.chain(optax.sgd(1.0), optareg.non_neg())
      >>> params = jnp.array([1.0, -2.0, 0.5, -0.1])
      >>> updates, state = tx.update(jnp.zeros(4), tx.init(params), params)
      >>> optax.apply_updates(params, updates)
      Array([1. , 0. , 0.5, 0. ], dtype=float32)
      >>> float(optareg.metrics(state)["non_neg/on_boundary"])
      0.5
    """
    _masking.check_mask("mask", mask)

    def op(leaf):
        return jnp.maximum(leaf.x, 0)

    def inside(leaf, y, new_state, land_at):  # entries rounding left below 0: round them up
        del new_state, land_at
        return ~(leaf.landed < 0), y, jnp.ones((), y.dtype)

    def stats(leaves, ys, hp):
        return {"on_boundary": _numerics.zeros_fraction(ys)}

    return _poststep.transformation(
        op,
        name="non_neg",
        mask=mask,
        stats=(_STATS, stats),
        metrics_every=metrics_every,
        inequality=inside,
    )


# --------------------------------------------------------------------------------------------
# project
# --------------------------------------------------------------------------------------------


def _changed_fraction(xs: Sequence[jax.Array], ys: Sequence[jax.Array]) -> jax.Array:
    """Fraction of leaves the projection changed (any entry differs)."""
    hits = [jnp.any(y.astype(x.dtype) != x) for x, y in zip(xs, ys, strict=True)]
    return _fraction(hits, len(hits))


def _checked(y: Any, x: jax.Array, where: str) -> jax.Array:
    if not hasattr(y, "shape") or jnp.shape(y) != x.shape:
        raise ValueError(
            f"project: `projection` must return arrays of the input's shapes; at '{where}' it "
            f"returned {getattr(y, 'shape', type(y).__name__)} for shape {x.shape}."
        )
    return jnp.asarray(y)


def _is_none(x: Any) -> bool:
    return x is None


def _recheck(projection: Callable[[Any], Any], z: Any, y: Any) -> tuple[Any, Any]:
    """The inequality of ``project``: ``(ok, direction)`` for the landed ``z`` (a leaf or a
    tree, compute dtype): ``ok`` where ``z`` is a fixed point of ``P`` (per leaf), the direction
    ``sign(P(z) − z)`` in which ``P`` would move it (an entry ``P`` leaves in place keeps its
    side of ``y``, i.e. its landing). ``P`` is called only on the steps where some landed entry
    differs from ``y = P(θ + u)`` (where ``z = y``, it is inside)."""

    def side(pz, z, y):
        pz = pz.astype(z.dtype)
        return jnp.where(pz != z, jnp.sign(pz - z), jnp.sign(z - y))

    def again():
        pz = projection(z)
        return (
            jax.tree.map(lambda a, b: jnp.all(a.astype(b.dtype) == b), pz, z),
            jax.tree.map(side, pz, z, y),
        )

    def exact():
        return jax.tree.map(lambda b: jnp.array(True), z), jax.tree.map(jnp.zeros_like, z)

    same = [jnp.all(a == b) for a, b in zip(jax.tree.leaves(z), jax.tree.leaves(y), strict=True)]
    return jax.lax.cond(jnp.all(jnp.stack(same)), exact, again)


def _land_inside_tree(projection, treedef, leaves, new_u, ys, dts):
    """``project``'s tree path through the one inequality mechanism of the post-step path
    (:func:`optareg._poststep.land_inside`): leaves that rounding left outside the set are
    landed again, rounded toward the set."""
    pairs = zip(leaves, new_u, strict=True)
    landed = [None if u is None else _poststep.land(p, u) for (_, p), u in pairs]
    z = [None if t is None else t.astype(dt) for t, dt in zip(landed, dts, strict=True)]
    yc = [None if y is None else y.astype(dt) for y, dt in zip(ys, dts, strict=True)]
    oks, dirs = _recheck(projection, treedef.unflatten(z), treedef.unflatten(yc))
    oks, dirs = treedef.flatten_up_to(oks), treedef.flatten_up_to(dirs)
    out = list(new_u)
    for i, ((_, p), u) in enumerate(zip(leaves, new_u, strict=True)):
        if u is not None:
            check = functools.partial(lambda i: (oks[i], yc[i], dirs[i]), i)
            out[i] = _poststep.land_inside(p, u, landed[i], check)[0]
    return out


def _project_tree(projection, name, mask, metrics_every):
    """The tree-level post-step: ``y = projection(θ + u)`` on the whole (masked) tree at once.

    The one post-step path (:func:`optareg._poststep.transformation`) hands its operator one leaf
    at a time; a projection onto a set coupling all leaves (an L1 ball over the tree) needs them
    together, so this function forms every ``θ + u`` first, with ``_poststep``'s dtype rule
    (at least float32, the update cast back to the update's dtype, or θ's where that is wider),
    its checks, state class and metrics schedule, and the same mask wrapper and chain tag. With
    no leaf selected the projection is not called (optax's projections fail on an empty tree).
    """
    every = _validation.check_metrics_every(metrics_every)

    def init_fn(params):
        if not _validation.is_params_placeholder(params):
            _poststep._check_float_params(params, name)
        return _poststep.PostStepState(_counters.init_count(), _poststep._empty_stats(name, _STATS))

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args
        _validation.require_params(params, name)
        treedef = jax.tree.structure(updates, is_leaf=_is_none)
        flat_u, flat_p = treedef.flatten_up_to(updates), treedef.flatten_up_to(params)
        paths = _paths.leaf_paths(params, treedef)
        leaves = list(zip(flat_u, flat_p, strict=True))
        if all(u is None for u, _ in leaves):  # nothing selected (all masked out, or no leaf)
            return updates, state._replace(count=_counters.increment(state.count))
        dts = [None if u is None else _numerics.compute_dtype(p, u) for u, p in leaves]
        xs = [
            None if u is None else p.astype(dt) + u.astype(dt)
            for (u, p), dt in zip(leaves, dts, strict=True)
        ]
        out = projection(treedef.unflatten(xs))
        if jax.tree.structure(out, is_leaf=_is_none) != treedef:
            raise ValueError(
                "project: `projection(tree)` must return a tree of the input's structure; got "
                f"{jax.tree.structure(out, is_leaf=_is_none)} for {treedef}."
            )
        ys = [
            None if x is None else _checked(y, x, where)
            for x, y, where in zip(xs, treedef.flatten_up_to(out), paths, strict=True)
        ]
        new_u = [
            None
            if u is None
            else (y.astype(dt) - p.astype(dt)).astype(_poststep.returned_dtype(u.dtype, p.dtype))
            for (u, p), y, dt in zip(leaves, ys, dts, strict=True)
        ]
        new_u = _land_inside_tree(projection, treedef, leaves, new_u, ys, dts)
        kept = [(x, y) for x, y in zip(xs, ys, strict=True) if x is not None]

        def compute():
            frac = _changed_fraction([x for x, _ in kept], [y for _, y in kept])
            return {f"{name}/on_boundary": frac}

        stats = _counters.on_metrics_step(every, state.count, compute, state.stats)
        return treedef.unflatten(new_u), _poststep.PostStepState(
            _counters.increment(state.count), stats
        )

    tx = optax.GradientTransformationExtraArgs(init_fn, update_fn)
    return _chain.tag(_masking.masked_if(tx, mask), "post_step", name)


def project(
    projection: Callable[[Any], Any],
    *,
    mask: _validation.MaskOrFn = None,
    per_leaf: bool = False,
    metrics_every: int = 1,
) -> optax.GradientTransformationExtraArgs:
    r"""Any projection as a post-step constraint: ``θ ← P(θ + u)``.

    ``projection`` maps the parameter tree (the masked tree inside ``mask=``: masked-out leaves
    are ``optax.MaskedNode``) to a tree of the same structure and shapes, as
    ``optax.projections``' functions do; wrap them directly
    (``project(lambda t: optax.projections.projection_l1_ball(t, r))``). It sees ``θ + u`` in at
    least float32, and the update is returned in the incoming update's dtype. With
    ``optax.sgd(η)`` before it this is projected gradient descent on ``min f(θ) s.t. θ ∈ C``.
    With ``per_leaf=True`` the projection is applied to every (masked-in) leaf on its own, an
    array in and an array out (e.g. ``projection_l2_ball`` per leaf: a norm bound per tensor).

    Metric ``"project/on_boundary"``: the fraction of (masked-in) leaves that the projection
    changed this step (for a convex set, a point it moves lands on the set's boundary).

    Args:
      projection: ``tree -> tree`` (or ``array -> array`` with ``per_leaf=True``), jit-able.
      mask: optax mask (``True`` = project this leaf).
      per_leaf: apply ``projection`` leaf by leaf instead of to the whole tree.
      metrics_every: compute the metric when ``count % metrics_every == 0``.

    Returns:
      A post-step ``optax.GradientTransformationExtraArgs``; put it **last** in the chain.

    Raises:
      TypeError: ``projection`` is not callable or ``per_leaf`` is not a bool.

    Example:
      >>> import jax.numpy as jnp, optax, optareg
      >>> ball = lambda t: optax.projections.projection_l1_ball(t, 1.0)
      >>> tx = optareg.chain(optax.sgd(1.0), optareg.project(ball))
      >>> params = {"a": jnp.array([2.0, 0.5]), "b": jnp.array([-1.0])}
      >>> zero = {"a": jnp.zeros(2), "b": jnp.zeros(1)}
      >>> updates, state = tx.update(zero, tx.init(params), params)
      >>> new = optax.apply_updates(params, updates)  # ‖·‖₁ = 3.5 over the tree -> 1
      >>> new["a"], new["b"]
      (Array([1., 0.], dtype=float32), Array([-0.], dtype=float32))
      >>> float(optareg.metrics(state)["project/on_boundary"])
      1.0

    References:
      Duchi, Shalev-Shwartz, Singer & Chandra, "Efficient Projections onto the l1-Ball for
      Learning in High Dimensions", ICML 2008.
    """
    if not callable(projection):
        raise TypeError(
            "`projection` must be a callable tree -> tree (e.g. `lambda t: "
            f"optax.projections.projection_l1_ball(t, r)`); got {type(projection).__name__}."
        )
    per_leaf = _validation.check_bool("per_leaf", per_leaf)
    _masking.check_mask("mask", mask)
    name = "project"
    if not per_leaf:
        return _project_tree(projection, name, mask, metrics_every)

    def op(leaf):
        return _checked(projection(leaf.x), leaf.x, leaf.path)

    def inside(leaf, y, new_state, land_at):  # rounded off the set: round toward P's side
        del new_state, land_at
        ok, direction = _recheck(projection, leaf.landed.astype(y.dtype), y)
        return ok, y, direction

    def stats(leaves, ys, hp):
        return {"on_boundary": _changed_fraction([leaf.x for leaf in leaves], ys)}

    return _poststep.transformation(
        op,
        name=name,
        mask=mask,
        stats=(_STATS, stats),
        metrics_every=metrics_every,
        inequality=inside,
    )


# --------------------------------------------------------------------------------------------
# add_penalty
# --------------------------------------------------------------------------------------------


class AddPenaltyState(NamedTuple):
    """State of :func:`add_penalty`.

    Attributes:
      count: int32 step counter of shape ``()``; the strength schedule is evaluated on it.
      stats: ``{"<name>/value": λ_t·R(θ_t)}`` (float32 scalar), read with
        :func:`optareg.metrics`.
    """

    count: jax.Array  # int32, shape ()
    stats: dict[str, jax.Array]

    def optareg_metrics(self) -> dict[str, jax.Array]:
        return dict(self.stats)


def _check_penalty_params(params: Any, name: str) -> None:
    for path, p in jax.tree_util.tree_flatten_with_path(params)[0]:
        if not jnp.issubdtype(jnp.result_type(p), jnp.inexact):
            raise TypeError(
                f"{name}: the parameter at '{_paths.path_str(path) or '<root>'}' has dtype "
                f"{jnp.result_type(p)}; a penalty is differentiated with respect to floating-point "
                "parameters only. Mask that leaf out (`mask=`) or keep it out of the tree."
            )


def _scalar_penalty(penalty: Callable[[Any], Any], name: str) -> Callable[[Any], jax.Array]:
    def fn(params):
        value = penalty(params)
        if jnp.shape(value) != ():
            raise ValueError(
                f"{name}: `penalty(params)` must return a scalar; got shape {jnp.shape(value)}. "
                "Sum the terms, e.g. `lambda p: jnp.sum(...)`."
            )
        return value

    return fn


def add_penalty(
    penalty: Callable[[Any], jax.Array],
    strength: _validation.ScalarOrSchedule,
    *,
    mask: _validation.MaskOrFn = None,
    name: str = "add_penalty",
) -> optax.GradientTransformationExtraArgs:
    r"""Add the gradient of an explicit penalty ``λ_t·R(θ)`` to the updates (gradient-side).

    .. math::

        u \leftarrow u + \lambda_t\,\nabla R(\theta)

    for any differentiable ``R``: ``penalty(params)`` returns a scalar (ready ones in
    :mod:`optareg.penalties`: ``l2``, ``l1``, ``orthogonality``, ``l2_to``). Place it before the
    learning-rate scaling (``optareg.chain(add_penalty(R, λ), optax.sgd(η))``, or between
    ``optax.scale_by_adam()`` and ``optax.scale_by_learning_rate(η)``): the optimizer then
    minimizes ``f(θ) + λ·R(θ)``. With a mask, ``R`` sees the masked tree (``optax.masked``
    semantics: masked-out leaves are ``optax.MaskedNode``, so they get no penalty gradient and
    add nothing to ``R``). ``add_penalty(penalties.l2, λ)`` equals ``add_decayed_weights(λ)``
    bit for bit. Updates keep their dtype (``(u + λ·∇R).astype(u.dtype)``, as in
    ``add_decayed_weights``); ``∇R`` has the parameters' dtype.

    The state records ``"<name>/value"`` ``= λ_t·R(θ_t)`` (float32), the penalty at the
    parameters the gradient was taken at; with a constant ``strength`` of 0 the updates pass
    through untouched and ``R`` is not evaluated (the value is 0).

    Args:
      penalty: ``R``, a function ``params -> scalar`` differentiable with ``jax.grad``.
      strength: ``λ ≥ 0`` (constant or schedule).
      mask: optax mask (``True`` = penalize this leaf).
      name: the metric prefix and the name :func:`optareg.chain` reports (use distinct names
        for several penalties in one chain).

    Returns:
      A gradient-side ``optax.GradientTransformationExtraArgs``; its state is
      :class:`AddPenaltyState` (inside ``optax.MaskedState`` with a mask).

    Raises:
      TypeError: ``penalty`` is not callable, ``name`` is not a string.
      ValueError: ``strength`` is negative or not finite, ``name`` is empty.

    Example:
      >>> import jax.numpy as jnp, optax, optareg
      >>> from optareg import penalties
      >>> tx = optareg.chain(optareg.add_penalty(penalties.l1, 0.1), optax.sgd(1.0))
      >>> params = {"w": jnp.array([2.0, -0.05, 0.0])}
      >>> updates, state = tx.update({"w": jnp.zeros(3)}, tx.init(params), params)
      >>> updates["w"]  # −η·λ·sign(θ) (0 at 0): a subgradient step never lands on 0 exactly
      Array([-0.1,  0.1,  0. ], dtype=float32)
      >>> round(float(optareg.metrics(state)["add_penalty/value"]), 6)  # λ·‖θ‖₁ = 0.1·2.05
      0.205
    """
    if not callable(penalty):
        raise TypeError(
            "`penalty` must be a callable params -> scalar (e.g. `optareg.penalties.l2`); got "
            f"{type(penalty).__name__}. (Inside `optax.inject_hyperparams`, name it in "
            "static_args: `inject_hyperparams(optareg.add_penalty, static_args=('penalty',))`; "
            "otherwise optax calls it as a schedule and passes on the result.)"
        )
    _validation.check_scalar("strength", strength, low=0.0)
    _masking.check_mask("mask", mask)
    if not isinstance(name, str):
        raise TypeError(f"`name` must be a non-empty string; got {type(name).__name__}.")
    if not name:
        raise ValueError("`name` must be a non-empty string (the metric prefix); got ''.")
    key = f"{name}/value"
    fn = _scalar_penalty(penalty, name)
    static_zero = isinstance(strength, (int, float)) and not isinstance(strength, bool)
    static_zero = static_zero and strength == 0

    def init_fn(params):
        if not _validation.is_params_placeholder(params):
            _check_penalty_params(params, name)
        return AddPenaltyState(_counters.init_count(), {key: jnp.zeros([], jnp.float32)})

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args
        _validation.require_params(params, name)
        count = _counters.increment(state.count)
        if static_zero:
            return updates, AddPenaltyState(count, {key: jnp.zeros([], jnp.float32)})
        s = _counters.evaluate(strength, state.count)
        value, grad = jax.value_and_grad(fn)(params)

        def leaf(g, d):
            return None if g is None else (g + s * d).astype(g.dtype)

        out = jax.tree.map(leaf, updates, grad, is_leaf=_is_none)
        stats = {key: jnp.asarray(s * value).astype(jnp.float32)}
        return out, AddPenaltyState(count, stats)

    tx = _masking.masked_if(optax.GradientTransformationExtraArgs(init_fn, update_fn), mask)
    return _chain.tag(tx, "gradient", name)
