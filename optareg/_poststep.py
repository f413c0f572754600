"""The one path of post-step transforms: ``u' = P(θ + u) − θ``, leaf by leaf.

Every post-step transform (the ``prox_*`` family, ``decoupled_weight_decay``,
``spectral_clip``, the constraints, ``low_precision_updates``) is a per-leaf *operator* handed
to :func:`transformation`, which does everything else once:

* the mask (``optax.masked`` semantics, via :func:`optareg._masking.masked_if`) and a static
  per-leaf ``select`` predicate (e.g. "matrices only");
* dtypes: ``x = θ + u`` is formed in at least float32, the operator's result ``y`` is returned as
  the update ``(y − θ)`` cast to the update's dtype (the parameter's where that is wider, or
  always, for ``update_dtype="param"``), so ``optax.apply_updates(θ, u')`` lands next to
  ``y``: ``|θ_new − y| ≤ ½ulp(θ) + ulp(y)`` entrywise (ulps in θ's dtype), exact zeros exact
  (the landing guarantee; ``θ_new = y`` wherever ``y − θ`` is exact in the update's dtype);
* inequalities (``inequality=``): an operator whose set is an inequality (``max_norm``,
  ``non_neg``, the exact ``spectral_clip``, ``project``...) declares how to test the landed
  parameters and how to pull a unit in; the units that rounding left outside are landed again
  with a directed rounding (or a target the hook pulled inside), so ``θ_new`` is *inside* after
  every step from any start (:func:`land_inside`); units already inside keep their landing;
* schedules, evaluated on the transform's own int32 counter;
* per-leaf state (power-iteration vectors, a reference point, a compensation buffer) carried in
  params-structured trees of the state;
* statistics, computed on the steps where ``count % metrics_every == 0`` and kept in between,
  under fixed keys ``"<name>/<stat>"`` read by :func:`optareg.metrics`;
* the checks: ``params`` given, floating-point parameters.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optareg import _chain, _counters, _masking, _numerics, _paths, _validation

__all__ = [
    "Leaf",
    "PostStepState",
    "land",
    "land_inside",
    "returned_dtype",
    "transformation",
    "update_toward",
]


class Leaf(NamedTuple):
    """What a post-step operator sees for one leaf (arrays in the compute dtype).

    Attributes:
      x: ``θ + u``, the parameters the optimizer would land on.
      theta: ``θ``, the current parameters.
      u: ``u``, the incoming update.
      path: the leaf's tree path, ``"dense/kernel"`` (for layout rules and messages).
      state: this leaf's entries of the per-leaf state fields (``{field: array or None}``).
      param: the parameter leaf as given, in its own dtype (not upcast; e.g. bfloat16).
      index: the leaf's position among the leaves of the updates tree (per-leaf random keys).
      landed: ``optax.apply_updates(θ, u')`` for the returned update ``u'`` (θ's dtype), set
        once the operator has run, for the statistics: the same expression as the apply, so
        that under ``jit`` XLA computes it once and a statistic of it is one more read of the
        new parameters (``None`` inside the operator).
    """

    x: jax.Array
    theta: jax.Array
    u: jax.Array
    path: str
    state: dict[str, Any]
    param: Any = None
    index: int = -1
    landed: Any = None


class PostStepState(NamedTuple):
    """State of a post-step transform without per-leaf state.

    Attributes:
      count: int32 step counter of shape ``()`` on which the schedules are evaluated.
      stats: scalar statistics of the last metrics step, keyed ``"<name>/<stat>"`` (float32),
        read with :func:`optareg.metrics`.
    """

    count: jax.Array  # int32, shape ()
    stats: dict[str, jax.Array]

    def optareg_metrics(self) -> dict[str, jax.Array]:
        return dict(self.stats)


Operator = Callable[..., Any]
Inequality = Callable[..., tuple[Any, Any, Any]]
"""``inequality(leaf, y, new_leaf_state, land_at, **hp) -> (ok, target, direction)``:
``leaf.landed`` holds the landed parameters ``θ ⊕ u'`` (θ's dtype) and ``y`` the operator's
result (compute dtype); ``ok`` (bool, broadcastable to the leaf) marks the units of
``leaf.landed`` inside the set; the others are landed at ``target`` rounded toward
``direction`` (``+1`` up, ``−1`` down, ``0`` nearest; broadcastable), see
:func:`update_toward`. ``land_at(target, direction)`` returns where that landing would be (θ's
dtype), for a hook that checks a pulled target before choosing it."""
StatsFn = Callable[[Sequence[Leaf], Sequence[jax.Array], Mapping[str, Any]], Mapping[str, Any]]


def _is_none(x: Any) -> bool:
    return x is None


def _check_float_params(params: Any, name: str) -> None:
    for path, p in jax.tree_util.tree_flatten_with_path(params)[0]:
        dtype = jnp.result_type(p)
        if not jnp.issubdtype(dtype, jnp.inexact):
            raise TypeError(
                f"{name}: the parameter at '{_paths.path_str(path) or '<root>'}' has dtype "
                f"{dtype}; post-step transforms act on floating-point parameters only. Mask "
                "that leaf out (`mask=`) or keep it out of the optimized tree."
            )


def _flatten_field(treedef: Any, tree: Any) -> list[Any]:
    """A per-leaf state field flattened like the updates (a ``None`` field: ``None`` per leaf)."""
    if tree is None:
        return [None] * treedef.num_leaves
    return treedef.flatten_up_to(tree)


def _empty_stats(name: str, keys: Sequence[str]) -> dict[str, jax.Array]:
    return {f"{name}/{k}": jnp.zeros([], jnp.float32) for k in keys}


def returned_dtype(u_dtype: Any, p_dtype: Any, update_dtype: str = "update") -> Any:
    """The dtype of a returned update ``u'``: θ's for ``"param"``, else the update's, or θ's
    where that is wider (an update narrower than θ, e.g. bf16 updates of float32 params, could
    not carry ``y − θ`` exactly: the landing would miss ``y`` and its exact zeros)."""
    return p_dtype if update_dtype == "param" else jnp.promote_types(u_dtype, p_dtype)


def land(p: Any, u: jax.Array) -> jax.Array:
    """``optax.apply_updates(θ, u)`` for one leaf: ``θ + u`` in their promoted dtype, in θ's."""
    return jnp.asarray(p + u).astype(jnp.asarray(p).dtype)


def update_toward(p: Any, target: jax.Array, direction: Any, u_dtype: Any) -> jax.Array:
    """An update ``u`` (``u_dtype``) whose landing ``θ ⊕ u`` (:func:`land`) lies on the
    ``direction`` side of ``target``, next to it: ``direction · (θ ⊕ u − target) ≥ 0`` entrywise
    (``direction`` 0: the nearest landing, ``u = target − θ`` rounded).

    ``target`` is rounded to θ's dtype toward ``direction`` first; where ``target − θ`` is not
    exact in ``u_dtype`` (``|θ| ≫ |target|``: the sum cancels exactly, and its grid is
    ``ulp(u)``), ``u`` is moved one ulp toward ``direction`` (at most twice), so the landing
    error is at most one grid step, ``≤ ulp(θ) + ulp(target)``.
    """
    p = jnp.asarray(p)
    dt, d = target.dtype, jnp.sign(jnp.asarray(direction, target.dtype))
    toward = jnp.where(d > 0, jnp.inf, -jnp.inf)
    t = target.astype(p.dtype)
    t = jnp.where(d * (t.astype(dt) - target) < 0, jnp.nextafter(t, toward.astype(p.dtype)), t)
    u = (t.astype(dt) - p.astype(dt)).astype(u_dtype)
    for _ in range(2):
        wrong = d * (land(p, u).astype(dt) - target) < 0
        u = jnp.where(wrong, jnp.nextafter(u, toward.astype(u_dtype)), u)
    return u


def land_inside(p: Any, u: jax.Array, landed: jax.Array, check: Callable[[], Any]):
    """``(u', landed')``: the units that :data:`Inequality`'s ``check()`` finds outside are
    landed again at its ``target``, rounded toward its ``direction``; the others keep ``u``.

    The re-landing runs (``lax.cond``) only on the steps where some unit is outside.
    """
    ok, target, direction = check()
    ok = jnp.broadcast_to(ok, landed.shape)

    def pull():
        inside = update_toward(p, target, jnp.broadcast_to(direction, target.shape), u.dtype)
        return jnp.where(ok, u, inside)

    new_u = jax.lax.cond(jnp.all(ok), lambda: u, pull)
    return new_u, land(p, new_u)


def _leaf_update(
    operator, u, p, path, leaf_state, hp, update_dtype, stateful, index, returns, inequality
):
    """``(u', y, new_leaf_state, leaf)`` for one selected leaf."""
    dt = _numerics.compute_dtype(p, u)
    theta, step = p.astype(dt), u.astype(dt)
    leaf = Leaf(theta + step, theta, step, path, leaf_state, p, index)
    out = operator(leaf, **hp)
    y, new_state = out if stateful else (out, leaf_state)
    target = returned_dtype(u.dtype, p.dtype, update_dtype)
    if returns == "update":  # the operator chose u' itself (e.g. so that θ + u' is exact)
        new_u = y.astype(target)
    else:
        new_u = (y.astype(dt) - theta).astype(target)
    landed = land(p, new_u)  # as optax.apply_updates
    if inequality is not None:
        yc = y.astype(dt)

        def land_at(t, direction):
            return land(p, update_toward(p, t, direction, new_u.dtype))

        def check():
            return inequality(leaf._replace(landed=landed), yc, new_state, land_at, **hp)

        new_u, landed = land_inside(p, new_u, landed, check)
    return new_u, y, new_state, leaf._replace(landed=landed)


def transformation(
    operator: Operator,
    *,
    name: str,
    hyperparams: Mapping[str, optax.ScalarOrSchedule] | None = None,
    mask: Any = None,
    select: Callable[[jax.Array, str], bool] | None = None,
    init_state: Callable[[Any], Mapping[str, Any]] | None = None,
    state_cls: type | None = None,
    stats: tuple[Sequence[str], StatsFn] | None = None,
    metrics_every: int = 1,
    update_dtype: str = "update",
    kind: str = "post_step",
    returns: str = "target",
    one_leaf_at_a_time: bool = False,
    inequality: Inequality | None = None,
) -> optax.GradientTransformationExtraArgs:
    """Turn a per-leaf operator into a post-step ``optax`` transform (the one shared path).

    Args:
      operator: ``operator(leaf: Leaf, **hp) -> y`` (or ``(y, new_leaf_state)`` when
        ``init_state`` is given), where ``hp`` holds the current values of ``hyperparams``.
      name: the transform's name: error messages and the metrics prefix.
      hyperparams: name → constant or schedule, evaluated on the transform's counter.
      mask: optax mask; the transform is wrapped in ``optax.masked`` when given.
      select: static predicate ``select(param_leaf, path)``; rejected leaves pass through.
      init_state: ``init_state(params) -> {field: params-structured tree}`` (``None`` entries
        for leaves without state); the fields are stored in ``state_cls``.
      state_cls: the state NamedTuple, with fields ``count``, the ``init_state`` fields and,
        when ``stats`` is given, ``stats``. Default :class:`PostStepState`.
      stats: ``(keys, fn)``: ``fn(leaves, ys, hp) -> {key: scalar}`` over the selected leaves,
        computed every ``metrics_every`` steps and recorded as ``"<name>/<key>"``.
      metrics_every: compute the statistics when ``count % metrics_every == 0``.
      update_dtype: ``"update"`` (return updates in the incoming update's dtype, or in the
        parameter's where that is wider, so that ``θ + u'`` still lands on ``y``) or
        ``"param"`` (in the parameter's dtype).
      kind: the chain kind recorded for :func:`optareg.chain`.
      returns: ``"target"`` (the operator returns ``y = P(θ + u)``; the update is ``y − θ``) or
        ``"update"`` (it returns the update ``u'`` itself, cast to the ``update_dtype``; the
        statistics then see ``u'`` as ``y``).
      one_leaf_at_a_time: for an operator that needs ``x = θ + u`` twice (a reduction, then
        the output: group norms), make each leaf's ``x`` wait for the previous leaf's new
        parameters (on CPU only; the values are unchanged), so that XLA:CPU reuses one
        temporary buffer for ``x`` instead of allocating one per leaf (fresh memory, i.e. page
        faults, on every step).
      inequality: for an operator whose set is an inequality: the hook (:data:`Inequality`)
        that tests the landed parameters and says how to pull the units that rounding left
        outside back in (:func:`land_inside`); ``None``: the landing guarantee alone.

    Returns:
      An ``optax.GradientTransformationExtraArgs``.
    """
    hyperparams = dict(hyperparams or {})
    stat_keys = stats[0] if stats is not None else ()
    state_cls = state_cls or PostStepState
    stateful = init_state is not None
    every = _validation.check_metrics_every(metrics_every)
    _validation.check_choice("returns", returns, ("target", "update"))

    def make_state(count, fields, stat_values):
        extra = {"stats": stat_values} if "stats" in state_cls._fields else {}
        return state_cls(count=count, **fields, **extra)

    def init_fn(params):
        placeholder = _validation.is_params_placeholder(params)
        if not placeholder:
            _check_float_params(params, name)
        fields = dict(init_state(params)) if stateful else {}
        return make_state(_counters.init_count(), fields, _empty_stats(name, stat_keys))

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args
        _validation.require_params(params, name)
        hp = {k: _counters.evaluate(v, state.count) for k, v in hyperparams.items()}
        treedef = jax.tree.structure(updates, is_leaf=_is_none)
        names = [f for f in state_cls._fields if f not in ("count", "stats")]
        fields = {f: _flatten_field(treedef, getattr(state, f)) for f in names}
        flat_u, flat_p = treedef.flatten_up_to(updates), treedef.flatten_up_to(params)
        paths = _paths.leaf_paths(params, treedef)
        new_u, new_fields, leaves, ys = (
            list(flat_u),
            {f: list(v) for f, v in fields.items()},
            [],
            [],
        )
        for i, (u, p, path) in enumerate(zip(flat_u, flat_p, paths, strict=True)):
            if u is None or (select is not None and not select(p, path)):
                continue
            leaf_state = {f: v[i] for f, v in fields.items()}
            if one_leaf_at_a_time and leaves:
                u = _numerics.after(u, leaves[-1].landed)
            new_u[i], y, leaf_state, leaf = _leaf_update(
                operator, u, p, path, leaf_state, hp, update_dtype, stateful, i, returns, inequality
            )
            for f in new_fields:
                new_fields[f][i] = leaf_state[f]
            leaves.append(leaf), ys.append(y)
        stat_values = _statistics(name, stats, every, state, (leaves, ys, hp))
        tree_fields = {
            f: None if getattr(state, f) is None else treedef.unflatten(v)
            for f, v in new_fields.items()
        }
        count = _counters.increment(state.count)
        return treedef.unflatten(new_u), make_state(count, tree_fields, stat_values)

    tx = optax.GradientTransformationExtraArgs(init_fn, update_fn)
    return _chain.tag(_masking.masked_if(tx, mask), kind, name)


def _statistics(name, stats, every, state, args):
    """The statistics of this step (every ``every`` steps; the previous values otherwise)."""
    if stats is None:
        return {}
    keys, fn = stats

    def compute():
        values = fn(*args)
        return {f"{name}/{k}": jnp.asarray(values[k], jnp.float32) for k in keys}

    return _counters.on_metrics_step(every, state.count, compute, state.stats)


def map_with_paths(fn: Callable[[Any, str], Any], params: Any) -> Any:
    """``fn(leaf, path)`` on every leaf of ``params`` (``None`` leaves stay ``None``)."""
    return jax.tree_util.tree_map_with_path(
        lambda path, p: None if p is None else fn(p, _paths.path_str(path)),
        params,
        is_leaf=_is_none,
    )
