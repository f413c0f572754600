"""Weight decay: gradient-side (coupled to the learning rate) and decoupled (post-step)."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optareg import _base

__all__ = [
    "AddDecayedWeightsState",
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
        _base.check_choice("reference", reference, ("init",))
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


def add_decayed_weights(
    weight_decay: _base.ScalarOrSchedule = 0.0,
    mask: _base.MaskOrFn = None,
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
    _base.check_scalar("weight_decay", weight_decay, low=0.0)
    _base.check_mask("mask", mask)
    _check_reference_arg(reference)
    if not isinstance(cautious, bool):
        raise TypeError(f"`cautious` must be a bool; got {type(cautious).__name__}.")
    name = "add_decayed_weights"

    def init_fn(params):
        ref = None
        if _base.is_params_placeholder(params):
            ref = None if reference is None else params  # optax.tree.map_params probing the state
        elif reference is not None:
            ref = resolve_reference(reference, params, name)
        return AddDecayedWeightsState(count=_base.init_count(), reference=ref)

    def update_fn(updates, state, params=None, **extra_args):
        del extra_args
        _base.require_params(params, name)
        s = _base.evaluate(weight_decay, state.count)
        new_state = AddDecayedWeightsState(_base.increment(state.count), state.reference)

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

    return _base.masked_if(optax.GradientTransformationExtraArgs(init_fn, update_fn), mask)


def decoupled_weight_decay(weight_decay, mask=None, *, reference=None, cautious=False):
    """Post-step decoupled weight decay (issue: weight decay). Not implemented yet."""
    raise NotImplementedError("decoupled_weight_decay is being implemented")


def decay_schedule(weight_decay, learning_rate, convention):
    """A weight-decay schedule for a learning-rate convention. Not implemented yet."""
    raise NotImplementedError("decay_schedule is being implemented")
