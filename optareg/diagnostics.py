"""Diagnostics: metrics recorded in optimizer state and read back as one flat dict.

Two pieces:

* :func:`track`, a pass-through ``optax`` transform that records, at its position in the chain,
  the norms, the update/parameter ratio, the sparsity of the would-be new parameters and a count
  of non-finite entries;
* :func:`metrics`, which walks any optimizer state and returns every metric an optareg transform
  recorded (``track``, ``sam_perturb``, ``spectral_clip``, the ``prox_*`` family ...) as one flat
  ``dict[str, jax.Array]`` with the same keys at every step.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optareg import _base

__all__ = ["TrackState", "metrics", "track"]

_METRICS = ("grad_norm", "param_norm", "update_norm", "update_ratio", "sparsity", "nonfinite")


def _has_metrics(x: Any) -> bool:
    return hasattr(x, "optareg_metrics") and not isinstance(x, type)


def _as_array(value: Any) -> jax.Array:
    """A JAX array from a metric value (unwraps Flax NNX ``OptArray`` / ``Variable`` boxes)."""
    if isinstance(value, jax.Array):
        return value
    if hasattr(value, "get_value"):
        return jnp.asarray(value.get_value())
    return jnp.asarray(value)


def metrics(opt_state: Any) -> dict[str, jax.Array]:
    """Every metric recorded by optareg transforms anywhere in an optimizer state, as a flat dict.

    Walks any optimizer state (``optax.chain``, ``optax.masked``, ``optax.inject_hyperparams``,
    ``optax.MultiSteps``, nested combinations, and the ``opt_state`` of a Flax NNX
    ``nnx.Optimizer``) and collects the metrics of every optareg state it finds. Keys are flat
    strings (``"<transform>/<metric>"``); values are JAX scalars, so the call is jit-compatible and
    the keys are the same at every step. When the same key appears twice (two transforms with the
    same name), the second one gets a ``#2`` suffix (``#3`` ...).

    Args:
      opt_state: any optimizer state.

    Returns:
      ``dict[str, jax.Array]``; ``jax.device_get`` turns it into numbers for a logger.

    Example:
      >>> import jax.numpy as jnp, optax, optareg
      >>> tx = optax.chain(optax.sgd(0.1), optareg.add_decayed_weights(0.0))
      >>> optareg.metrics(tx.init({"w": jnp.ones(3)}))
      {}
    """
    out: dict[str, jax.Array] = {}
    for node in jax.tree.leaves(opt_state, is_leaf=_has_metrics):
        if not _has_metrics(node):
            continue
        for key, value in node.optareg_metrics().items():
            final, k = key, 1
            while final in out:
                k += 1
                final = f"{key}#{k}"
            out[final] = _as_array(value)
    return out


# --------------------------------------------------------------------------------------------
# track
# --------------------------------------------------------------------------------------------


def path_to_str(path: tuple[Any, ...]) -> str:
    """``"dense1/kernel"`` from a JAX key path (a trailing NNX ``.value`` is dropped)."""
    parts = []
    for k in path:
        if isinstance(k, jax.tree_util.DictKey):
            parts.append(str(k.key))
        elif isinstance(k, jax.tree_util.GetAttrKey):
            parts.append(k.name)
        elif isinstance(k, jax.tree_util.SequenceKey):
            parts.append(str(k.idx))
        elif isinstance(k, jax.tree_util.FlattenedIndexKey):
            parts.append(str(k.key))
        else:  # pragma: no cover - future key types
            parts.append(str(k))
    if (
        len(parts) > 1
        and parts[-1] in ("value", "raw_value")
        and isinstance(path[-1], jax.tree_util.GetAttrKey)
    ):
        parts.pop()
    return "/".join(parts)


class TrackState(NamedTuple):
    """State of :func:`track`.

    Attributes:
      stats: the scalar metrics of the last step, keyed ``"<name>/<metric>"`` (float32, except
        ``nonfinite`` which is int32).
      per_leaf: with ``per_leaf=True``, ``"<name>/<metric>"`` → a params-structured tree holding
        that metric for each leaf (scalars); ``None`` otherwise.
    """

    stats: dict[str, jax.Array]
    per_leaf: dict[str, Any] | None

    def optareg_metrics(self) -> dict[str, jax.Array]:
        out = dict(self.stats)
        if self.per_leaf is not None:
            for key, tree in self.per_leaf.items():
                for path, value in jax.tree_util.tree_flatten_with_path(tree)[0]:
                    out[f"{key}/{path_to_str(path)}"] = value
        return out


def _dtype(metric: str) -> jnp.dtype:
    return jnp.int32 if metric == "nonfinite" else jnp.float32


def _zero(metric: str) -> jax.Array:
    return jnp.zeros([], _dtype(metric))


_DOWN = 2.0**-100  # exact power-of-two rescaling: max float32 · 2⁻¹⁰⁰ ≈ 2.7e8, squares fit


def _ssq(x: jax.Array, scale: float | None = None) -> jax.Array:
    """Σx² of one leaf in (at least) float32; with ``scale``, Σ(x·scale)²."""
    x = x.astype(_base.compute_dtype(x))
    if scale is not None:
        # The barrier stops XLA from reassociating (x·c)² into x²·c² (c² underflows to 0).
        x = jax.lax.optimization_barrier(x * scale)
    return jnp.sum(jnp.square(x))


def _norms(leaves: list[jax.Array]) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per-leaf norms (a vector), the global norm, and the raw per-leaf Σx², overflow-safe.

    One pass computes every Σx²; only if the total overflows (entries ≳ 1e19) does a single
    ``lax.cond`` run a second pass with every leaf rescaled by the exact power of two 2⁻¹⁰⁰
    (a power of two, so the rescaling is exact and its reciprocal a normal number; entries it
    sends below the normal range are negligible next to one whose square overflowed).
    """
    ssq = jnp.stack([_ssq(x) for x in leaves])
    total = jnp.sum(ssq)

    def plain(leaves):
        del leaves
        return jnp.sqrt(ssq), jnp.sqrt(total), ssq

    def rescued(leaves):
        s = jnp.stack([_ssq(x, _DOWN) for x in leaves]).astype(ssq.dtype)
        barrier = jax.lax.optimization_barrier
        return barrier(jnp.sqrt(s)) / _DOWN, barrier(jnp.sqrt(jnp.sum(s))) / _DOWN, ssq

    return jax.lax.cond(jnp.isposinf(total), rescued, plain, leaves)


def _ratio(u_norm: jax.Array, p_norm: jax.Array) -> jax.Array:
    """‖u‖/‖θ‖, defined as 0 when ‖θ‖ = 0 (a NaN norm still gives NaN)."""
    zero = p_norm == 0
    return jnp.where(zero, jnp.zeros_like(u_norm), u_norm / jnp.where(zero, 1, p_norm))


def _ratios(u_leaves, p_leaves, u_norms, un, p_norms, pn):
    """Per-leaf and global ‖u‖/‖θ‖; when a norm saturated to +inf, the ratio of the norms of
    the rescaled leaves (x·2⁻¹⁰⁰, exact), so the ratio stays finite and meaningful."""

    def plain(_):
        return _ratio(u_norms, p_norms), _ratio(un, pn)

    def rescued(_):
        su = jnp.stack([_ssq(x, _DOWN) for x in u_leaves]).astype(un.dtype)
        sp = jnp.stack([_ssq(x, _DOWN) for x in p_leaves]).astype(pn.dtype)
        return (
            _ratio(jnp.sqrt(su), jnp.sqrt(sp)),
            _ratio(jnp.sqrt(jnp.sum(su)), jnp.sqrt(jnp.sum(sp))),
        )

    saturated = jnp.isposinf(un) | jnp.isposinf(pn)
    return jax.lax.cond(saturated, rescued, plain, None)


def track(
    *, per_leaf: bool = False, name: str = "optareg"
) -> optax.GradientTransformationExtraArgs:
    r"""Pass-through transform that records diagnostics of the updates it sees.

    The updates come out unchanged, bit for bit; the state holds, for the last step, with ``u``
    the incoming updates and ``θ`` the current parameters:

    .. math::

        \texttt{grad\_norm} = \texttt{update\_norm} = \lVert u\rVert_2,\quad
        \texttt{param\_norm} = \lVert\theta\rVert_2,\quad
        \texttt{update\_ratio} = \lVert u\rVert_2 / \lVert\theta\rVert_2,

    ``sparsity`` = fraction of exact zeros in ``optax.apply_updates(θ, u)`` and ``nonfinite`` =
    number of NaN/Inf entries of ``u``. Keys are ``"<name>/<metric>"``; read them with
    :func:`metrics`.

    **Placement rule.** ``track`` measures what it receives, so its position decides the meaning:
    placed *first* it sees the raw gradients (read ``grad_norm``); placed *last* it sees the
    final step Δθ, so ``update_norm`` is ‖Δθ‖, ``update_ratio`` the effective step size ‖Δθ‖/‖θ‖
    and ``sparsity`` the sparsity of the new parameters. ``grad_norm`` and ``update_norm`` are the
    same number (the norm of the incoming updates) under two names, so that two instances read
    well, e.g. ``track(name="raw")`` first (``raw/grad_norm``) and ``track(name="step")`` last
    (``step/update_ratio``, ``step/sparsity``).

    Norms accumulate in (at least) float32, so bfloat16 parameters give float32-accurate norms.
    They are overflow-safe: only when a sum of squares exceeds the float32 range (entries
    ≳ 1e19, typical of a diverging run) does a second, rescaled pass (by an exact power of two)
    run, behind one ``lax.cond`` per call, so ``update_ratio`` stays a finite, meaningful number
    until the entries themselves are infinite. ``update_ratio`` is defined as 0 when
    ``‖θ‖ = 0`` (never NaN/Inf from the denominator). Otherwise one pass over the updates and
    parameters; no gradient evaluation. All metrics are stored as float32 scalars, except
    ``nonfinite`` (int32).

    With ``per_leaf=True`` the same metrics are also recorded per leaf, keyed by the leaf's tree
    path: ``"<name>/update_ratio/dense1/kernel"`` (a trailing Flax NNX ``.value`` is dropped). The
    per-leaf values live in params-structured trees, so the set of keys is fixed at ``init``.

    Args:
      per_leaf: also record every metric for each leaf.
      name: the prefix of the metric keys.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` (extra keyword arguments are ignored); its
      state is :class:`TrackState`.

    Example:
      >>> import jax.numpy as jnp, optax, optareg
      >>> tx = optax.chain(optax.sgd(0.1), optareg.track(name="step"))
      >>> params = {"w": jnp.array([3.0, 4.0])}
      >>> state = tx.init(params)
      >>> updates, state = tx.update({"w": jnp.array([1.0, 0.0])}, state, params)
      >>> m = optareg.metrics(state)
      >>> float(m["step/update_norm"]), float(m["step/param_norm"]), float(m["step/update_ratio"])
      (0.1, 5.0, 0.02)

    References:
      You et al., "Large Batch Training of Convolutional Networks" (LARS: the per-layer ratio
      ‖Δθ‖/‖θ‖), 2017.
    """
    if not isinstance(per_leaf, bool):
        raise TypeError(f"`per_leaf` must be a bool; got {type(per_leaf).__name__} {per_leaf!r}.")
    if not isinstance(name, str) or not name:
        raise ValueError(f"`name` must be a non-empty string; got {name!r}.")
    keys = {m: f"{name}/{m}" for m in _METRICS}

    def empty_stats():
        return {keys[m]: _zero(m) for m in _METRICS}

    def init_fn(params):
        if not per_leaf:
            return TrackState(stats=empty_stats(), per_leaf=None)
        if _base.is_params_placeholder(params):  # optax.tree.map_params probing the state
            return TrackState(stats=empty_stats(), per_leaf={keys[m]: params for m in _METRICS})
        trees = {keys[m]: jax.tree.map(lambda _, m=m: _zero(m), params) for m in _METRICS}
        return TrackState(stats=empty_stats(), per_leaf=trees)

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args
        _base.require_params(params, f"track(name={name!r})")
        treedef = jax.tree.structure(updates, is_leaf=lambda x: x is None)
        u_leaves = treedef.flatten_up_to(updates)
        p_leaves = treedef.flatten_up_to(params)
        live = [i for i, u in enumerate(u_leaves) if u is not None and u.size]
        if not live:
            return updates, state
        u_live = [u_leaves[i] for i in live]
        p_live = [p_leaves[i] for i in live]
        u_norms, un, u_ssq = _norms(u_live)
        p_norms, pn, _ = _norms(p_live)
        leaf_ratios, ratio = _ratios(u_live, p_live, u_norms, un, p_norms, pn)
        # exact zeros of optax.apply_updates(θ, u), and NaN/Inf entries of u
        zeros = _base.zero_counts(
            [
                jnp.asarray(p + u).astype(jnp.asarray(p).dtype)
                for u, p in zip(u_live, p_live, strict=True)
            ]
        )
        # Σu² is finite iff every entry is finite (or it overflowed): no extra pass in the
        # common case, an exact count behind a lax.cond otherwise.
        nonfinite = _base.nonfinite_counts(u_live, probe=u_ssq)
        sizes = [int(u.size) for u in u_live]
        values = {
            "grad_norm": un,
            "param_norm": pn,
            "update_norm": un,
            "update_ratio": ratio,
            "sparsity": sum(zeros) / sum(sizes),
            "nonfinite": sum(nonfinite),
        }
        stats = {keys[m]: jnp.asarray(values[m]).astype(_dtype(m)) for m in _METRICS}
        trees = None
        if per_leaf:
            per = {
                "grad_norm": list(u_norms),
                "param_norm": list(p_norms),
                "update_norm": list(u_norms),
                "update_ratio": list(leaf_ratios),
                "sparsity": [z / n for z, n in zip(zeros, sizes, strict=True)],
                "nonfinite": nonfinite,
            }
            trees = {}
            for m in _METRICS:
                old = treedef.flatten_up_to(state.per_leaf[keys[m]])
                for j, i in enumerate(live):
                    old[i] = jnp.asarray(per[m][j]).astype(_dtype(m))
                trees[keys[m]] = treedef.unflatten(old)
        return updates, TrackState(stats=stats, per_leaf=trees)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
