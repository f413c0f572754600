"""Diagnostics: metrics recorded in optimizer state and read back as one flat dict."""

from __future__ import annotations

from typing import Any

import jax

__all__ = ["metrics", "track"]


def _has_metrics(x: Any) -> bool:
    return hasattr(x, "optareg_metrics") and not isinstance(x, type)


def metrics(opt_state: Any) -> dict[str, jax.Array]:
    """Every metric recorded by optareg transforms anywhere in an optimizer state, as a flat dict.

    Walks any optimizer state (``optax.chain``, ``optax.masked``, ``optax.inject_hyperparams``,
    ``optax.MultiSteps``, nested combinations) and collects the metrics of every optareg state it
    finds. Keys are flat strings (``"<transform>/<metric>"``); values are JAX scalars, so the call
    is jit-compatible and the keys are the same at every step. When the same transform appears
    twice, the second one's keys get a ``#2`` suffix (``#3`` ...).

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
            out[final] = value
    return out


def track(*, per_leaf=False, name="optareg"):
    """Pass-through transform that records diagnostics. Being implemented."""
    raise NotImplementedError
