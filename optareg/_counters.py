"""Schedules and step counters: a strength is evaluated on the transform's own int32 counter.

The counter saturates (``optax.safe_increment``). ``metrics_every = k`` computes statistics on
the steps whose counter is a multiple of ``k`` (step 0 included), see :func:`on_metrics_step`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

__all__ = ["evaluate", "increment", "init_count", "on_metrics_step"]


def evaluate(value: optax.ScalarOrSchedule, count: jax.Array) -> Any:
    """The value of a constant or schedule at step ``count``."""
    return value(count) if callable(value) else value


def init_count() -> jax.Array:
    """A fresh int32 step counter (shape ``()``)."""
    return jnp.zeros([], jnp.int32)


increment = optax.safe_increment


def on_metrics_step(every: int, count: jax.Array, compute: Callable[[], Any], previous: Any) -> Any:
    """``compute()`` when ``count % every == 0``, else ``previous`` (same structure and dtypes).

    With ``every == 1`` no ``lax.cond`` is traced at all: the statistics are simply computed.
    On the other steps the skipped branch costs nothing but the predicate.
    """
    if isinstance(every, int) and every == 1:
        return compute()
    return jax.lax.cond(count % every == 0, lambda: compute(), lambda: previous)
