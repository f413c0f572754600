"""Flax NNX helpers for the extra-args transforms (flax is imported only when they are called).

``optareg.sam_perturb`` needs ``grad_fn(params) -> grads``. With a Flax NNX model the obvious
closure (``nnx.update(model, p)`` or ``nnx.split``/``nnx.merge`` of the live model inside it)
fails under ``nnx.jit`` with a ``TraceContextError``: ``sam_perturb`` calls ``grad_fn`` inside
``jax.grad``, and the model's Variables (parameters, BatchNorm statistics, Dropout RNG counters)
belong to the outer trace. :func:`sam_grad_fn` builds the right closure.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

__all__ = ["sam_grad_fn"]


def sam_grad_fn(
    loss_fn: Callable[..., jax.Array], model: Any, *args: Any, wrt: Any = None, **kwargs: Any
) -> Callable[[Any], Any]:
    r"""SAM's ``grad_fn`` for a Flax NNX model; build it *before* the clean forward pass.

    It snapshots everything of ``model`` that is not ``wrt`` (BatchNorm statistics, Dropout
    RNG keys and counters, non-trained variables) as plain arrays, at the moment it is called.
    The returned ``grad_fn(params)`` rebuilds a throw-away copy of the model from ``params`` and
    that snapshot and differentiates ``loss_fn(copy, *args, **kwargs)`` with respect to
    ``params``:

    .. math::

        \texttt{grad\_fn}(\theta') = \nabla_{\theta'}\,
        \texttt{loss\_fn}(\mathrm{merge}(\theta', s_0), \ldots),

    with ``s_0`` the non-parameter state when ``sam_grad_fn`` was called. So the perturbed pass

    * starts from the same statistics and RNG state as the clean pass: Dropout draws the **same**
      mask in both passes, and it never sees statistics the clean pass already updated;
    * updates nothing on ``model``: the batch statistics after a SAM step are those of the clean
      pass alone, as after a plain step.

    ``grad_fn`` accepts the params in both forms ``sam_perturb`` hands it: the pure arrays
    ``nnx.Optimizer.update`` passes to ``tx.update`` (``nnx.as_pure(nnx.state(model, wrt))``),
    or an ``nnx.State`` of Variables (``nnx.state(model, wrt)``, with the grads of
    ``nnx.grad``); it returns the gradient in the same form and structure.

    Args:
      loss_fn: ``loss_fn(model, *args, **kwargs) -> scalar``, the loss the clean gradient is
        taken of (``nnx.grad(loss_fn)(model, *args, **kwargs)``).
      model: the ``nnx.Module``, in the state of the clean pass's start.
      *args: the batch (and anything else ``loss_fn`` takes), closed over.
      wrt: the NNX filter of the trained variables, the ``wrt`` of ``nnx.Optimizer``
        (default ``nnx.Param``).
      **kwargs: keyword arguments of ``loss_fn``, closed over.

    Returns:
      ``grad_fn(params) -> grads``, to pass as ``optimizer.update(model, grads,
      grad_fn=grad_fn)`` (or ``tx.update(..., grad_fn=grad_fn)``).

    Raises:
      TypeError: ``loss_fn`` is not callable or ``model`` is not an ``nnx.Module``.
      ValueError: (from ``grad_fn``) ``params`` is not the ``wrt`` state of this model.

    Example:
      >>> import jax, jax.numpy as jnp, optax, optareg
      >>> from flax import nnx
      >>> model = nnx.Linear(2, 1, rngs=nnx.Rngs(0))
      >>> loss_fn = lambda m, x, y: jnp.mean((m(x) - y) ** 2)
      >>> tx = optareg.chain(optareg.sam_perturb(0.05), optax.sgd(0.1))
      >>> optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
      >>> @nnx.jit
      ... def train_step(model, optimizer, x, y):
      ...     grad_fn = optareg.nnx_sam_grad_fn(loss_fn, model, x, y)  # before the clean pass
      ...     grads = nnx.grad(loss_fn)(model, x, y)
      ...     optimizer.update(model, grads, grad_fn=grad_fn)
      >>> x, y = jnp.ones((4, 2)), jnp.zeros((4, 1))
      >>> train_step(model, optimizer, x, y)
      >>> int(optimizer.step[...])
      1

    References:
      Foret, Kleiner, Mobahi & Neyshabur, "Sharpness-Aware Minimization for Efficiently
      Improving Generalization", ICLR 2021 (the perturbed pass shares the batch and its
      randomness with the clean one).
    """
    if not callable(loss_fn):
        raise TypeError(
            "nnx_sam_grad_fn: `loss_fn` must be a callable `loss_fn(model, *args, **kwargs) -> "
            f"scalar`; got {type(loss_fn).__name__} {loss_fn!r}."
        )
    from flax import nnx  # optional dependency

    if not isinstance(model, nnx.Module):
        raise TypeError(
            f"nnx_sam_grad_fn: `model` must be an `nnx.Module`; got {type(model).__name__}. "
            "For a pytree of parameters pass `grad_fn=lambda p: jax.grad(loss)(p, batch)`."
        )
    wrt = nnx.Param if wrt is None else wrt
    graphdef, params0, rest = nnx.split(model, wrt, ...)
    want = jax.tree.structure(nnx.as_pure(params0))
    rest = nnx.as_pure(rest)  # arrays, not the model's Variables: a snapshot

    def loss_of(params):
        return loss_fn(nnx.merge(graphdef, params, rest), *args, **kwargs)

    def grad_fn(params):
        pure = nnx.as_pure(params)
        got = jax.tree.structure(pure)
        if got != want:
            raise ValueError(
                "nnx_sam_grad_fn: `grad_fn` got params that are not the `wrt` state of the "
                "model it was built for; pass the same `wrt` as nnx.Optimizer (default "
                f"nnx.Param).\n  expected: {want}\n  got:      {got}"
            )
        grads = jax.grad(loss_of)(pure)
        # the form of the input: pure arrays stay pure, a State of Variables gets Variables
        return jax.tree.unflatten(jax.tree.structure(params), jax.tree.leaves(grads))

    return grad_fn
