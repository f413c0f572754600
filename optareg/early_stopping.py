"""Pure, jit-able early stopping with Keras semantics. Being implemented."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax

__all__ = ["EarlyStoppingState", "early_stopping"]


class EarlyStoppingState(NamedTuple):
    """State of :func:`early_stopping`."""

    step: jax.Array
    wait: jax.Array
    best_value: jax.Array
    best_step: jax.Array
    best_params: Any
    should_stop: jax.Array


def early_stopping(patience, *, min_delta=0.0, mode="min", baseline=None, start_from_step=0):
    raise NotImplementedError
