"""Argument validation: a bad argument is an error at construction, never a NaN later.

Every error names the argument, the allowed range and, where there is one, the fix.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

ScalarOrSchedule = optax.ScalarOrSchedule
MaskOrFn = Any  # a pytree (or prefix) of bools, or a callable params -> such a pytree

NO_PARAMS_MSG = (
    "{name}: `params` is None. This transform needs the current parameters: call "
    "`tx.update(updates, state, params)` (a chain passes them on to every transform in it)."
)

__all__ = [
    "NO_PARAMS_MSG",
    "MaskOrFn",
    "ScalarOrSchedule",
    "check_bool",
    "check_choice",
    "check_int",
    "check_int_or_traced",
    "check_metrics_every",
    "check_scalar",
    "is_concrete",
    "is_params_placeholder",
    "no_params_message",
    "require_params",
]


def is_concrete(value: Any) -> bool:
    """True when ``value`` can be read as a Python number now (not a tracer)."""
    if isinstance(value, jax.core.Tracer):
        return False
    try:
        float(jnp.asarray(value).reshape(-1)[0]) if jnp.size(value) else None
    except (jax.errors.ConcretizationTypeError, TypeError):
        return False
    return True


def _describe_range(low, high, low_inclusive, high_inclusive) -> str:
    parts = []
    if low is not None:
        parts.append(f"{'>=' if low_inclusive else '>'} {low}")
    if high is not None:
        parts.append(f"{'<=' if high_inclusive else '<'} {high}")
    return "a finite number " + " and ".join(parts) if parts else "a finite number"


def _check_number(name, x, low, high, low_inclusive, high_inclusive, where=""):
    allowed = _describe_range(low, high, low_inclusive, high_inclusive)
    arr = jnp.asarray(x)
    if arr.ndim != 0:
        raise ValueError(f"`{name}` must be a scalar{where}; got an array of shape {arr.shape}.")
    v = float(arr)
    bad = not math.isfinite(v)
    if low is not None and (v < low or (v == low and not low_inclusive)):
        bad = True
    if high is not None and (v > high or (v == high and not high_inclusive)):
        bad = True
    if bad:
        raise ValueError(f"`{name}` must be {allowed}{where}; got {v!r}.")


def check_scalar(
    name: str,
    value: Any,
    *,
    low: float | None = 0.0,
    high: float | None = None,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
    allow_schedule: bool = True,
) -> None:
    """Validate a strength, learning rate or other real hyperparameter at construction.

    Constants (Python numbers, NumPy or concrete JAX scalars) are checked now. A schedule is
    checked by evaluating it at step 0, when that gives a concrete number (a value equal to an
    exclusive lower bound is allowed there, for warmups that start at 0); values at later steps
    are the schedule's responsibility. Traced values (``optax.inject_hyperparams`` under ``jit``)
    cannot be checked and are accepted.

    Raises:
      TypeError: ``value`` is neither a number nor (where allowed) a callable schedule.
      ValueError: ``value`` is outside the allowed range, NaN or infinite. The message names the
        argument and the allowed range.
    """
    if callable(value):
        if not allow_schedule:
            raise TypeError(f"`{name}` must be a number, not a schedule; got {value!r}.")
        try:
            v0 = value(jnp.zeros([], jnp.int32))
        except Exception as e:  # noqa: BLE001 - any failure here is the user's schedule
            raise ValueError(f"`{name}` is a schedule that fails at step 0: {e}") from e
        if is_concrete(v0):
            # A schedule may start at the bound (a warmup from 0); it may not start beyond it.
            _check_number(name, v0, low, high, True, high_inclusive, " (schedule at step 0)")
        return
    if isinstance(value, (bool, str, bytes)) or value is None:
        raise TypeError(
            f"`{name}` must be a number{' or a schedule' if allow_schedule else ''}; "
            f"got {type(value).__name__} {value!r}."
        )
    if isinstance(value, jax.core.Tracer):
        return
    try:
        arr = jnp.asarray(value)
    except TypeError as e:
        raise TypeError(f"`{name}` must be a number; got {type(value).__name__}.") from e
    if not jnp.issubdtype(arr.dtype, jnp.number):
        raise TypeError(f"`{name}` must be a real number; got dtype {arr.dtype}.")
    if not is_concrete(arr):
        return
    _check_number(name, arr, low, high, low_inclusive, high_inclusive)


def check_int(name: str, value: Any, *, low: int | None = 0, high: int | None = None) -> int:
    """Validate an integer hyperparameter (number of iterations, patience, period)."""
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise TypeError(f"`{name}` must be an integer; got {type(value).__name__} {value!r}.")
    v = int(value.__index__())
    if (low is not None and v < low) or (high is not None and v > high):
        rng = " and ".join(
            p for p in (f">= {low}" if low is not None else "", f"<= {high}" if high else "") if p
        )
        raise ValueError(f"`{name}` must be an integer {rng}; got {v}.")
    return v


def check_choice(name: str, value: Any, choices: Sequence[str]) -> str:
    """Validate a method / norm / mode name against the allowed strings."""
    if not isinstance(value, str) or value not in choices:
        allowed = ", ".join(repr(c) for c in choices)
        raise ValueError(f"`{name}` must be one of {allowed}; got {value!r}.")
    return value


def is_params_placeholder(x: Any) -> bool:
    """True for the placeholder that ``optax.tree.map_params`` passes to ``init``."""
    return type(x).__name__ == "_ParamsPlaceholder"


def no_params_message(name: str) -> str:
    """The missing-``params`` error of transform ``name``: what to pass, and where the
    transform goes in a chain."""
    from optareg import _chain  # noqa: PLC0415 - _chain imports modules that import this one

    where = _chain.where_of(name)
    return NO_PARAMS_MSG.format(name=name) + (f" It goes {where}." if where else "")


def require_params(params: Any, name: str) -> None:
    """Raise the standard error when a transform that needs params got none."""
    if params is None:
        raise ValueError(no_params_message(name))


def check_bool(name: str, value: Any) -> bool:
    """Validate a flag: a Python bool, nothing else."""
    if not isinstance(value, bool):
        raise TypeError(f"`{name}` must be a bool; got {type(value).__name__} {value!r}.")
    return value


def check_int_or_traced(
    name: str, value: Any, *, low: int | None = 0, high: int | None = None
) -> Any:
    """Validate an integer argument that ``optax.inject_hyperparams`` may pass as an array.

    ``inject_hyperparams`` without ``static_args`` passes every number as an array: a concrete
    one (at ``init``) is checked and returned as a Python int; a traced one (in a jitted
    ``update``) cannot be checked and is returned as it is, a 0-d integer tracer, for a
    computation that accepts it (a ``lax.cond`` predicate, a loop bound, a ``lax.switch`` index).
    """
    if isinstance(value, (jax.Array, np.ndarray)) and not isinstance(value, bool):
        if value.ndim != 0 or not jnp.issubdtype(value.dtype, jnp.integer):
            raise TypeError(
                f"`{name}` must be an integer; got an array of dtype {value.dtype} and shape "
                f"{value.shape}."
            )
        if isinstance(value, jax.core.Tracer):
            return value
        value = int(value)
    return check_int(name, value, low=low, high=high)


def check_metrics_every(value: Any) -> Any:
    """Validate ``metrics_every``: an int >= 1 (a traced one is used as it is: the statistics
    are then computed behind a ``lax.cond`` on ``count % metrics_every == 0``)."""
    return check_int_or_traced("metrics_every", value, low=1)


def check_not_a_step_count(params: Any, what: str, argname: str) -> None:
    """Raise a ``TypeError`` when a function of the params is called with a scalar integer.

    ``optax.inject_hyperparams`` calls every callable argument not named in ``static_args`` as
    a schedule, with the step count; a mask or penalty function called that way would give a
    silently wrong result (a mask of all ``False``) or an unrelated error. No parameter tree is
    one integer scalar, so that is always this mistake.
    """
    dtype = getattr(params, "dtype", None)
    if isinstance(params, int) and not isinstance(params, bool):
        dtype = jnp.int32
    if dtype is None or getattr(params, "ndim", 0) != 0 or not jnp.issubdtype(dtype, jnp.integer):
        return
    raise TypeError(
        f"optareg: {what} was called with a scalar integer (an optimizer step count), not with "
        "the params. `optax.inject_hyperparams` calls every callable argument as a schedule; "
        f"name it in its static_args: `optax.inject_hyperparams(tx, static_args=('{argname}',))`."
    )
