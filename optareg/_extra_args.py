"""The one path of extra-args transforms (``sam_perturb``, ``sharpness_monitor``).

Such a transform needs a function of the parameters, ``grad_fn(params) -> grads``, passed as a
keyword of ``update`` (``optax.chain`` forwards it). Everything they share lives here: the
check that ``grad_fn`` was given, calling it with a clear error when it returns the wrong thing,
the check that the transform is not nested where ``grad_fn`` would be wrong
(``optax.MultiSteps``, ``optax.masked``), and float32 tree dot products and norms.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from optareg import _numerics

__all__ = [
    "call_grad_fn",
    "check_not_nested",
    "hessian_vector_product",
    "require_grad_fn",
    "tree_cos",
    "tree_dot",
    "tree_norm",
]


def require_grad_fn(grad_fn: Any, name: str) -> Callable:
    """``grad_fn`` itself, or a ``ValueError`` saying how to pass it."""
    if grad_fn is None:
        raise ValueError(
            f"{name}: `grad_fn` is missing; it must be a function params -> grads. Call "
            "`tx.update(grads, state, params, "
            "grad_fn=lambda p: jax.grad(loss)(p, batch))`, closing over the same batch (and RNG) "
            "that gave `grads`; `optax.chain` forwards the keyword. (Flax's "
            "`TrainState.apply_gradients(grads=..., grad_fn=...)` does not: it passes extra "
            "keywords to `.replace`; call `state.tx.update(...)` and `optax.apply_updates` "
            "yourself.)"
        )
    if not callable(grad_fn):
        raise TypeError(f"{name}: `grad_fn` must be a callable params -> grads; got {grad_fn!r}.")
    return grad_fn


def call_grad_fn(grad_fn: Callable, params: Any, like: Any, name: str) -> Any:
    """``grad_fn(params)``, checked to be a tree with the structure of ``like``.

    Raises:
      ValueError: ``grad_fn`` returned ``(loss, grads)`` or a tree of another structure.
    """
    out = grad_fn(params)
    want = jax.tree.structure(like, is_leaf=_is_none)
    got = jax.tree.structure(out, is_leaf=_is_none)
    if got == want:
        return out
    hint = ""
    pair = isinstance(out, tuple) and len(out) == 2
    if pair and jax.tree.structure(out[1], is_leaf=_is_none) == want:
        hint = (
            " It returned a pair that looks like `(loss, grads)`: use `jax.grad`, not "
            "`jax.value_and_grad`, or return `grads` only."
        )
    elif pair and jax.tree.structure(out[0], is_leaf=_is_none) == want:
        hint = (
            " It returned a pair that looks like `(grads, aux)` (`jax.grad(..., has_aux=True)`, "
            "e.g. with Haiku state or Flax `mutable=`): return the gradient only, "
            "`lambda p: jax.grad(loss, has_aux=True)(p, ...)[0]`."
        )
    raise ValueError(
        f"{name}: `grad_fn(params)` must return the gradient: a tree with the same structure as "
        f"the params (and the incoming updates).{hint}\n  expected: {want}\n  got:      {got}"
    )


def _is_none(x: Any) -> bool:
    return x is None


def hessian_vector_product(
    grad_fn: Callable,
    params: Any,
    vectors: Sequence[jax.Array],
    select: Sequence[bool],
    name: str,
) -> list[jax.Array]:
    """``H_SS·v``: the Hessian block of the selected leaves ``S`` times ``v``, the others fixed.

    Forward-over-reverse: ``jax.jvp`` of ``grad_fn`` (checked by :func:`call_grad_fn`) with
    respect to the selected leaves only, ``∂/∂t grad_fn(θ + t·v)|_{t=0}`` restricted to ``S``.
    The tangents are cast to the dtype of their leaf (``jax.jvp`` requires it); the products
    come back in their compute dtype (at least float32).

    Args:
      grad_fn: ``params -> grads``.
      params: the point ``θ`` (any pytree).
      vectors: one array per selected leaf, in leaf order.
      select: one Python bool per leaf of ``params`` (True = in the block).
      name: the transform's name, for error messages.

    Returns:
      The selected leaves of ``H·v``, one array per selected leaf.
    """
    leaves, treedef = jax.tree.flatten(params)
    idx = [i for i, s in enumerate(select) if s]

    def selected_grad(sub):
        full = list(leaves)
        for j, i in enumerate(idx):
            full[i] = sub[j]
        grads = call_grad_fn(grad_fn, treedef.unflatten(full), params, name)
        g_leaves = treedef.flatten_up_to(grads)
        return [g_leaves[i] for i in idx]

    primals = [leaves[i] for i in idx]
    tangents = [v.astype(p.dtype) for v, p in zip(vectors, primals, strict=True)]
    _, out = jax.jvp(selected_grad, (primals,), (tangents,))
    return [_numerics.upcast(o) for o in out]


_NESTING = {
    "_accumulation.py": (
        "inside `optax.MultiSteps`, which calls it once per k micro-batches with the mean "
        "gradient but the *last* micro-batch's `grad_fn` (neither full-batch SAM nor the mean "
        "of per-micro-batch SAM). Put it outside instead: "
        "`optax.chain(optareg.sam_perturb(rho), optax.MultiSteps(opt, k))` perturbs every "
        "micro-batch with its own gradient and accumulates the mean of the SAM gradients."
    ),
    "_masking.py": (
        "inside `optax.masked`, which hands it `MaskedNode` placeholders instead of the full "
        "parameters that `grad_fn` needs. Use the transform's own `mask=` argument instead."
    ),
}


def check_not_nested(name: str) -> None:
    """Raise when called (at trace time) from inside ``optax.MultiSteps`` or ``optax.masked``.

    Walks the Python call stack (a few dozen frames, once per trace under ``jit``) for optax's
    accumulation and masking modules: those wrappers cannot be detected any other way, and with
    them ``grad_fn`` silently means something else.
    """
    frame = sys._getframe(1)
    while frame is not None:
        filename = frame.f_code.co_filename.replace("\\", "/")
        if "/optax/" in filename:
            for module, why in _NESTING.items():
                if filename.endswith("/transforms/" + module):
                    raise ValueError(f"{name} is {why}")
        frame = frame.f_back


# --------------------------------------------------------------------------------------------
# float32 tree arithmetic over lists of leaves
# --------------------------------------------------------------------------------------------


def tree_dot(xs: Sequence[jax.Array], ys: Sequence[jax.Array]) -> jax.Array:
    """Σ x·y over all leaves, accumulated in (at least) float32."""
    total = jnp.zeros([], jnp.float32)
    for x, y in zip(xs, ys, strict=True):
        total = total + jnp.sum(_numerics.upcast(x) * _numerics.upcast(y))
    return total


def tree_scale(xs: Sequence[jax.Array]) -> jax.Array:
    """A power of two ``>= max|entry|`` over all leaves (1 for none or all zero)."""
    maxes = [jnp.max(jnp.abs(_numerics.upcast(x))) for x in xs if x.size]
    if not maxes:
        return jnp.ones([], jnp.float32)
    return _numerics.pow2_scale(jnp.max(jnp.stack(maxes)))


def tree_norm(xs: Sequence[jax.Array]) -> jax.Array:
    """Global norm, overflow-safe: ``s·‖x/s‖`` with ``s`` a power of two (exact rescaling)."""
    s = tree_scale(xs)
    scaled = [_numerics.upcast(x) / s for x in xs]
    return jnp.sqrt(tree_dot(scaled, scaled)) * s


def tree_cos(xs: Sequence[jax.Array], ys: Sequence[jax.Array]) -> jax.Array:
    """Cosine of two trees (no overflow; 0 when either is zero)."""
    sx, sy = tree_scale(xs), tree_scale(ys)
    xs = [_numerics.upcast(x) / sx for x in xs]
    ys = [_numerics.upcast(y) / sy for y in ys]
    norms = jnp.sqrt(tree_dot(xs, xs)) * jnp.sqrt(tree_dot(ys, ys))
    return tree_dot(xs, ys) * _numerics.safe_inv(norms)
