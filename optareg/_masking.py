"""Masks, handled once for every transform (optax semantics: ``True`` = apply).

A mask is a pytree (or prefix) of booleans, or a function of the params returning one. A
*callable pytree* (an Equinox module whose leaves are bools) is a tree, not a function: as in
``optax.masked``, a mask is called only when every one of its leaves is callable.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from optareg import _paths
from optareg._validation import MaskOrFn, is_params_placeholder

__all__ = [
    "check_mask",
    "check_mask_matches",
    "is_mask_fn",
    "leaf_flags",
    "masked_if",
    "resolve_mask",
]


def is_mask_fn(mask: Any) -> bool:
    """True when ``mask`` is a function of the params (every leaf callable), as optax decides."""
    flags = jax.tree.leaves(jax.tree.map(callable, mask))
    return bool(flags) and all(flags)


def resolve_mask(mask: MaskOrFn, params: Any) -> Any:
    """The mask tree for ``params``: ``mask(params)`` for a mask function, else ``mask`` (with
    its NNX variable nodes unwrapped when ``params`` has none, see :func:`_match_variables`)."""
    return mask(params) if is_mask_fn(mask) else _match_variables(mask, params)


def _match_variables(mask: Any, params: Any) -> Any:
    """A tree mask built on an NNX ``State`` (``decay_mask(nnx.state(model, nnx.Param))``: its
    bools sit inside ``Param`` nodes), for params without such nodes: ``nnx.Optimizer`` hands
    optax the ``Param`` nodes at ``init`` but plain arrays at ``update``, where the mask would
    no longer match. The bools come out of their nodes then; otherwise the mask is unchanged."""
    types = _paths.nnx_variable_types()
    if not types:
        return mask

    def is_var(x):
        return isinstance(x, types)

    def has_vars(tree):
        return any(is_var(x) for x in jax.tree.leaves(tree, is_leaf=is_var))

    if not has_vars(mask) or has_vars(params):
        return mask
    return jax.tree.map(lambda v: jax.tree.leaves(v)[0] if is_var(v) else v, mask, is_leaf=is_var)


def _is_bool_leaf(leaf: Any) -> bool:
    if isinstance(leaf, (bool, jnp.bool_)):
        return True
    return hasattr(leaf, "dtype") and jnp.asarray(leaf).dtype == jnp.bool_


def check_mask(name: str, mask: Any) -> None:
    """Validate a mask argument at construction: None, a function, or a pytree of bools.

    A single bool is refused: ``False`` would switch the transform off and ``True`` is no mask,
    and the way one arrives unasked is ``optax.inject_hyperparams``, which calls a mask
    *function* not named in ``static_args`` as a schedule, with the step count, so that
    ``lambda p: jax.tree.map(lambda x: x.ndim >= 2, p)`` comes back as one ``False``.
    """
    if mask is None or is_mask_fn(mask):
        return
    if _is_bool_leaf(mask) and jnp.ndim(mask) == 0:
        raise TypeError(
            f"`{name}` is a single bool ({bool(mask)}): a mask is a pytree of bools shaped like "
            "the params (or a prefix of it), or a function returning one; pass None to apply "
            "to every leaf. Inside `optax.inject_hyperparams`, a mask function must be named in "
            f"static_args (`inject_hyperparams(tx, static_args=('{name}',))`): otherwise optax "
            "calls it with the step count and hands the transform its one-bool result."
        )
    for leaf in jax.tree.leaves(mask):
        if not _is_bool_leaf(leaf):
            raise TypeError(
                f"`{name}` must be a pytree of booleans (True = apply) or a callable returning "
                f"one; found a leaf of type {type(leaf).__name__}."
            )


def check_mask_matches(name: str, mask: Any, params: Any) -> None:
    """At ``init``: the mask tree must be the params tree or a prefix of it (optax semantics)."""
    if mask is None:
        return
    tree = resolve_mask(mask, params)
    try:
        jax.tree.map(lambda m, p: None, tree, params)
    except (ValueError, TypeError) as e:
        raise ValueError(
            f"`{name}`: the mask's tree structure does not match the params (it must be the "
            f"same tree or a prefix of it).\n  mask:   {jax.tree.structure(tree)}\n  params: "
            f"{jax.tree.structure(params)}"
        ) from e


def leaf_flags(mask: MaskOrFn, params: Any, treedef: Any) -> list[bool]:
    """One Python bool per leaf of ``treedef`` (all ``True`` without a mask)."""
    if mask is None:
        return [True] * treedef.num_leaves
    tree = resolve_mask(mask, params)
    full = jax.tree.map(
        lambda m, p: jax.tree.map(lambda _: bool(m), p, is_leaf=_is_none), tree, params
    )
    return treedef.flatten_up_to(full)


def _is_none(x: Any) -> bool:
    return x is None


def masked_if(tx: optax.GradientTransformation, mask: MaskOrFn) -> Any:
    """``optax.masked(tx, mask)`` when a mask is given, else ``tx`` (with extra-args support).

    The mask is checked against the params at ``init`` (a clear error instead of optax's).
    """
    if mask is None:
        return optax.with_extra_args_support(tx)
    masked = optax.masked(tx, mask if is_mask_fn(mask) else lambda p: resolve_mask(mask, p))

    def init_fn(params):
        if not is_params_placeholder(params):
            check_mask_matches("mask", mask, params)
        return masked.init(params)

    return optax.GradientTransformationExtraArgs(init_fn, masked.update)
