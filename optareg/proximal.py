"""Proximal regularizers (post-step): L1, elastic net, group lasso, nuclear norm, and ProxAdam.

Each transform goes **last** in an ``optax.chain`` and returns ``prox(θ + u) − θ``, so that
``optax.apply_updates`` lands within ``½ulp(θ) + ulp(prox)`` of ``prox(θ + u)`` entrywise, exact
zeros exact (:mod:`optareg._poststep`, the landing guarantee). The prox threshold
is ``τ_t = η_t·λ_t`` where ``learning_rate`` must be the *same* value or schedule the optimizer
uses; both are evaluated on the transform's own step counter (which advances once per update,
like the optimizer's). This is proximal gradient descent (ISTA) when the base optimizer is SGD.
With heavy-ball momentum ``β`` in the base optimizer the stationary step is ``η/(1 − β)`` times
the gradient: pass ``learning_rate=η/(1 − β)`` to the prox, otherwise the fixed points solve the
problem with strength ``λ·(1 − β)``. Every state records ``"<name>/zeros_fraction"``, the
fraction of exact zeros among the entries the prox acted on after the last step, and (except
``prox_adam``) ``"<name>/penalty"``, ``λ_t·R(θ_{t+1})`` (read them with
:func:`optareg.metrics`). Both are statistics of the new parameters exactly as
``optax.apply_updates`` writes them, computed in one pass over them (an exact int32 count
beside one float sum), every ``metrics_every`` steps.
"""

from __future__ import annotations

import functools
import math
import operator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optareg import _chain, _counters, _masking, _numerics, _paths, _poststep, _validation
from optareg._prox_ops import (
    elastic_net_threshold,
    group_norms_after_threshold,
    group_soft_threshold,
    singular_value_threshold,
    soft_threshold,
)

__all__ = [
    "ProxAdamState",
    "prox_adam",
    "prox_elastic_net",
    "prox_group_lasso",
    "prox_l1",
    "prox_nuclear",
]

_STAT_KEYS = ("zeros_fraction", "penalty")


def _new_params(leaf) -> jax.Array:
    """The parameters after the step, ``optax.apply_updates(θ, u')`` (``leaf.landed``), in the
    compute dtype and rounded as they are stored (see :func:`optareg._numerics.rounded_to`)."""
    p = leaf.param if leaf.param is not None else leaf.theta
    y = jnp.asarray(leaf.landed)
    return _numerics.rounded_to(y.astype(_numerics.compute_dtype(y)), jnp.result_type(p))


def _stats(term=None, scale=None, closed_form=None):
    """``zeros_fraction`` and ``penalty = λ_t·R(θ_{t+1})`` over the selected leaves.

    Both come from one pass over each leaf's new parameters (``θ_{t+1}``, exactly what
    ``optax.apply_updates`` writes: under ``jit`` the statistic is one more read of them): an
    exact int32 count of the zeros and ``scale(hp)·Σ term(θ_{t+1}, hp)``, the penalty as a sum
    over entries. A penalty that is not one comes from ``closed_form(leaf, hp)`` instead (from
    values the operator computed anyway).
    """

    def fn(leaves, ys, hp):
        del ys
        total = sum(int(jnp.size(leaf.theta)) for leaf in leaves)
        counts, penalty = [], jnp.zeros([], jnp.float32)
        for leaf in leaves:
            if not jnp.size(leaf.theta):
                continue
            y = _new_params(leaf)
            terms = [(y == 0).astype(jnp.int32)] + ([term(y, hp)] if term else [])
            sums = _numerics.fused_sums(terms)
            counts.append(sums[0])
            if term is not None:
                penalty = penalty + sums[1].astype(jnp.float32)
            if closed_form is not None:
                penalty = penalty + jnp.asarray(closed_form(leaf, hp), jnp.float32)
        if scale is not None:
            penalty = scale(hp) * penalty
        zeros = _numerics.fraction(_numerics.count_total(counts, total), total)
        return {"zeros_fraction": zeros, "penalty": penalty}

    return _STAT_KEYS, fn


def _elastic_net_term(y, hp):
    return hp["l1"] * jnp.abs(y) + (0.5 * hp["l2"]) * jnp.square(y)


def _as(value, dt):
    """A hyperparameter as a scalar of dtype ``dt``, opaque to XLA's constant folding.

    The barrier makes a Python-float strength compile to the same arithmetic as a traced one
    (``optax.inject_hyperparams``), so the two give bit-identical updates.
    """
    return jax.lax.optimization_barrier(jnp.asarray(value).astype(dt))


def _check_lr(learning_rate):
    _validation.check_scalar("learning_rate", learning_rate, low=0.0, low_inclusive=False)


def prox_l1(
    l1: _validation.ScalarOrSchedule,
    learning_rate: _validation.ScalarOrSchedule,
    mask: _validation.MaskOrFn = None,
    *,
    metrics_every: int = 1,
) -> optax.GradientTransformationExtraArgs:
    r"""Proximal step for the L1 penalty ``λ‖θ‖₁`` (soft thresholding after the step).

    .. math::

        \theta_{t+1} = \operatorname{sign}(\theta_t + u_t)\,
        \max(|\theta_t + u_t| - \eta_t\lambda_t,\ 0)

    With ``optax.sgd(η)`` before it this is ISTA for ``f(θ) + λ‖θ‖₁``; coordinates land on exact
    zeros (a subgradient penalty never does).

    Args:
      l1: the L1 strength ``λ ≥ 0`` (constant or schedule).
      learning_rate: the optimizer's learning rate ``η > 0`` (the same constant or schedule).
      mask: optax mask (pytree/prefix of bools or callable; ``True`` = apply the prox).
      metrics_every: compute the statistics every ``metrics_every`` steps (an int ≥ 1; the
        state holds the last values in between; under ``optax.inject_hyperparams`` pass
        ``static_args=("metrics_every",)``).

    Returns:
      A post-step ``optax.GradientTransformationExtraArgs``; its state records
      ``"prox_l1/zeros_fraction"`` and ``"prox_l1/penalty"`` (``λ_t‖θ_{t+1}‖₁``).

    Example:
      >>> import jax.numpy as jnp, optax, optareg
      >>> tx = optax.chain(optax.sgd(1.0), optareg.prox_l1(2.0, 1.0))
      >>> params = {"w": jnp.array([1.0, 3.0, -0.5, -2.5])}
      >>> state = tx.init(params)
      >>> updates, state = tx.update({"w": jnp.zeros(4)}, state, params)
      >>> optax.apply_updates(params, updates)["w"]
      Array([ 0. ,  1. ,  0. , -0.5], dtype=float32)
      >>> float(optareg.metrics(state)["prox_l1/zeros_fraction"])
      0.5

    References:
      Daubechies, Defrise & De Mol, "An iterative thresholding algorithm for linear inverse
      problems with a sparsity constraint", CPAM, 2004.
      Parikh & Boyd, "Proximal Algorithms", 2014.
    """
    _validation.check_scalar("l1", l1, low=0.0)
    _check_lr(learning_rate)
    _masking.check_mask("mask", mask)

    def op(leaf, l1, learning_rate):
        x = leaf.x
        return soft_threshold(x, _as(learning_rate, x.dtype) * _as(l1, x.dtype))

    return _poststep.transformation(
        op,
        name="prox_l1",
        hyperparams={"l1": l1, "learning_rate": learning_rate},
        mask=mask,
        stats=_stats(lambda y, hp: jnp.abs(y), scale=lambda hp: hp["l1"]),
        metrics_every=metrics_every,
    )


def prox_elastic_net(
    l1: _validation.ScalarOrSchedule,
    l2: _validation.ScalarOrSchedule,
    learning_rate: _validation.ScalarOrSchedule,
    mask: _validation.MaskOrFn = None,
    *,
    metrics_every: int = 1,
) -> optax.GradientTransformationExtraArgs:
    r"""Proximal step for the elastic net ``λ₁‖θ‖₁ + (λ₂/2)‖θ‖²``.

    .. math::

        \theta_{t+1} = \frac{\operatorname{sign}(x)\max(|x| - \eta_t\lambda_1, 0)}
        {1 + \eta_t\lambda_2}, \qquad x = \theta_t + u_t

    scikit-learn's ``ElasticNet(alpha, l1_ratio)`` minimizes
    ``1/(2n)‖y − Xw‖² + α·ρ‖w‖₁ + α(1 − ρ)/2·‖w‖²``; with the loss ``½·mean((Xw − y)²)`` the same
    problem is ``l1 = α·ρ``, ``l2 = α·(1 − ρ)``.

    Args:
      l1: L1 strength ``λ₁ ≥ 0`` (constant or schedule).
      l2: ridge strength ``λ₂ ≥ 0`` (constant or schedule).
      learning_rate: the optimizer's learning rate ``η > 0`` (the same constant or schedule).
      mask: optax mask (``True`` = apply the prox).
      metrics_every: compute the statistics every ``metrics_every`` steps (an int ≥ 1; the
        state holds the last values in between; under ``optax.inject_hyperparams`` pass
        ``static_args=("metrics_every",)``).

    Returns:
      A post-step ``optax.GradientTransformationExtraArgs``; its state records
      ``"prox_elastic_net/zeros_fraction"`` and ``"prox_elastic_net/penalty"``
      (``λ₁‖θ_{t+1}‖₁ + (λ₂/2)‖θ_{t+1}‖²``).

    Example:
      >>> import jax.numpy as jnp, optax, optareg
      >>> tx = optax.chain(optax.sgd(1.0), optareg.prox_elastic_net(2.0, 1.0, 1.0))
      >>> params = jnp.array([1.0, 3.0, -0.5, -2.5])
      >>> updates, _ = tx.update(jnp.zeros(4), tx.init(params), params)
      >>> optax.apply_updates(params, updates)
      Array([ 0.  ,  0.5 ,  0.  , -0.25], dtype=float32)

    References:
      Zou & Hastie, "Regularization and variable selection via the elastic net", JRSS-B, 2005.
    """
    _validation.check_scalar("l1", l1, low=0.0)
    _validation.check_scalar("l2", l2, low=0.0)
    _check_lr(learning_rate)
    _masking.check_mask("mask", mask)

    def op(leaf, l1, l2, learning_rate):
        x = leaf.x
        lr = _as(learning_rate, x.dtype)
        return elastic_net_threshold(x, lr * _as(l1, x.dtype), lr * _as(l2, x.dtype))

    return _poststep.transformation(
        op,
        name="prox_elastic_net",
        hyperparams={"l1": l1, "l2": l2, "learning_rate": learning_rate},
        mask=mask,
        stats=_stats(_elastic_net_term),
        metrics_every=metrics_every,
    )


def _check_axis(axis):
    if isinstance(axis, jax.Array):  # from optax.inject_hyperparams: traced in `update`
        return _validation.check_int_or_traced("axis", axis, low=None)
    if isinstance(axis, bool) or not hasattr(axis, "__index__"):
        raise TypeError(f"`axis` must be an int; got {type(axis).__name__} {axis!r}.")
    return operator.index(axis)


def _on_groups(fn, x: jax.Array, kept: tuple[int, ...]) -> tuple[jax.Array, jax.Array]:
    """``fn(x, axis) -> (penalty, y)`` with the groups indexed by the ``kept`` axes (a leaf's
    stack axes and its group axis): one axis is used as it is; several are moved to the front
    and flattened into one group index (one group per layer and unit), and ``y`` moved back."""
    if len(kept) == 1:
        return fn(x, kept[0])
    rest = tuple(a for a in range(x.ndim) if a not in kept)
    xt = jnp.transpose(x, kept + rest)
    groups = math.prod(xt.shape[: len(kept)])
    pen, y = fn(xt.reshape(groups, math.prod(xt.shape[len(kept) :])), 0)
    return pen, jnp.transpose(y.reshape(xt.shape), np.argsort(kept + rest))


def prox_group_lasso(
    strength: _validation.ScalarOrSchedule,
    learning_rate: _validation.ScalarOrSchedule,
    *,
    axis: int | None = None,
    layout: str = "auto",
    mask: _validation.MaskOrFn = None,
    metrics_every: int = 1,
    stack_axes: Any = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Proximal step for the group lasso ``λ Σ_g √|g|·‖θ_g‖`` (whole groups become exact zeros).

    .. math::

        \theta_{t+1,g} = \max\!\Big(1 - \frac{\eta_t\lambda\sqrt{|g|}}{\|x_g\|},\ 0\Big)\,x_g,
        \qquad x = \theta_t + u_t

    Group ``j`` of a leaf is its slice at index ``j`` along ``axis`` (see
    :func:`optareg.operators.group_soft_threshold`): with the default ``axis=-1`` a Dense kernel
    ``(in, out)`` is grouped by output unit (its incoming weights), so a zeroed group is a dead
    neuron; for a conv kernel ``(H, W, I, O)`` a group is one output channel.

    Which leaves: without a mask, the weight matrices — per-layer rank ``≥ 2`` and not named as a
    bias (an Equinox conv bias ``(O, 1, 1)`` too), a norm scale or an embedding (the name rules
    of :func:`optareg.masks.decay_mask`); the others pass through unchanged. With a mask, the
    mask alone decides: every masked-in leaf is thresholded, and a masked-in leaf of per-layer
    rank 1 follows the operator's definition — along its only axis each entry is its own group
    (``|g| = 1``), i.e. plain L1 with the same ``η·λ`` (a 0-d leaf likewise). An ``axis`` that
    does not exist on a selected leaf raises a ``ValueError`` when the update is traced.

    Layer stacks: with ``stack_axes=k`` the leading ``k`` axes of a leaf index layers
    (``nn.scan``, ``nnx.vmap``, ``eqx.filter_vmap``): a group is one unit of one layer, never
    spanning two, and ``axis`` / ``layout`` count within the per-layer array (so a stack
    ``(L, in, out)`` has ``L·out`` groups of ``in`` entries).

    Args:
      strength: group-lasso strength ``λ ≥ 0`` (constant or schedule).
      learning_rate: the optimizer's learning rate ``η > 0`` (the same constant or schedule).
      axis: the axis indexing the groups in every selected leaf (an int; injected by
        ``optax.inject_hyperparams`` it is traced and picks the leaf's axis by ``lax.switch``).
      layout: ``"auto"``, ``"flax"`` (group = last axis) or ``"torch"`` (first axis), used
        when ``axis`` is ``None``.
      mask: optax mask (``True`` = apply the prox).
      metrics_every: compute the statistics every ``metrics_every`` steps (an int ≥ 1; the
        state holds the last values in between; under ``optax.inject_hyperparams`` pass
        ``static_args=("metrics_every",)``).
      stack_axes: the number of leading layer axes: ``None`` (none), an int ``≥ 0``, a pytree
        prefix of the params with int / ``None`` leaves, or a callable
        ``(path, leaf) -> int | None`` (static).

    Returns:
      A post-step ``optax.GradientTransformationExtraArgs``; its state records
      ``"prox_group_lasso/zeros_fraction"`` and ``"prox_group_lasso/penalty"``
      (``λ_t Σ_g √|g|·‖y_g‖`` of the prox output ``y``, from the group norms the operator
      computes anyway: ``θ_{t+1}`` up to its rounding to the parameters' dtype), over the
      selected leaves.

    Example:
      >>> import jax.numpy as jnp, optax, optareg
      >>> tx = optax.chain(optax.sgd(1.0), optareg.prox_group_lasso(1.0, 1.0, axis=0))
      >>> params = {"w": jnp.array([[3.0, 4.0], [0.1, 0.1]]), "b": jnp.array([0.1, 0.1])}
      >>> zero = {"w": jnp.zeros((2, 2)), "b": jnp.zeros(2)}
      >>> updates, state = tx.update(zero, tx.init(params), params)
      >>> new = optax.apply_updates(params, updates)
      >>> new["w"]
      Array([[2.1514719, 2.8686292],
             [0.       , 0.       ]], dtype=float32)
      >>> new["b"]  # 1-D leaves pass through without a mask
      Array([0.1, 0.1], dtype=float32)

    References:
      Yuan & Lin, "Model selection and estimation in regression with grouped variables",
      JRSS-B, 2006.
      Scardapane et al., "Group sparse regularization for deep neural networks",
      Neurocomputing, 2017.
    """
    _validation.check_scalar("strength", strength, low=0.0)
    _check_lr(learning_rate)
    axis = None if axis is None else _check_axis(axis)
    layout = _paths.check_layout(layout)
    _masking.check_mask("mask", mask)
    _paths.check_stack_axes(stack_axes)

    def leaf_axes(x, path):
        """The axes indexing one group: the leaf's stack axes and its group axis."""
        stack = _paths.layout_of(path, x).stack
        if isinstance(axis, jax.core.Tracer):  # checked on the concrete value at init
            return (*range(stack), stack + axis % (x.ndim - stack))
        return _paths.kept_axes("prox_group_lasso", layout, axis, x, path, stack)

    # The penalty of each leaf, from the group norms the operator computes anyway (no extra
    # pass), recorded beside the operator: outside the lax.cond of metrics_every, which then
    # holds one scalar per leaf instead of every leaf's x = θ + u.
    penalties: dict[int, jax.Array] = {}

    def op(leaf, strength, learning_rate):
        x = leaf.x
        tau = _as(learning_rate, x.dtype) * _as(strength, x.dtype)
        if x.ndim == 0:
            penalties[leaf.index] = strength * group_norms_after_threshold(x, tau, 0)
            return soft_threshold(x, tau)

        def on_axes(kept):
            def fn(x, axis):
                pen = strength * group_norms_after_threshold(x, tau, axis)
                return pen, group_soft_threshold(x, tau, axis)

            return _on_groups(fn, x, kept)

        kept = leaf_axes(x, leaf.path)
        if isinstance(kept[-1], jax.core.Tracer):  # a traced axis (inject_hyperparams): a branch
            stack = len(kept) - 1
            branches = [
                functools.partial(on_axes, (*range(stack), stack + a))
                for a in range(x.ndim - stack)
            ]
            penalties[leaf.index], y = jax.lax.switch(kept[-1] - stack, branches)
        else:
            penalties[leaf.index], y = on_axes(kept)
        return y

    def penalty(leaf, hp):
        del hp
        return penalties[leaf.index]

    tx = _poststep.transformation(
        op,
        name="prox_group_lasso",
        hyperparams={"strength": strength, "learning_rate": learning_rate},
        mask=mask,
        select=_matrices if mask is None else None,
        stats=_stats(closed_form=penalty),
        metrics_every=metrics_every,
        one_leaf_at_a_time=True,
    )
    return _paths.with_layouts(tx, stack_axes, "prox_group_lasso")


def _matrices(p: Any, path: str) -> bool:
    """The weight-matrix rule (:func:`optareg._paths.leaf_layouts`): per-layer rank ``≥ 2``,
    not a bias / norm scale / embedding."""
    return _paths.layout_of(path, p).matrix


def _has_matrices(p: Any, path: str) -> bool:
    """A masked-in leaf with a per-layer matrix (per-layer rank ``≥ 2``)."""
    return jnp.ndim(p) - _paths.layout_of(path, p).stack >= 2


def prox_nuclear(
    strength: _validation.ScalarOrSchedule,
    learning_rate: _validation.ScalarOrSchedule,
    mask: _validation.MaskOrFn = None,
    *,
    metrics_every: int = 1,
    stack_axes: Any = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Proximal step for the nuclear norm ``λ‖θ‖_*`` (singular value thresholding; low rank).

    .. math::

        \theta_{t+1} = U\operatorname{diag}(\max(\sigma - \eta_t\lambda, 0))V^\top,
        \qquad \theta_t + u_t = U\operatorname{diag}(\sigma)V^\top

    Applies, without a mask, to the weight matrices: per-layer rank ``≥ 2`` and not named as a
    bias (an Equinox conv bias ``(O, 1, 1)`` too), a norm scale or an embedding (the name rules
    of :func:`optareg.masks.decay_mask`); with a mask, to the masked-in leaves of per-layer
    rank ``≥ 2`` (the others have no singular values and pass through). With
    ``stack_axes=k`` the leading ``k`` axes index layers (``nn.scan``, ``nnx.vmap``,
    ``eqx.filter_vmap``) and a stack ``(L, in, out)`` is ``L`` matrices, one per layer; its
    stacked bias ``(L, out)`` is a vector per layer and passes through. A leaf with ``ndim > 2``
    is treated as a batch of matrices over its leading axes, exactly like
    :func:`optareg.operators.singular_value_threshold`: a conv kernel ``(H, W, I, O)`` gets an
    independent ``I × O`` nuclear norm per spatial tap. Reshape the leaf yourself (e.g. via a
    wrapper) for another matricization. One SVD per matrix per step: meant for small / medium
    matrices.

    Args:
      strength: nuclear-norm strength ``λ ≥ 0`` (constant or schedule).
      learning_rate: the optimizer's learning rate ``η > 0`` (the same constant or schedule).
      mask: optax mask (``True`` = apply the prox).
      metrics_every: compute the statistics every ``metrics_every`` steps (an int ≥ 1; the
        state holds the last values in between; under ``optax.inject_hyperparams`` pass
        ``static_args=("metrics_every",)``).
      stack_axes: the number of leading layer axes (as in :func:`prox_group_lasso`).

    Returns:
      A post-step ``optax.GradientTransformationExtraArgs``; its state records
      ``"prox_nuclear/penalty"`` (``λ_t‖θ_{t+1}‖_*``, one more SVD per matrix on the metrics
      steps) and ``"prox_nuclear/zeros_fraction"`` (exact zeros appear when a whole matrix is
      thresholded away).

    Example:
      >>> import jax.numpy as jnp, optax, optareg
      >>> tx = optax.chain(optax.sgd(1.0), optareg.prox_nuclear(2.0, 1.0))
      >>> params = jnp.diag(jnp.array([3.0, 1.0]))
      >>> updates, _ = tx.update(jnp.zeros((2, 2)), tx.init(params), params)
      >>> optax.apply_updates(params, updates)
      Array([[1., 0.],
             [0., 0.]], dtype=float32)

    References:
      Cai, Candès & Shen, "A Singular Value Thresholding Algorithm for Matrix Completion",
      SIAM J. Optim., 2010.
    """
    _validation.check_scalar("strength", strength, low=0.0)
    _check_lr(learning_rate)
    _masking.check_mask("mask", mask)
    _paths.check_stack_axes(stack_axes)

    def op(leaf, strength, learning_rate):
        x = leaf.x
        return singular_value_threshold(x, _as(learning_rate, x.dtype) * _as(strength, x.dtype))

    def penalty(leaf, hp):
        s = jnp.linalg.svd(_new_params(leaf), compute_uv=False)
        return hp["strength"] * jnp.sum(s, dtype=jnp.float32)

    tx = _poststep.transformation(
        op,
        name="prox_nuclear",
        hyperparams={"strength": strength, "learning_rate": learning_rate},
        mask=mask,
        select=_matrices if mask is None else _has_matrices,
        stats=_stats(closed_form=penalty),
        metrics_every=metrics_every,
    )
    return _paths.with_layouts(tx, stack_axes, "prox_nuclear")


# --------------------------------------------------------------------------------------------
# ProxAdam
# --------------------------------------------------------------------------------------------


class ProxAdamState(NamedTuple):
    """State of :func:`prox_adam`.

    Attributes:
      count: int32 step counter of shape ``()`` (Adam's ``t − 1``; schedules are evaluated on it).
      mu: Adam's first moment (params-shaped, float32 or wider).
      nu: Adam's second moment (params-shaped, float32 or wider).
      zeros_fraction: fraction of exact zeros among the prox-masked-in entries after the last
        step (float32 scalar).
    """

    count: jax.Array  # int32, shape ()
    mu: Any
    nu: Any
    zeros_fraction: jax.Array  # float32, shape ()

    def optareg_metrics(self) -> dict[str, jax.Array]:
        return {"prox_adam/zeros_fraction": self.zeros_fraction}


def prox_adam(
    learning_rate: _validation.ScalarOrSchedule,
    l1: _validation.ScalarOrSchedule,
    *,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: _validation.ScalarOrSchedule = 0.0,
    mask: _validation.MaskOrFn = None,
    metrics_every: int = 1,
) -> optax.GradientTransformationExtraArgs:
    r"""Adam with an L1 prox preconditioned by Adam's second moment (ProxGen / ProxAdam).

    A complete optimizer (do not chain another one before it). With ``g`` the gradient,
    ``t = count + 1`` and ``η_t``, ``λ_t``, ``wd_t`` evaluated on ``count``:

    .. math::

        m &\leftarrow \beta_1 m + (1-\beta_1) g, \quad v \leftarrow \beta_2 v + (1-\beta_2) g^2,
        \quad \hat m = \frac{m}{1-\beta_1^t},\ \hat v = \frac{v}{1-\beta_2^t} \\
        d_i &= \sqrt{\hat v_i} + \epsilon, \qquad
        x = \theta - \eta_t\,\hat m / d - \eta_t\,\mathrm{wd}_t\,\theta \\
        \theta_{t+1,i} &= \operatorname{sign}(x_i)\max(|x_i| - \eta_t\lambda_t / d_i,\ 0)

    The last line is the prox of ``λ‖θ‖₁`` in the metric ``diag(d)/η`` that Adam's step uses, so
    the per-coordinate threshold ``η_t·λ/(√v̂_i + ε)`` scales with the coordinate's step size and
    sparsity stays meaningful under adaptive steps. A coordinate that has never seen a gradient
    (``v̂_i = 0``) gets the threshold ``η·λ/ε``, i.e. is zeroed whenever ``λ > 0``; with
    ``eps = 0`` such a coordinate takes no Adam step (no ``0/0``) and is zeroed if ``λ > 0``.

    Decisions: ``weight_decay`` is decoupled (AdamW-style, ``η_t·wd_t·θ`` subtracted *before* the
    prox, not divided by ``d``). ``mask`` selects the leaves that get the L1 prox **and** the
    weight decay (like ``optax.adamw``'s mask); every leaf gets the Adam step. Moments are kept
    in float32 (or the params' dtype when wider) so that bfloat16 params keep an accurate ``v``.

    Args:
      learning_rate: ``η > 0`` (constant or schedule).
      l1: L1 strength ``λ ≥ 0`` (constant or schedule).
      b1: first-moment decay in ``[0, 1)``.
      b2: second-moment decay in ``[0, 1)``.
      eps: ``ε ≥ 0`` added to ``√v̂``.
      weight_decay: decoupled weight decay ``wd ≥ 0`` (constant or schedule).
      mask: optax mask (pytree/prefix of bools or callable) selecting prox + weight-decay leaves.
      metrics_every: compute the statistics every ``metrics_every`` steps (an int ≥ 1; the
        state holds the last values in between; under ``optax.inject_hyperparams`` pass
        ``static_args=("metrics_every",)``).

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose state is :class:`ProxAdamState`
      (``mu``, ``nu``, ``count``, ``zeros_fraction``; ``"prox_adam/zeros_fraction"`` in
      :func:`optareg.metrics`).

    Example:
      >>> import jax.numpy as jnp, optax, optareg
      >>> tx = optareg.prox_adam(0.1, l1=1.0)
      >>> params = jnp.array([1.0, 0.05, -0.3])
      >>> state = tx.init(params)
      >>> updates, state = tx.update(jnp.array([0.1, 0.1, -0.1]), state, params)
      >>> optax.apply_updates(params, updates)  # threshold 0.1·1/(|g| + ε) = 1 per coordinate
      Array([0., 0., 0.], dtype=float32)
      >>> float(optareg.metrics(state)["prox_adam/zeros_fraction"])
      1.0

    References:
      Yun, Lozano & Yang, "Adaptive Proximal Gradient Methods for Structured Neural Networks"
      (ProxGen), NeurIPS 2021.
      Kingma & Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015.
    """
    _check_prox_adam_args(learning_rate, l1, b1, b2, eps, weight_decay, mask)
    name = "prox_adam"

    every = _validation.check_metrics_every(metrics_every)

    def moment_dtype(p):
        return _numerics.compute_dtype(p)

    def init_fn(params):
        zf = jnp.zeros([], jnp.float32)
        if _validation.is_params_placeholder(params):  # optax.tree.map_params probing the state
            return ProxAdamState(_counters.init_count(), params, params, zf)
        _masking.check_mask_matches("mask", mask, params)
        mu = jax.tree.map(lambda p: jnp.zeros(jnp.shape(p), moment_dtype(p)), params)
        nu = jax.tree.map(lambda p: jnp.zeros(jnp.shape(p), moment_dtype(p)), params)
        return ProxAdamState(_counters.init_count(), mu, nu, zf)

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args
        _validation.require_params(params, name)
        count = state.count
        hp = {
            "t": count.astype(jnp.float32) + 1,
            "lr": _counters.evaluate(learning_rate, count),
            "lam": _counters.evaluate(l1, count),
            "wd": _counters.evaluate(weight_decay, count),
            "b1": b1,
            "b2": b2,
            "eps": eps,
        }
        treedef = jax.tree.structure(params)
        flags = _masking.leaf_flags(mask, params, treedef)
        leaves = zip(
            *(treedef.flatten_up_to(t) for t in (updates, params, state.mu, state.nu)),
            flags,
            strict=True,
        )
        outs = [_prox_adam_leaf(g, p, m, v, s, hp) for g, p, m, v, s in leaves]
        new_u, new_mu, new_nu, proxed = zip(*outs, strict=True) if outs else ((),) * 4
        # the new parameters as optax.apply_updates writes them (one more read of them, under
        # jit); computed here, outside the lax.cond of metrics_every, so that XLA shares them
        landed = [
            jnp.asarray(p + u).astype(jnp.asarray(p).dtype)
            for p, u, x in zip(treedef.flatten_up_to(params), new_u, proxed, strict=True)
            if x is not None
        ]
        zeros = _counters.on_metrics_step(
            every,
            count,
            lambda: _numerics.zeros_fraction(
                [
                    _numerics.rounded_to(y.astype(_numerics.compute_dtype(y)), y.dtype)
                    for y in landed
                ]
            ),
            state.zeros_fraction,
        )
        new_state = ProxAdamState(
            count=_counters.increment(count),
            mu=treedef.unflatten(new_mu),
            nu=treedef.unflatten(new_nu),
            zeros_fraction=zeros,
        )
        return treedef.unflatten(new_u), new_state

    return _chain.tag(optax.GradientTransformationExtraArgs(init_fn, update_fn), "optimizer", name)


def _check_prox_adam_args(learning_rate, l1, b1, b2, eps, weight_decay, mask) -> None:
    _check_lr(learning_rate)
    _validation.check_scalar("l1", l1, low=0.0)
    for name, beta in (("b1", b1), ("b2", b2)):
        _validation.check_scalar(
            name, beta, low=0.0, high=1.0, high_inclusive=False, allow_schedule=False
        )
    _validation.check_scalar("eps", eps, low=0.0, allow_schedule=False)
    _validation.check_scalar("weight_decay", weight_decay, low=0.0)
    _masking.check_mask("mask", mask)


def _prox_adam_leaf(g, p, m, v, selected, hp):
    """One leaf of :func:`prox_adam`: ``(update, mu, nu, prox output or None)``."""
    dt = m.dtype
    g32, p32 = g.astype(dt), p.astype(dt)
    beta1, beta2 = _as(hp["b1"], dt), _as(hp["b2"], dt)  # 1 − β in dt: same bits if injected
    m = beta1 * m + (1 - beta1) * g32
    v = beta2 * v + (1 - beta2) * jnp.square(g32)
    m_hat = m / (1 - beta1 ** hp["t"].astype(dt))
    v_hat = v / (1 - beta2 ** hp["t"].astype(dt))
    den = jnp.sqrt(v_hat) + _as(hp["eps"], dt)
    pos = ~(den <= 0)  # NaN propagates (a NaN gradient must not zero the weight)
    safe = jnp.where(pos, den, 1)
    eta = _as(hp["lr"], dt)
    x = p32 - jnp.where(pos, eta * m_hat / safe, 0)
    if not selected:
        return (x - p32).astype(g.dtype), m, v, None
    x = x - eta * _as(hp["wd"], dt) * p32
    step_l1 = eta * _as(hp["lam"], dt)
    tau = jnp.where(pos, step_l1 / safe, jnp.where(step_l1 > 0, jnp.inf, 0))
    x = soft_threshold(x, tau)
    return (x - p32).astype(g.dtype), m, v, x
