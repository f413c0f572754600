"""Parameter averaging (EMA, SWA) as optimizer state, and weight decay set by its timescale.

Two pass-through transforms keep an average of the parameters each step lands on,
``θ_{t+1} = θ_t + u_t`` (``u_t`` the update they receive, returned unchanged, bit for bit):

* :func:`ema_params`: an exponential moving average, ``a_n = β·a_{n−1} + (1 − β)·θ_{t+1}``
  (debiased by ``1 − β^n``, or started at ``a_1 = θ_{t+1}``);
* :func:`swa`: the uniform average (stochastic weight averaging), as a running mean.

Both are one code path (:func:`_averaging`): a per-step weight ``w_n`` and the lerp
``a_n = a_{n−1} + w_n·(θ_{t+1} − a_{n−1})``, which is the EMA update for ``w_n = 1 − β`` and the
running mean for ``w_n = 1/n``. They go **last** in a chain, after the optimizer, the post-step
transforms and ``low_precision_updates`` (chain kind ``"averaging"``), so that ``θ_{t+1}`` is
what ``optax.apply_updates`` lands on. :func:`averaged_params` reads the average back, by the
state's type, from anywhere in a nested optimizer state.

:func:`weight_decay_for_timescale` / :func:`decay_timescale` convert between AdamW's weight
decay and the timescale ``τ_iter = 1/(η·λ)`` of the average it makes of the updates.
:func:`recompute_batch_stats` refreshes Flax NNX BatchNorm statistics for averaged weights.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optareg import _chain, _counters, _masking, _numerics, _paths, _validation, diagnostics

__all__ = [
    "AveragingState",
    "averaged_params",
    "decay_timescale",
    "ema_params",
    "recompute_batch_stats",
    "swa",
    "weight_decay_for_timescale",
]

_DEFAULT_DECAY = 0.999
_METRIC = "distance_ratio"


class AveragingState(NamedTuple):
    """State of :func:`ema_params` and :func:`swa` (found by type by :func:`averaged_params`).

    Attributes:
      count: int32 ``t`` of shape ``()``: calls so far (saturating).
      n: int32 of shape ``()``: averaging steps so far.
      average: a params-structured tree of ``a_n`` in the average's dtype (``MaskedNode`` where
        masked out); the average is ``a_n / (1 − decay_product)``.
      decay_product: ``Π β`` over the averaging steps for a debiased EMA (``β^n`` for a constant
        ``β``), else 0, so that the division is by exactly 1; default float dtype, shape ``()``.
      stats: ``{"<name>/distance_ratio": float32}``, also the state's name for
        :func:`averaged_params`.
    """

    count: jax.Array  # int32, shape ()
    n: jax.Array  # int32, shape ()
    average: Any
    decay_product: jax.Array  # float, shape ()
    stats: dict[str, jax.Array]

    def optareg_metrics(self) -> dict[str, jax.Array]:
        return dict(self.stats)


# A rule maps (n before this step, the decay product) to (w_n, the new decay product).
Rule = Callable[[jax.Array, jax.Array], tuple[jax.Array, jax.Array]]


def _float() -> Any:
    """The default float dtype (float64 under x64): the decay product and β are held in it."""
    return jnp.result_type(float)


def _check_dtype(dtype: Any) -> Any:
    if dtype is None:
        return None
    try:
        dt = jnp.dtype(dtype)
    except TypeError as e:
        raise TypeError(f"`dtype` must be None or a floating dtype; got {dtype!r}.") from e
    if not jnp.issubdtype(dt, jnp.floating):
        raise ValueError(f"`dtype` must be None or a floating dtype (float32 ...); got {dt}.")
    return dt


def _check_name(name: Any) -> str:
    if not isinstance(name, str) or not name or "/" in name:
        raise ValueError(f"`name` must be a non-empty string without '/'; got {name!r}.")
    return name


def _average_dtype(p: Any, dtype: Any) -> Any:
    """The dtype of a leaf's average: ``dtype``, or the parameter's, at least float32."""
    return dtype if dtype is not None else _numerics.compute_dtype(jnp.asarray(p).dtype)


def _landed(p: jax.Array, u: jax.Array) -> jax.Array:
    """``θ_{t+1}`` as ``optax.apply_updates(θ, u)`` lands on it (rounded to θ's dtype), held in
    the compute dtype (``rounded_to``: XLA may not drop the rounding under ``jit``)."""
    p = jnp.asarray(p)
    dt = _numerics.compute_dtype(p, u)
    return _numerics.rounded_to(jnp.asarray(p + u).astype(dt), p.dtype)


_DOWN = 2.0**-100  # exact power-of-two rescaling (as in track): squares of float32 values fit


def _sums_of_squares(pairs: list) -> tuple[jax.Array, jax.Array]:
    """``(Σ‖ā − θ‖², Σ‖θ‖²)``, each leaf's in one pass (``fused_sums``), from the sums scaled by
    2⁻²⁰⁰ where a plain one overflows (the ratio is the same; the scale is a runtime value, so
    that XLA cannot fold it to 0)."""
    down = jax.lax.optimization_barrier(jnp.asarray(_DOWN, pairs[0][1].dtype))
    per_leaf = [
        _numerics.fused_sums(
            [jnp.square(d), jnp.square(t), jnp.square(d * down), jnp.square(t * down)]
        )
        for d, t in ((a - t, t) for a, t in pairs)
    ]
    num, den, num_down, den_down = (sum(s[i] for s in per_leaf) for i in range(4))
    big = jnp.isinf(num) | jnp.isinf(den)
    return jnp.where(big, num_down, num), jnp.where(big, den_down, den)


def _distance_ratio(averages: list, thetas: list) -> jax.Array:
    """``‖ā − θ‖ / ‖θ‖`` over the leaves (0 where ``‖θ‖ = 0``), float32, overflow-safe."""
    if not averages:
        return jnp.zeros([], jnp.float32)
    num, den = _sums_of_squares(list(zip(averages, thetas, strict=True)))
    ratio = jnp.sqrt(num) / jnp.sqrt(jnp.where(den == 0, 1, den))
    return jnp.where(den == 0, 0, ratio).astype(jnp.float32)


def _averaging(
    rule: Rule,
    *,
    debias: bool,
    start_step: Any,
    every: Any,
    dtype: Any,
    mask: Any,
    name: str,
    metrics_every: Any,
) -> optax.GradientTransformationExtraArgs:
    """The one path of the averaging transforms: ``a_n = a_{n−1} + w_n·(θ_{t+1} − a_{n−1})`` on
    the averaging steps, with ``(w_n, decay product)`` from ``rule``; updates pass through."""
    key = f"{name}/{_METRIC}"
    always = (
        isinstance(start_step, int) and isinstance(every, int) and (start_step, every) == (0, 1)
    )
    metrics_every = _validation.check_metrics_every(metrics_every)

    def init_fn(params):
        if _validation.is_params_placeholder(params):  # optax.tree.map_params: params-shaped
            average = params
        else:
            average = jax.tree.map(
                lambda p: jnp.zeros(jnp.shape(p), _average_dtype(p, dtype)), params
            )
        product = jnp.asarray(1.0 if debias else 0.0, _float())
        stats = {key: jnp.zeros([], jnp.float32)}
        return AveragingState(
            _counters.init_count(), jnp.zeros([], jnp.int32), average, product, stats
        )

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args
        _validation.require_params(params, name)
        t = state.count
        step = True if always else (t >= start_step) & ((t - start_step) % every == 0)
        w, product = rule(state.n, state.decay_product)
        n = _counters.increment(state.n)
        if not always:
            product = jnp.where(step, product, state.decay_product)
            n = jnp.where(step, n, state.n)
        treedef = jax.tree.structure(state.average)
        flat_a = treedef.flatten_up_to(state.average)
        flat_u, flat_p = treedef.flatten_up_to(updates), treedef.flatten_up_to(params)
        new_a, thetas = [], []
        for a, u, p in zip(flat_a, flat_u, flat_p, strict=True):
            theta = _landed(p, u).astype(a.dtype)
            moved = a + w.astype(a.dtype) * (theta - a)
            new_a.append(moved if always else jnp.where(step, moved, a))
            thetas.append(theta)

        def compute():
            scale = (1 - product).astype(_float())
            pairs = zip(new_a, thetas, strict=True)
            shown = [jnp.where(n > 0, a / scale.astype(a.dtype), t) for a, t in pairs]
            return {key: _distance_ratio(shown, thetas)}

        stats = _counters.on_metrics_step(metrics_every, t, compute, state.stats)
        average = treedef.unflatten(new_a)
        return updates, AveragingState(_counters.increment(t), n, average, product, stats)

    tx = optax.GradientTransformationExtraArgs(init_fn, update_fn)
    return _chain.tag(_masking.masked_if(tx, mask), "averaging", name)


def _is_default_decay(decay: Any) -> bool:
    """``decay`` is the default 0.999 (also as the array ``optax.inject_hyperparams`` makes of
    it); a traced value cannot be told apart and counts as the default."""
    if isinstance(decay, jax.core.Tracer):
        return True
    if callable(decay) or isinstance(decay, (bool, str)) or decay is None:
        return False
    arr = np.asarray(decay)
    return arr.ndim == 0 and float(arr) == float(np.asarray(_DEFAULT_DECAY, arr.dtype))


def _beta(decay: Any, timescale: Any) -> optax.ScalarOrSchedule:
    """β as a constant or a schedule of ``n``: ``decay``, or ``1 − 1/τ`` (computed as Python
    floats for a number, so that ``timescale=100`` gives exactly the float ``decay=0.99``)."""
    if timescale is None:
        _validation.check_scalar("decay", decay, low=0.0, high=1.0, high_inclusive=False)
        return decay
    if not _is_default_decay(decay):
        raise ValueError(
            "ema_params: `timescale` and `decay` were both given; pass one of them "
            "(timescale=τ means decay = 1 − 1/τ)."
        )
    _validation.check_scalar("timescale", timescale, low=1.0)
    if callable(timescale):
        return lambda n: 1.0 - 1.0 / timescale(n)
    if isinstance(timescale, (int, float)):
        return 1.0 - 1.0 / float(timescale)
    return 1.0 - 1.0 / jnp.asarray(timescale)


def _ema_rule(beta: optax.ScalarOrSchedule, debias: bool) -> Rule:
    scheduled = callable(beta)

    def rule(n, product):
        b = jnp.asarray(_counters.evaluate(beta, n), _float())
        if not debias:  # the first averaging step copies θ (w = 1), as AveragedModel does
            return jnp.where(n == 0, 1.0, 1 - b).astype(_float()), product
        # β^n from n (one rounding) for a constant β; the running product for a schedule
        new_product = product * b if scheduled else b ** (n + 1).astype(_float())
        return 1 - b, new_product

    return rule


def _swa_rule(n, product):
    return 1 / (n + 1).astype(_float()), product


def ema_params(
    decay: optax.ScalarOrSchedule = _DEFAULT_DECAY,
    *,
    timescale: optax.ScalarOrSchedule | None = None,
    debias: bool = True,
    start_step: int = 0,
    every: int = 1,
    dtype: Any = None,
    mask: _validation.MaskOrFn = None,
    name: str = "ema",
    metrics_every: int = 1,
) -> optax.GradientTransformationExtraArgs:
    r"""An exponential moving average of the parameters, kept in the optimizer state.

    A pass-through transform: the updates leave unchanged (bit for bit). Its counter ``t``
    counts calls from 0; step ``t`` is an *averaging step* iff ``t ≥ start_step`` and
    ``(t − start_step) % every == 0``, and ``n`` counts the averaging steps so far. On the
    ``n``-th averaging step, with ``θ_{t+1} = θ_t + u_t`` the parameters this step lands on
    (as ``optax.apply_updates`` rounds them):

    .. math::

        a_n = β_n·a_{n−1} + (1 − β_n)·θ_{t+1},\qquad
        \bar θ = \begin{cases} a_n / (1 − \prod_{k ≤ n} β_k) & \text{debias (}a_0 = 0\text{)}\\
        a_n & \text{otherwise (}a_1 = θ_{t+1}\text{)}\end{cases}

    ``debias=False`` is ``torch.optim.swa_utils.AveragedModel`` with
    ``get_ema_multi_avg_fn(β)``. The average has timescale ``τ = 1/(1 − β)`` averaging steps
    (``timescale=τ`` sets ``β = 1 − 1/τ``). ``β`` may be a schedule, evaluated on ``n`` (0 on
    the first averaging step; under ``optax.inject_hyperparams`` optax evaluates it instead, on
    its own call count). Read the average with :func:`averaged_params`.

    Place it **last**: after the optimizer, the post-step transforms and
    ``low_precision_updates`` (it must average the parameters actually landed on);
    :func:`optareg.chain` checks this. Inside ``optax.MultiSteps`` it averages once per
    optimizer step.

    Metric ``"<name>/distance_ratio"`` = ``‖θ̄ − θ_{t+1}‖ / ‖θ_{t+1}‖`` over the averaged leaves
    (0 before the first averaging step), every ``metrics_every`` calls.

    Args:
      decay: ``β`` in ``[0, 1)``, or a schedule of ``n``. Default 0.999.
      timescale: ``τ ≥ 1`` in averaging steps instead of ``decay`` (``β = 1 − 1/τ``); giving
        both (a ``decay`` other than the default) is a ``ValueError``.
      debias: divide by ``1 − Πβ`` (from ``a_0 = 0``) instead of starting at ``a_1 = θ``.
      start_step: the first call ``t`` that may average (int ≥ 0).
      every: average every ``every`` calls from ``start_step`` (int ≥ 1).
      dtype: the average's dtype; ``None``: the parameter's, at least float32 (bfloat16
        params get a float32 average).
      mask: optax mask (``True`` = average); masked-out leaves hold no average.
      name: the state's name (metrics prefix, ``averaged_params(name=...)``).
      metrics_every: compute the metric every ``metrics_every`` calls.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose state is an :class:`AveragingState`.

    Example:
      >>> import jax.numpy as jnp, optax, optareg
      >>> tx = optareg.chain(optax.sgd(1.0), optareg.ema_params(decay=0.5, debias=False))
      >>> params = {"w": jnp.zeros(2)}
      >>> state = tx.init(params)
      >>> for g in (-1.0, -1.0):  # θ goes 1, 2
      ...     u, state = tx.update({"w": jnp.full(2, g)}, state, params)
      ...     params = optax.apply_updates(params, u)
      >>> optareg.averaged_params(state, params)["w"]  # a_1 = 1, a_2 = 0.5·1 + 0.5·2
      Array([1.5, 1.5], dtype=float32)

    References:
      Polyak & Juditsky, "Acceleration of stochastic approximation by averaging", 1992.
      Izmailov et al., "Averaging weights leads to wider optima and better generalization",
      UAI 2018 (``torch.optim.swa_utils``).
    """
    _validation.check_bool("debias", debias)
    beta = _beta(decay, timescale)
    _masking.check_mask("mask", mask)
    return _averaging(
        _ema_rule(beta, debias),
        debias=debias,
        start_step=_validation.check_int_or_traced("start_step", start_step, low=0),
        every=_validation.check_int_or_traced("every", every, low=1),
        dtype=_check_dtype(dtype),
        mask=mask,
        name=_check_name(name),
        metrics_every=metrics_every,
    )


def swa(
    start_step: int = 0,
    every: int = 1,
    *,
    dtype: Any = None,
    mask: _validation.MaskOrFn = None,
    name: str = "swa",
    metrics_every: int = 1,
) -> optax.GradientTransformationExtraArgs:
    r"""Stochastic weight averaging: the uniform average of the parameters, as optimizer state.

    Pass-through like :func:`ema_params`, with the same averaging steps (``t ≥ start_step``,
    ``(t − start_step) % every == 0``). On the ``n``-th one it updates the running mean

    .. math::

        a_n = a_{n−1} + (θ_{t+1} − a_{n−1}) / n = \frac1n \sum_{k=1}^{n} θ_{t_k+1},

    which stays within rounding of the mean (no growing sum), as
    ``torch.optim.swa_utils.AveragedModel`` does by default. Read it with
    :func:`averaged_params`; recompute BatchNorm statistics for it
    (:func:`recompute_batch_stats`). Metric ``"<name>/distance_ratio"`` as for
    :func:`ema_params`.

    Args:
      start_step: the first call ``t`` that averages (int ≥ 0): typically where the learning
        rate reaches its SWA plateau.
      every: average every ``every`` calls (int ≥ 1), e.g. once per epoch.
      dtype: the average's dtype; ``None``: the parameter's, at least float32.
      mask: optax mask (``True`` = average); masked-out leaves hold no average.
      name: the state's name (metrics prefix, ``averaged_params(name=...)``).
      metrics_every: compute the metric every ``metrics_every`` calls.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose state is an :class:`AveragingState`.

    Example:
      >>> import jax.numpy as jnp, optax, optareg
      >>> tx = optareg.chain(optax.sgd(1.0), optareg.swa(start_step=1))
      >>> params, state = {"w": jnp.zeros(1)}, tx.init({"w": jnp.zeros(1)})
      >>> for _ in range(4):  # θ goes 1, 2, 3, 4; steps 1..3 average 2, 3, 4
      ...     u, state = tx.update({"w": -jnp.ones(1)}, state, params)
      ...     params = optax.apply_updates(params, u)
      >>> optareg.averaged_params(state, params)["w"]
      Array([3.], dtype=float32)

    References:
      Izmailov et al., "Averaging weights leads to wider optima and better generalization",
      UAI 2018.
    """
    _masking.check_mask("mask", mask)
    return _averaging(
        _swa_rule,
        debias=False,
        start_step=_validation.check_int_or_traced("start_step", start_step, low=0),
        every=_validation.check_int_or_traced("every", every, low=1),
        dtype=_check_dtype(dtype),
        mask=mask,
        name=_check_name(name),
        metrics_every=metrics_every,
    )


# --------------------------------------------------------------------------------------------
# reading the average back
# --------------------------------------------------------------------------------------------


def _is_state(x: Any) -> bool:
    return isinstance(x, AveragingState)


def _state_name(state: AveragingState) -> str:
    (key,) = state.stats
    return key.rsplit("/", 1)[0]


def _unwrap(tree: Any) -> Any:
    """``tree`` with Flax NNX variable boxes (``OptVariable`` ...) replaced by their arrays."""
    types = _paths.nnx_variable_types()
    if not types:
        return tree
    return jax.tree.map(
        lambda x: diagnostics._as_array(x) if isinstance(x, types) else x,
        tree,
        is_leaf=lambda x: isinstance(x, types),
    )


def _select(opt_state: Any, name: str | None) -> AveragingState:
    found = diagnostics.find_nodes(opt_state, _is_state)
    names = [_state_name(s) for s in found]
    if not found:
        raise ValueError(
            "averaged_params: no averaging state in `opt_state`; it needs one: chain "
            "optareg.ema_params(...) or optareg.swa(...) last, after the optimizer: "
            "optareg.chain(opt, optareg.ema_params())."
        )
    chosen = [s for s, n in zip(found, names, strict=True) if name is None or n == name]
    if len(chosen) != 1:
        why = "several averaging states" if chosen else f"no averaging state named {name!r}"
        raise ValueError(
            f"averaged_params: {why} in opt_state (names: {names}); pass name=<one of them>, "
            "and give each averaging transform its own name."
        )
    return chosen[0]


def _is_empty(x: Any) -> bool:
    return x is None or isinstance(x, optax.MaskedNode)


def averaged_params(opt_state: Any, params: Any, *, name: str | None = None) -> Any:
    """The averaged parameters recorded by :func:`ema_params` / :func:`swa` in ``opt_state``.

    Finds the :class:`AveragingState` by type anywhere in a nested optimizer state (chains,
    ``optax.masked``, ``optax.inject_hyperparams``, ``optax.MultiSteps``, the ``opt_state`` of
    a Flax NNX ``nnx.Optimizer``) and returns a tree like ``params``: averaged leaves replaced
    by the (debiased) average ``a_n/(1 − Πβ)`` cast to the parameter's dtype, the others (masked
    out) taken from ``params``. Before the first averaging step it returns ``params``'
    values unchanged. Works under ``jit``.

    Args:
      opt_state: any optimizer state holding at least one averaging state.
      params: the current parameters (their tree, dtypes and the unaveraged leaves); an NNX
        ``nnx.State`` of ``Param`` variables gives one back (``nnx.update(model, result)``).
      name: which averaging state, when there are several (their ``name=``).

    Returns:
      A tree like ``params``.

    Raises:
      ValueError: no averaging state; several and no ``name`` (the message lists the names);
        no state of that ``name``; an average whose tree does not match ``params``.

    Example:
      >>> import jax.numpy as jnp, optax, optareg
      >>> tx = optareg.chain(optax.sgd(1.0), optareg.ema_params(0.9), optareg.swa())
      >>> state = tx.init({"w": jnp.zeros(1)})
      >>> optareg.averaged_params(state, {"w": jnp.zeros(1)})
      Traceback (most recent call last):
      ...
      ValueError: averaged_params: several averaging states in opt_state (names: ['ema', 'swa'])...
    """
    state = _select(opt_state, name)
    n, product = diagnostics._as_array(state.n), diagnostics._as_array(state.decay_product)
    average = _unwrap(state.average)

    def one(a, p):
        if _is_empty(a):
            return p

        def cast(leaf):
            value = (a / (1 - product).astype(a.dtype)).astype(jnp.asarray(leaf).dtype)
            return jnp.where(n > 0, value, leaf)

        return jax.tree.map(cast, p)

    try:
        return jax.tree.map(one, average, params, is_leaf=_is_empty)
    except (ValueError, TypeError) as e:
        raise ValueError(
            f"averaged_params: the average of {_state_name(state)!r} does not match the tree "
            f"of `params`.\n  average: {jax.tree.structure(average)}\n  params:  "
            f"{jax.tree.structure(params)}"
        ) from e


# --------------------------------------------------------------------------------------------
# timescales of weight decay
# --------------------------------------------------------------------------------------------


def _positive(name: str, value: Any) -> float:
    _validation.check_scalar(name, value, low=0.0, low_inclusive=False, allow_schedule=False)
    return float(value)


def _iterations(steps_per_epoch: Any) -> float:
    """Iterations per unit of the timescale: ``steps_per_epoch``, or 1."""
    if steps_per_epoch is None:
        return 1.0
    return float(_validation.check_int("steps_per_epoch", steps_per_epoch, low=1))


def weight_decay_for_timescale(
    timescale: float, learning_rate: float, *, steps_per_epoch: int | None = None
) -> float:
    r"""The AdamW weight decay ``λ`` whose averaging timescale is ``timescale``.

    With decoupled decay in the ``"pytorch"`` convention (decay per step ``η_t·λ``, as
    ``optax.adamw`` and ``torch.optim.AdamW``), ``θ_{t+1} = (1 − η λ)·θ_t − η·u_t``: the weights
    are an exponential moving average of the recent updates ``−u_t/λ`` with decay
    ``β = 1 − ηλ``, i.e. timescale ``τ_iter = 1/(ηλ)`` iterations. Wang & Aitchison find the best
    ``τ`` in *epochs* roughly constant as model and data grow, so set λ from it:

    .. math::

        λ = \frac{1}{η·τ_{iter}},\qquad τ_{iter} = τ·\text{steps\_per\_epoch}
        \text{ (or } τ \text{ when no steps\_per\_epoch is given).}

    ``learning_rate`` is the peak rate ``η``. In the ``"paper"`` convention (decay per step
    ``λ·η_t/η_max``) the same timescale needs ``λ_paper = λ·η``. Inverse:
    :func:`decay_timescale`.

    Args:
      timescale: ``τ > 0``, in iterations, or in epochs when ``steps_per_epoch`` is given.
      learning_rate: the peak learning rate ``η > 0`` (a float).
      steps_per_epoch: iterations per epoch (int ≥ 1), or None.

    Returns:
      ``λ`` as a Python float.

    Example:
      >>> import optareg
      >>> optareg.weight_decay_for_timescale(0.5, 1e-3, steps_per_epoch=1000)  # τ = 500 steps
      2.0

    References:
      Wang & Aitchison, "How to set AdamW's weight decay as you scale model and dataset size",
      ICML 2025.
    """
    tau, lr = _positive("timescale", timescale), _positive("learning_rate", learning_rate)
    tau_iter = tau * _iterations(steps_per_epoch)
    out = 1.0 / (lr * tau_iter)
    if not math.isfinite(out):
        raise ValueError(f"weight_decay_for_timescale: λ = 1/(η·τ) overflows ({out}).")
    return out


def decay_timescale(
    weight_decay: float, learning_rate: float, *, steps_per_epoch: int | None = None
) -> float:
    r"""The averaging timescale ``τ = 1/(η·λ)`` of AdamW's decay, the inverse of
    :func:`weight_decay_for_timescale` (``"pytorch"`` convention, decay per step ``η_t·λ``).

    .. math::

        τ_{iter} = \frac{1}{η·λ},\qquad τ_{epoch} = τ_{iter} / \text{steps\_per\_epoch}.

    Args:
      weight_decay: ``λ > 0`` (as given to ``optax.adamw``).
      learning_rate: the peak learning rate ``η > 0``.
      steps_per_epoch: iterations per epoch (int ≥ 1): the result is then in epochs.

    Returns:
      ``τ`` as a Python float (iterations, or epochs with ``steps_per_epoch``).

    Example:
      >>> import optareg
      >>> optareg.decay_timescale(0.1, 1e-3)  # optax.adamw(1e-3, weight_decay=0.1)
      10000.0
      >>> optareg.decay_timescale(0.1, 1e-3, steps_per_epoch=500)
      20.0

    References:
      Wang & Aitchison, "How to set AdamW's weight decay as you scale model and dataset size",
      ICML 2025.
    """
    lam, lr = _positive("weight_decay", weight_decay), _positive("learning_rate", learning_rate)
    tau_iter = 1.0 / (lam * lr)
    return tau_iter / _iterations(steps_per_epoch)


# --------------------------------------------------------------------------------------------
# BatchNorm statistics for averaged weights
# --------------------------------------------------------------------------------------------


def recompute_batch_stats(model: Any, batches: Iterable[Any]) -> Any:
    r"""Recompute the BatchNorm running statistics of a Flax NNX model, in place, for its
    current (e.g. averaged) weights.

    Averaged weights never produced the activations the running statistics were collected on,
    so they must be recomputed (as ``torch.optim.swa_utils.update_bn`` does): every
    ``nnx.BatchNorm`` runs in training mode over ``batches`` with momentum ``(k − 1)/k`` on the
    ``k``-th batch, so its running mean (variance) ends as the plain mean of the batch means
    (variances):

    .. math::

        μ_k = \tfrac{k−1}{k}·μ_{k−1} + \tfrac1k·m_k = \tfrac1k \sum_{j ≤ k} m_j.

    Momenta and the train/eval flags are restored afterwards. Load the averaged weights first:
    ``nnx.update(model, averaged_params(optimizer.opt_state, nnx.state(model, nnx.Param)))``.
    For Flax linen, see the recipe in ``docs/families/averaging.md``.

    Args:
      model: a Flax NNX module (changed in place).
      batches: an iterable of inputs, each passed as ``model(batch)``.

    Returns:
      ``model``.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> bn = nnx.BatchNorm(1, rngs=nnx.Rngs(0), use_running_average=True)
      >>> _ = recompute_batch_stats(bn, [jnp.array([[0.0], [2.0]]), jnp.array([[4.0], [6.0]])])
      >>> bn.mean[...], bn.var[...]  # means 1 and 5, variances 1 and 1
      (Array([3.], dtype=float32), Array([1.], dtype=float32))
    """
    from flax import nnx

    if not isinstance(model, nnx.Module):
        raise TypeError(
            f"`model` must be a Flax NNX module (nnx.Module); got {type(model).__name__}. For "
            "Flax linen, see the recipe in docs/families/averaging.md."
        )
    norms = [m for _, m in nnx.iter_modules(model) if isinstance(m, nnx.BatchNorm)]
    saved = [(m.momentum, m.use_running_average) for m in norms]
    try:
        for m in norms:
            m.use_running_average = False
        for k, batch in enumerate(batches, start=1):
            for m in norms:
                m.momentum = (k - 1) / k
            model(batch)
    finally:
        for m, (momentum, frozen) in zip(norms, saved, strict=True):
            m.momentum, m.use_running_average = momentum, frozen
    return model
