"""Weight decay: gradient-side (coupled to the learning rate) and decoupled (post-step)."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optareg import _chain, _counters, _masking, _poststep, _validation

__all__ = [
    "AddDecayedWeightsState",
    "DecoupledWeightDecayState",
    "add_decayed_weights",
    "decay_schedule",
    "decoupled_weight_decay",
]


class AddDecayedWeightsState(NamedTuple):
    """State of :func:`add_decayed_weights`.

    Attributes:
      count: int32 step counter of shape ``()``; the weight-decay schedule is evaluated on it.
      reference: the reference weights θ_ref (params-shaped) when ``reference`` is ``"init"`` or a
        pytree; ``None`` when decaying toward zero.
    """

    count: jax.Array  # int32, shape ()
    reference: Any


def _is_masked_node(x: Any) -> bool:
    return isinstance(x, optax.MaskedNode)


def resolve_reference(reference: Any, params: Any, name: str) -> Any:
    """The reference tree to keep in state: ``None``, a snapshot of ``params``, or a user tree.

    ``params`` may contain ``optax.MaskedNode`` leaves (inside ``optax.masked``); the reference is
    cut to the same leaves so the state holds only what is decayed.
    """
    if reference is None:
        return None
    if isinstance(reference, str):
        _validation.check_choice("reference", reference, ("init",))
        return jax.tree.map(lambda p: jnp.array(p, copy=True), params)
    treedef = jax.tree.structure(params, is_leaf=_is_masked_node)
    try:
        ref_leaves = treedef.flatten_up_to(reference)
    except (ValueError, TypeError) as e:
        raise ValueError(
            f"{name}: `reference` must have the same tree structure as the params; "
            f"got {jax.tree.structure(reference)} for params {jax.tree.structure(params)}."
        ) from e
    p_leaves = treedef.flatten_up_to(params)
    out = []
    for p, r in zip(p_leaves, ref_leaves, strict=True):
        if _is_masked_node(p) or p is None:
            out.append(p)
            continue
        r = jnp.asarray(r)
        if r.shape != jnp.shape(p):
            raise ValueError(
                f"{name}: `reference` leaf of shape {r.shape} does not match the parameter of "
                f"shape {jnp.shape(p)}."
            )
        out.append(r.astype(jnp.asarray(p).dtype))
    return treedef.unflatten(out)


def _check_reference_arg(reference: Any) -> None:
    if reference is None or (isinstance(reference, str) and reference == "init"):
        return
    if isinstance(reference, str):
        raise ValueError(
            f'`reference` must be None, "init" or a params-shaped pytree; got {reference!r}.'
        )
    if not jax.tree.leaves(reference):
        raise ValueError("`reference` is an empty pytree; pass None to decay toward zero.")


def _check_decay_args(weight_decay, mask, reference, cautious, high=None) -> None:
    _validation.check_scalar("weight_decay", weight_decay, low=0.0, high=high)
    _masking.check_mask("mask", mask)
    _check_reference_arg(reference)
    if not isinstance(cautious, bool):
        raise TypeError(f"`cautious` must be a bool; got {type(cautious).__name__}.")


def _init_reference(reference: Any, params: Any, name: str) -> Any:
    """The reference kept in state at ``init`` (``None`` when decaying toward zero)."""
    if reference is None:
        return None
    if _validation.is_params_placeholder(params):  # optax.tree.map_params probing the state
        return params
    return resolve_reference(reference, params, name)


def add_decayed_weights(
    weight_decay: _validation.ScalarOrSchedule = 0.0,
    mask: _validation.MaskOrFn = None,
    *,
    reference: Any = None,
    cautious: bool = False,
) -> optax.GradientTransformationExtraArgs:
    r"""Add ``λ_t·(θ − θ_ref)`` to the updates (gradient-side weight decay).

    .. math::

        u \leftarrow u + \lambda_t\,(\theta - \theta_{\mathrm{ref}})

    Place it *before* the learning-rate scaling, e.g. between ``optax.scale_by_adam()`` and
    ``optax.scale_by_learning_rate(η)``: the decay applied to the parameters is then ``η_t·λ_t``
    per step, which is the PyTorch / ``optax.adamw`` convention. With default arguments this is a
    drop-in for ``optax.add_decayed_weights`` (bit-identical updates in float32, for constants and
    schedules). Updates keep their dtype (also for bfloat16 params with a float32 schedule).

    ``cautious=True`` (cautious weight decay) decays only the coordinates where the incoming
    descent direction ``u`` already moves θ toward θ_ref, i.e. where ``u·(θ − θ_ref) ≥ 0``
    (the step is ``−η·u``); the other coordinates are left exactly as they were.

    Args:
      weight_decay: the decay rate λ (constant ``>= 0`` or a schedule of the step count).
      mask: optax mask: a pytree (or prefix) of bools, or a callable returning one; ``True``
        means "decay this leaf". See :func:`optareg.masks.decay_mask`.
      reference: ``None`` (decay toward zero), ``"init"`` (snapshot of the params passed to
        ``init``, kept in the state; L2-SP fine-tuning) or a params-shaped pytree.
      cautious: decay only where the optimizer's step already moves θ toward θ_ref.

    Returns:
      An ``optax.GradientTransformationExtraArgs``; its state is :class:`AddDecayedWeightsState`
      (inside ``optax.MaskedState`` when a mask is given).

    Example:
      >>> import jax.numpy as jnp, optax, optareg
      >>> tx = optax.chain(optax.scale_by_adam(), optareg.add_decayed_weights(1e-2),
      ...                  optax.scale_by_learning_rate(1e-3))
      >>> params = {"w": jnp.ones((2, 2))}
      >>> state = tx.init(params)
      >>> updates, state = tx.update({"w": jnp.zeros((2, 2))}, state, params)
      >>> float(updates["w"][0, 0])  # -η·λ·θ with zero gradient
      -1e-05

    References:
      Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019.
      Li, Grandvalet & Davoine, "Explicit Inductive Bias for Transfer Learning with
      Convolutional Networks" (L2-SP), ICML 2018.
      Chen et al., "Cautious Weight Decay", 2025.
    """
    _check_decay_args(weight_decay, mask, reference, cautious)
    name = "add_decayed_weights"

    def init_fn(params):
        return AddDecayedWeightsState(
            count=_counters.init_count(), reference=_init_reference(reference, params, name)
        )

    static_zero = _is_static_zero(weight_decay)

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args
        _validation.require_params(params, name)
        new_state = AddDecayedWeightsState(_counters.increment(state.count), state.reference)
        if static_zero:  # optax's drop-in: the updates untouched (inf stays inf, -0. stays -0.)
            return updates, new_state
        s = _counters.evaluate(weight_decay, state.count)

        def leaf(g, p, r=None):
            if g is None:
                return None
            d = p if r is None else p - r
            decay = s * d
            if cautious:
                decay = jnp.where(g * d >= 0, decay, jnp.zeros_like(decay))
            return (g + decay).astype(g.dtype)

        if state.reference is None:
            out = jax.tree.map(leaf, updates, params, is_leaf=lambda x: x is None)
        else:
            out = jax.tree.map(leaf, updates, params, state.reference, is_leaf=lambda x: x is None)
        return out, new_state

    tx = _masking.masked_if(optax.GradientTransformationExtraArgs(init_fn, update_fn), mask)
    return _chain.tag(tx, "gradient", name)


def _is_static_zero(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == 0


class DecoupledWeightDecayState(NamedTuple):
    """State of :func:`decoupled_weight_decay`.

    Attributes:
      count: int32 step counter of shape ``()``; the weight-decay schedule is evaluated on it.
      reference: the reference weights θ_ref (params-shaped) when ``reference`` is ``"init"`` or a
        pytree; ``None`` when decaying toward zero.
    """

    count: jax.Array  # int32, shape ()
    reference: Any


def decoupled_weight_decay(
    weight_decay: _validation.ScalarOrSchedule = 0.0,
    mask: _validation.MaskOrFn = None,
    *,
    reference: Any = None,
    cautious: bool = False,
) -> optax.GradientTransformationExtraArgs:
    r"""Decoupled weight decay applied after the step, not multiplied by the learning rate.

    .. math::

        \theta_{\mathrm{new}} = \theta + u - \lambda_t\,(\theta - \theta_{\mathrm{ref}})

    where ``u`` is the incoming (already signed and learning-rate-scaled) update and θ the
    current parameters: the decay is computed from θ *before* the step, as in AdamW. Put it
    **last** in the chain. It returns ``θ_new − θ`` (computed in at least float32 and cast back to
    the update's dtype), so ``optax.apply_updates`` lands on ``θ_new``.

    ``λ_t`` is used as given: it is *not* multiplied by the learning rate. This expresses the
    AdamW paper's convention (``λ·η_t/η_max``), the "independent" one (``λ``) and AdamC
    (``λ·η_t²/η_max``) directly; build those schedules with :func:`decay_schedule`. With
    ``decay_schedule(λ, lr, "pytorch")`` (``λ·η_t``) it reproduces ``optax.adamw`` /
    ``torch.optim.AdamW``.

    ``cautious=True`` decays only the coordinates where the step already moves θ toward θ_ref,
    i.e. where ``u·(θ − θ_ref) ≤ 0`` (``u`` is the signed step here); the others get ``u`` alone.

    Args:
      weight_decay: λ_t, a constant in ``[0, 1]`` or a schedule of the step count (e.g. from
        :func:`decay_schedule`).
      mask: optax mask: a pytree (or prefix) of bools, or a callable returning one; ``True``
        means "decay this leaf". See :func:`optareg.masks.decay_mask`.
      reference: ``None`` (decay toward zero), ``"init"`` (snapshot of the params passed to
        ``init``, kept in the state; L2-SP fine-tuning) or a params-shaped pytree.
      cautious: decay only where the step already moves θ toward θ_ref.

    Returns:
      An ``optax.GradientTransformationExtraArgs``; its state is
      :class:`DecoupledWeightDecayState` (inside ``optax.MaskedState`` when a mask is given).

    Example:
      >>> import jax.numpy as jnp, optax, optareg
      >>> tx = optax.chain(optax.sgd(0.1), optareg.decoupled_weight_decay(0.01))
      >>> params = {"w": jnp.full((2,), 2.0)}
      >>> state = tx.init(params)
      >>> updates, state = tx.update({"w": jnp.zeros((2,))}, state, params)
      >>> optax.apply_updates(params, updates)["w"]  # 2 − 0.01·2
      Array([1.98, 1.98], dtype=float32)

    References:
      Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019.
      Li, Grandvalet & Davoine, "Explicit Inductive Bias for Transfer Learning with
      Convolutional Networks" (L2-SP), ICML 2018.
      Chen et al., "Cautious Weight Decay", 2025.
    """
    _check_decay_args(weight_decay, mask, reference, cautious, high=1.0)
    name = "decoupled_weight_decay"

    def init_state(params):
        return {"reference": _init_reference(reference, params, name)}

    def operator(leaf, weight_decay):
        dt = leaf.x.dtype  # θ + u, in at least float32
        ref = leaf.state["reference"]
        d = leaf.theta if ref is None else leaf.theta - ref.astype(dt)
        decay = jnp.asarray(weight_decay, dt) * d
        if cautious:
            decay = jnp.where(leaf.u * d <= 0, decay, jnp.zeros_like(decay))
        return leaf.x - decay, leaf.state

    return _poststep.transformation(
        operator,
        name=name,
        hyperparams={"weight_decay": weight_decay},
        mask=mask,
        init_state=init_state,
        state_cls=DecoupledWeightDecayState,
    )


_CONVENTIONS = ("paper", "independent", "adamc", "pytorch")


def _peak_learning_rate(learning_rate: Any, peak_value: Any, horizon: int) -> float:
    """η_max: ``peak_value`` if given, the constant lr, or the schedule's max over the horizon."""
    if peak_value is not None:
        _validation.check_scalar("peak_value", peak_value, low=0.0, low_inclusive=False)
        return float(peak_value)
    if not callable(learning_rate):
        peak = float(jnp.asarray(learning_rate))
    else:
        steps = jnp.arange(horizon, dtype=jnp.int32)
        try:
            values = jax.vmap(learning_rate)(steps)
            peak = float(jnp.max(values))
        except Exception as e:  # noqa: BLE001 - the user's schedule; say what to do instead
            raise ValueError(
                "decay_schedule: could not evaluate the `learning_rate` schedule over steps "
                f"0..{horizon - 1} to find its peak ({e}); pass `peak_value=` explicitly."
            ) from e
    if not (peak > 0.0 and jnp.isfinite(peak)):
        raise ValueError(
            "decay_schedule: the peak learning rate η_max must be a finite number > 0; got "
            f"{peak!r} (over steps 0..{horizon - 1}). Pass `peak_value=` or a longer `horizon`."
        )
    return peak


def decay_schedule(
    weight_decay: _validation.ScalarOrSchedule,
    learning_rate: _validation.ScalarOrSchedule,
    convention: str,
    *,
    peak_value: float | None = None,
    horizon: int = 100_000,
) -> optax.Schedule:
    r"""The decoupled weight-decay schedule ``λ_t`` of a learning-rate convention.

    The result is a schedule of the step count, meant for :func:`decoupled_weight_decay`
    (whose ``λ_t`` is applied as is, per step, not multiplied by the learning rate). With
    ``η_t = learning_rate(t)`` and ``η_max`` its peak:

    ================  ==========================  ============================================
    ``convention``    decay per step ``λ_t``      same decay with :func:`add_decayed_weights`
                                                  placed before the lr (decay ``η_t·λ'_t``)
    ================  ==========================  ============================================
    ``"pytorch"``     ``λ·η_t``                   ``λ' = λ`` (PyTorch / ``optax.adamw``)
    ``"paper"``       ``λ·η_t/η_max``             ``λ' = λ/η_max`` (a constant)
    ``"independent"`` ``λ``                       ``λ'_t = λ/η_t`` (undefined where ``η_t=0``)
    ``"adamc"``       ``λ·η_t²/η_max``            ``λ'_t = λ·η_t/η_max``
    ================  ==========================  ============================================

    ``"paper"`` is Loshchilov & Hutter's AdamW, where the decay follows the schedule
    *multiplier* ``η_t/η_max`` but not the base learning rate, so ``λ_paper = λ_pytorch·η_max``
    gives the same run. ``"independent"`` decays by a fixed fraction per step whatever the lr.
    ``"adamc"`` (Defazio et al.) scales the decay by ``η_t²/η_max`` for normalized layers.

    How ``η_max`` is found (only ``"paper"`` and ``"adamc"`` use it), once, at construction:
    ``peak_value`` when given; else a constant ``learning_rate`` is its own peak; else the maximum
    of ``learning_rate(t)`` over the integer steps ``0 ≤ t < horizon`` (the schedule is evaluated
    with ``jax.vmap``). For ``optax.warmup_cosine_decay_schedule`` this is its ``peak_value``
    whenever the warmup ends within the horizon.

    Args:
      weight_decay: λ, a constant ``>= 0`` (or a schedule, multiplied in pointwise).
      learning_rate: the optimizer's learning rate η (constant ``> 0`` or a schedule); use the
        same object the optimizer uses.
      convention: one of ``"paper"``, ``"independent"``, ``"adamc"``, ``"pytorch"``.
      peak_value: ``η_max`` to use instead of searching for it.
      horizon: number of steps over which the peak of a schedule is searched.

    Returns:
      A schedule ``count -> λ_t`` (a jit-able function of an int32 step count).

    Raises:
      ValueError: unknown convention, negative λ or lr, or no positive finite ``η_max``.

    Example:
      >>> import optax, optareg
      >>> lr = optax.warmup_cosine_decay_schedule(0.0, 1e-3, 10, 100)
      >>> wd = optareg.decay_schedule(0.1, lr, "paper")
      >>> [round(float(wd(t)), 4) for t in (0, 5, 10, 100)]
      [0.0, 0.05, 0.1, 0.0]

    References:
      Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019.
      Defazio et al., "Why Gradients Rapidly Increase Near the End of Training" (AdamC), 2025.
    """
    _validation.check_choice("convention", convention, _CONVENTIONS)
    _validation.check_scalar("weight_decay", weight_decay, low=0.0)
    _validation.check_scalar("learning_rate", learning_rate, low=0.0)
    horizon = _validation.check_int("horizon", horizon, low=1)
    eta_max = None
    if convention in ("paper", "adamc"):
        eta_max = _peak_learning_rate(learning_rate, peak_value, horizon)

    def schedule(count):
        # in the default float dtype (float64 under x64): optax's schedules return float32,
        # and λ·η_t rounded to float32 would not reproduce optax.adamw's float64 λ·θ
        lam = jnp.asarray(_counters.evaluate(weight_decay, count), jnp.result_type(float))
        if convention == "independent":
            return lam
        # η_t in λ's dtype too: η_t/η_max (and η_t²) in float32 would be 1e-8 off the "pytorch"
        # convention's λ·η_t under x64 (optax's schedules return float32)
        eta = jnp.asarray(_counters.evaluate(learning_rate, count)).astype(lam.dtype)
        if convention == "pytorch":
            return lam * eta
        if convention == "paper":
            return lam * (eta / eta_max)
        return lam * (eta * eta / eta_max)  # adamc

    return schedule
