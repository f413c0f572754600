"""Diagnostics: metrics recorded in optimizer state and read back as one flat dict.

Two pieces:

* :func:`track`, a pass-through ``optax`` transform that records, at its position in the chain,
  the norms, the update/parameter ratio, the change that actually lands (``applied_update_ratio``,
  ``lost_update_fraction``), the sparsity of the would-be new parameters and a count of
  non-finite entries, all in one pass over each leaf, every ``metrics_every`` steps;
* :func:`metrics`, which walks any optimizer state and returns every metric an optareg transform
  recorded (``track``, ``sam_perturb``, ``spectral_clip``, the ``prox_*`` family ...) as one flat
  ``dict[str, jax.Array]`` with the same keys at every step.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optareg import _chain, _counters, _numerics, _paths, _validation

__all__ = ["TrackState", "metrics", "track"]

_METRICS = (
    "grad_norm",
    "param_norm",
    "update_norm",
    "update_ratio",
    "sparsity",
    "nonfinite",
    "applied_update_ratio",
    "lost_update_fraction",
)


def _has_metrics(x: Any) -> bool:
    return hasattr(x, "optareg_metrics") and not isinstance(x, type)


def _as_array(value: Any) -> jax.Array:
    """A JAX array from a metric value (unwraps Flax NNX ``OptArray`` / ``Variable`` boxes)."""
    if isinstance(value, jax.Array):
        return value
    if hasattr(value, "get_value"):
        return jnp.asarray(value.get_value())
    return jnp.asarray(value)


def find_nodes(opt_state: Any, is_node: Any) -> list[Any]:
    """The nodes of ``opt_state`` for which ``is_node`` holds, in tree order: the one walker over
    optimizer states (chains, wrappers, NNX ``opt_state``), used by :func:`metrics` and by
    :func:`optareg.averaged_params`."""
    return [x for x in jax.tree.leaves(opt_state, is_leaf=is_node) if is_node(x)]


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
    for node in find_nodes(opt_state, _has_metrics):
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


class TrackState(NamedTuple):
    """State of :func:`track`.

    Attributes:
      count: int32 step counter of shape ``()``; the statistics are computed on the steps where
        ``count % metrics_every == 0`` (step 0 included) and held in between.
      stats: the scalar metrics of the last metrics step, keyed ``"<name>/<metric>"`` (float32,
        except ``nonfinite`` which is int32).
      per_leaf: with ``per_leaf=True``, ``"<name>/<metric>"`` → a params-structured tree holding
        that metric for each leaf (scalars); ``None`` otherwise.
    """

    count: jax.Array  # int32, shape ()
    stats: dict[str, jax.Array]
    per_leaf: dict[str, Any] | None

    def optareg_metrics(self) -> dict[str, jax.Array]:
        out = dict(self.stats)
        if self.per_leaf is not None:
            for key, tree in self.per_leaf.items():
                for path, value in jax.tree_util.tree_flatten_with_path(tree)[0]:
                    out[f"{key}/{_paths.path_str(path)}"] = value
        return out


def _dtype(metric: str) -> jnp.dtype:
    return jnp.int32 if metric == "nonfinite" else jnp.float32


def _zero(metric: str) -> jax.Array:
    return jnp.zeros([], _dtype(metric))


_DOWN = 2.0**-100  # exact power-of-two rescaling: max float32 · 2⁻¹⁰⁰ ≈ 2.7e8, squares fit
_SSQ = ("u", "theta", "d")  # the three sums of squares of a leaf: u, θ and the applied change
_COUNTS = ("zeros", "nonfinite", "moved", "lost")


def _leaf_terms(u: jax.Array, p: jax.Array) -> dict[str, jax.Array]:
    """The per-entry terms of one leaf, summed in one pass by :func:`_numerics.fused_sums`.

    ``y = θ + u`` rounded to θ's dtype is what ``optax.apply_updates`` lands on (held in the
    compute dtype, see :func:`_numerics.rounded_to`); ``d = y − θ`` is the change that lands.
    Besides the squares, the squares of ``u`` and ``θ`` times the exact power of two 2⁻¹⁰⁰: the
    norms when a plain sum of squares overflows (entries ≳ 1e19), with no second pass.
    """
    p = jnp.asarray(p)
    dt = _numerics.compute_dtype(p, u)
    y = _numerics.rounded_to(jnp.asarray(p + u).astype(dt), p.dtype)
    u32, t32 = u.astype(dt), p.astype(dt)
    d = y - t32
    # A runtime scale (not a constant XLA could fold into c² = 2⁻²⁰⁰, which underflows).
    down = jax.lax.optimization_barrier(jnp.asarray(_DOWN, dt))
    i32 = jnp.int32
    terms = {k: x * x for k, x in zip(_SSQ, (u32, t32, d), strict=True)}
    terms |= {f"{k}_down": jnp.square(x * down) for k, x in (("u", u32), ("theta", t32))}
    # Four counts, as few operations as the definitions allow: nonfinite = n − finite, and
    # lost = #(u ≠ 0, d = 0) = #(d = 0 or u = 0) − #(u = 0). (u = 0 lands on θ, but d is NaN
    # there when θ is ±inf or NaN, hence the "or".)
    terms |= {
        "zeros": (y == 0).astype(i32),
        "finite": jnp.isfinite(u32).astype(i32),
        "moved": (u32 != 0).astype(i32),
        "unchanged": ((d == 0) | (u32 == 0)).astype(i32),
    }
    return terms


def _leaf_stats(u: jax.Array, p: jax.Array) -> dict[str, Any]:
    """One leaf's counts, its norms and its rescaled norms (``norm·2⁻¹⁰⁰``), from one pass.

    Overflow-safe: where a plain sum of squares saturated to +inf the norm comes from the
    rescaled sum (``sqrt(s)/2⁻¹⁰⁰``, +inf only when the norm itself exceeds float32).
    """
    terms = _leaf_terms(u, p)
    s = dict(zip(terms, _numerics.fused_sums(list(terms.values())), strict=True))
    rho = {k: jnp.sqrt(s[f"{k}_down"]) for k in ("u", "theta")}
    norms = {k: jnp.where(jnp.isposinf(s[k]), rho[k] / _DOWN, jnp.sqrt(s[k])) for k in rho}
    # ‖d‖ beyond float32 (+inf): d = (θ + u rounded) − θ is u up to one rounding of θ + u, so
    # the rescaled ‖u‖ stands in for it (the applied ratio is then the update ratio, within
    # ε·(1 + ratio) with ε the unit roundoff of θ's dtype).
    norms["d"] = jnp.sqrt(s["d"])
    rho["d"] = jnp.where(jnp.isposinf(s["d"]), rho["u"], norms["d"] * _DOWN)
    n = jnp.int32(jnp.size(u))
    counts = {
        "zeros": s["zeros"],
        "nonfinite": n - s["finite"],
        "moved": s["moved"],
        "lost": s["unchanged"] - (n - s["moved"]),
    }
    return {"counts": counts, "norm": norms, "rho": rho}


def _empty_leaf_stats(u: jax.Array, p: jax.Array) -> dict[str, Any]:
    """What :func:`_leaf_stats` returns, filled with zeros (the skipped steps)."""
    return jax.tree.map(jnp.zeros_like, jax.eval_shape(_leaf_stats, u, p))


def _ratio(num: jax.Array, den: jax.Array) -> jax.Array:
    """``num/den``, defined as 0 when ``den = 0`` (a NaN still gives NaN)."""
    zero = den == 0
    return jnp.where(zero, jnp.zeros_like(num), num / jnp.where(zero, 1, den))


def _combine(norms: list[jax.Array]) -> jax.Array:
    """``sqrt(Σ nᵢ²)`` of per-leaf norms without overflow (scaled by their maximum), in their
    dtype (float64 norms stay float64 until the metrics are cast to float32, so that ratios of
    norms below float32's range are still right)."""
    n = jnp.stack(norms)
    n = n.astype(jnp.promote_types(n.dtype, jnp.float32))
    top = jnp.max(n)
    ok = (top >= jnp.finfo(n.dtype).tiny) & jnp.isfinite(top)  # a subnormal is flushed to 0
    safe = jnp.where(ok, top, 1)
    return jnp.where(ok, safe * jnp.sqrt(jnp.sum(jnp.square(n / safe))), top)


def _metrics_of(counts, norm, rho, size):
    """The metrics of one leaf (or of the whole tree) from its counts and norms."""

    def ratio(k):
        # A norm beyond float32 (+inf): the ratio of the rescaled norms, finite and meaningful.
        scaled = (jnp.isinf(norm[k]) | jnp.isinf(norm["theta"])) & (rho["theta"] > 0)
        return jnp.where(scaled, _ratio(rho[k], rho["theta"]), _ratio(norm[k], norm["theta"]))

    values = {
        "grad_norm": norm["u"],
        "param_norm": norm["theta"],
        "update_norm": norm["u"],
        "update_ratio": ratio("u"),
        "sparsity": _numerics.fraction(counts["zeros"], size),
        "nonfinite": counts["nonfinite"],
        "applied_update_ratio": ratio("d"),
        "lost_update_fraction": _ratio(
            jnp.asarray(counts["lost"], jnp.float32), jnp.asarray(counts["moved"], jnp.float32)
        ),
    }
    return {m: jnp.asarray(values[m]).astype(_dtype(m)) for m in _METRICS}


def _tree_metrics(per: list[dict[str, Any]], sizes: list[int]) -> dict[str, jax.Array]:
    """The global metrics from the per-leaf statistics (scalars only: no pass over the data)."""
    total = sum(sizes)
    counts = {
        k: _numerics.count_total([s["counts"][k] for s in per], total) for k in per[0]["counts"]
    }
    norm = {k: _combine([s["norm"][k] for s in per]) for k in _SSQ}
    rho = {k: _combine([s["rho"][k] for s in per]) for k in _SSQ}
    return _metrics_of(counts, norm, rho, total)


def _hold(on: jax.Array, new: dict[str, jax.Array], old: dict[str, jax.Array]):
    """``new`` on a metrics step, ``old`` otherwise (scalars)."""
    return {k: jnp.where(on, new[k], old[k]) for k in new}


def _after_stats(u: jax.Array, stats: Any) -> jax.Array:
    """``u``, unchanged bit for bit, but data-dependent on ``stats`` (on CPU only).

    The statistics read θ; a later in-place update of θ (donated parameters) must wait for
    them, or XLA:CPU copies θ first (a fresh params-sized buffer, i.e. page faults, on every
    step). ``flag`` is always false (no value is ``> inf``, NaN included) but XLA cannot know.
    """
    total = sum(jnp.sum(jnp.asarray(v, jnp.float32)) for v in jax.tree.leaves(stats))
    flag = total > jnp.inf

    def cpu(u, flag):
        return jnp.where(flag, jnp.zeros_like(u), u)

    return jax.lax.platform_dependent(u, flag, cpu=cpu, default=lambda u, flag: u)


def track(
    *, per_leaf: bool = False, name: str = "optareg", metrics_every: int = 1
) -> optax.GradientTransformationExtraArgs:
    r"""Pass-through transform that records diagnostics of the updates it sees.

    The updates come out unchanged, bit for bit; the state holds, for the last metrics step,
    with ``u`` the incoming updates, ``θ`` the current parameters and
    ``y = optax.apply_updates(θ, u)`` (rounded to θ's dtype):

    .. math::

        \texttt{grad\_norm} = \texttt{update\_norm} = \lVert u\rVert_2,\quad
        \texttt{param\_norm} = \lVert\theta\rVert_2,\quad
        \texttt{update\_ratio} = \lVert u\rVert_2 / \lVert\theta\rVert_2,\quad
        \texttt{applied\_update\_ratio} = \lVert y - \theta\rVert_2 / \lVert\theta\rVert_2,

    ``lost_update_fraction`` = the fraction of the entries with ``u ≠ 0`` whose applied change
    ``y − θ`` is 0 (updates smaller than half a unit in the last place of θ: 1.0 for bfloat16
    weights of 1.0 under a step of ``−1e-5``, 0.0 in float32; 0 when no entry has ``u ≠ 0``),
    ``sparsity`` = the fraction of exact zeros in ``y`` and ``nonfinite`` = the number of
    NaN/Inf entries of ``u``. Keys are ``"<name>/<metric>"``; read them with :func:`metrics`.

    **Placement rule.** ``track`` measures what it receives, so its position decides the meaning:
    placed *first* it sees the raw gradients (read ``grad_norm``); placed *last* it sees the
    final step Δθ, so ``update_norm`` is ‖Δθ‖, ``update_ratio`` the effective step size ‖Δθ‖/‖θ‖,
    ``applied_update_ratio`` / ``lost_update_fraction`` how much of it survives rounding to the
    parameters' dtype, and ``sparsity`` the sparsity of the new parameters. ``grad_norm`` and
    ``update_norm`` are the same number under two names, so that two instances read well, e.g.
    ``track(name="raw")`` first (``raw/grad_norm``) and ``track(name="step")`` last
    (``step/update_ratio``, ``step/sparsity``).

    **Cost.** Every statistic of a leaf comes from one pass over it (one fused reduction; the
    counts are exact int32 counts, ±0, NaN, Inf and subnormals included: a subnormal counts as
    the backend's arithmetic sees it, zero under XLA:CPU's flush-to-zero). With
    ``metrics_every = k`` the pass runs on the steps where the transform's own counter is a
    multiple of ``k`` (step 0 included); on the other steps the state keeps the last values and
    nothing is read. The keys never change. On XLA:CPU a skipped step is free only when the
    statistics' operands exist anyway: placed first, they are the gradients (an input); placed
    after the optimizer, XLA still materializes the update for the conditional, which costs about
    as much as the statistics (``bench`` suite 8, ``docs/performance.md``).

    Norms accumulate in (at least) float32, so bfloat16 parameters give float32-accurate norms.
    They are overflow-safe: the same pass also sums the squares of ``u`` and ``θ`` rescaled by
    the exact power of two 2⁻¹⁰⁰, and where a plain sum of squares exceeds the float32 range
    (entries ≳ 1e19, typical of a diverging run) the norm comes from the rescaled sum, so the
    ratios stay finite, meaningful numbers until the entries themselves are infinite. Ratios are
    0 when ``‖θ‖ = 0`` (never NaN/Inf from the denominator). All metrics are float32 scalars,
    except ``nonfinite`` (int32).

    With ``per_leaf=True`` the same metrics are also recorded per leaf, keyed by the leaf's tree
    path: ``"<name>/update_ratio/dense1/kernel"`` (a trailing Flax NNX ``.value`` is dropped). The
    per-leaf values live in params-structured trees, so the set of keys is fixed at ``init``.

    Args:
      per_leaf: also record every metric for each leaf.
      name: the prefix of the metric keys.
      metrics_every: compute the statistics every ``metrics_every`` steps (an int ≥ 1; under
        ``optax.inject_hyperparams`` pass ``static_args=("metrics_every",)`` to keep it a
        Python int: injected, it is a traced value and every step traces the ``lax.cond``).

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
      >>> bf16 = {"w": jnp.ones(4, jnp.bfloat16)}  # a step of -1e-5 does not move bf16 weights
      >>> tx = optareg.track(name="bf16")
      >>> _, state = tx.update({"w": jnp.full(4, -1e-5, jnp.bfloat16)}, tx.init(bf16), bf16)
      >>> m = optareg.metrics(state)
      >>> float(m["bf16/lost_update_fraction"]), float(m["bf16/applied_update_ratio"])
      (1.0, 0.0)

    References:
      You et al., "Large Batch Training of Convolutional Networks" (LARS: the per-layer ratio
      ‖Δθ‖/‖θ‖), 2017.
    """
    _validation.check_bool("per_leaf", per_leaf)
    if not isinstance(name, str) or not name:
        raise ValueError(f"`name` must be a non-empty string; got {name!r}.")
    every = _validation.check_metrics_every(metrics_every)
    always = isinstance(every, int) and every == 1  # no lax.cond at all
    keys = {m: f"{name}/{m}" for m in _METRICS}

    def empty_stats():
        return {keys[m]: _zero(m) for m in _METRICS}

    def init_fn(params):
        count = _counters.init_count()
        if not per_leaf:
            return TrackState(count=count, stats=empty_stats(), per_leaf=None)
        if _validation.is_params_placeholder(params):  # optax.tree.map_params probing the state
            trees = {keys[m]: params for m in _METRICS}
            return TrackState(count=count, stats=empty_stats(), per_leaf=trees)
        trees = {keys[m]: jax.tree.map(lambda _, m=m: _zero(m), params) for m in _METRICS}
        return TrackState(count=count, stats=empty_stats(), per_leaf=trees)

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args
        _validation.require_params(params, f"track(name={name!r})")
        treedef = jax.tree.structure(updates, is_leaf=lambda x: x is None)
        u_leaves = treedef.flatten_up_to(updates)
        p_leaves = treedef.flatten_up_to(params)
        live = [i for i, u in enumerate(u_leaves) if u is not None and jnp.size(u)]
        count = _counters.increment(state.count)
        if not live:
            return updates, state._replace(count=count)
        on = jnp.asarray(True) if always else state.count % every == 0
        pairs = [(u_leaves[i], p_leaves[i]) for i in live]
        if always:
            per = [_leaf_stats(u, p) for u, p in pairs]
        else:  # one conditional for all leaves: XLA turns small per-leaf ones into selects,
            # which compute the statistics on every step (measured: slower than no skipping)
            per = jax.lax.cond(
                on,
                lambda: [_leaf_stats(u, p) for u, p in pairs],
                lambda: [_empty_leaf_stats(u, p) for u, p in pairs],
            )
        out = list(u_leaves)
        for i, leaf in zip(live, per, strict=True):  # each leaf's update waits for its stats
            out[i] = _after_stats(u_leaves[i], leaf)
        sizes = [int(jnp.size(u_leaves[i])) for i in live]
        stats = _hold(on, _tree_metrics(per, sizes), {m: state.stats[keys[m]] for m in _METRICS})
        trees = None
        if per_leaf:
            values = [  # once per leaf, not once per (leaf, metric)
                _metrics_of(leaf["counts"], leaf["norm"], leaf["rho"], n)
                for leaf, n in zip(per, sizes, strict=True)
            ]
            trees = {}
            for m in _METRICS:
                flat = treedef.flatten_up_to(state.per_leaf[keys[m]])
                for value, i in zip(values, live, strict=True):
                    flat[i] = jnp.where(on, value[m], flat[i])
                trees[keys[m]] = treedef.unflatten(flat)
        new_stats = {keys[m]: stats[m] for m in _METRICS}
        return treedef.unflatten(out), TrackState(count=count, stats=new_stats, per_leaf=trees)

    tx = optax.GradientTransformationExtraArgs(init_fn, update_fn)
    return _chain.tag(tx, "diagnostic", name)
