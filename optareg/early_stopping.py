"""Pure, jit-able early stopping with the semantics of ``keras.callbacks.EarlyStopping``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from optareg import _counters, _validation

__all__ = ["EarlyStopping", "EarlyStoppingState", "early_stopping"]


class EarlyStoppingState(NamedTuple):
    """State of :func:`early_stopping`.

    Attributes:
      step: int32, number of ``update`` calls so far (the Keras epoch index of the next call).
      wait: int32, the Keras wait counter (monitored calls since the last reset).
      best_value: float32, the best value seen (``+inf`` in ``"min"`` mode, ``-inf`` in
        ``"max"`` mode before any improvement).
      best_step: int32, the step of ``best_params`` (Keras ``best_epoch``).
      best_params: the parameters passed with the best value (Keras ``restore_best_weights``).
      should_stop: bool, set when patience ran out; stays set.
      stopped_step: int32, the step at which ``should_stop`` was set (0 while running, as Keras'
        ``stopped_epoch``).
    """

    step: jax.Array  # int32, shape ()
    wait: jax.Array  # int32, shape ()
    best_value: jax.Array  # float32, shape ()
    best_step: jax.Array  # int32, shape ()
    best_params: Any
    should_stop: jax.Array  # bool, shape ()
    stopped_step: jax.Array  # int32, shape ()


class EarlyStopping(NamedTuple):
    """The pair of pure functions returned by :func:`early_stopping`."""

    init: Callable[[Any], EarlyStoppingState]
    update: Callable[[EarlyStoppingState, Any, Any], EarlyStoppingState]


def early_stopping(
    patience: int,
    *,
    min_delta: float = 0.0,
    mode: str = "min",
    baseline: float | None = None,
    start_from_step: int = 0,
) -> EarlyStopping:
    r"""Early stopping as a pair of pure, jit-able functions, with Keras' exact semantics.

    ``init(params) -> state`` and ``update(state, value, params) -> state``; call ``update`` once
    per evaluation (Keras: once per epoch) with the monitored value and the parameters that gave
    it, and stop the loop when ``state.should_stop``; ``state.best_params`` are the weights to
    restore. Each call reproduces ``keras.callbacks.EarlyStopping.on_epoch_end`` (Keras 3, with
    ``restore_best_weights=True``), step ``t`` being the Keras epoch index:

    1. calls with ``t < start_from_step`` are ignored (only the step counter moves);
    2. at ``t = start_from_step`` the current parameters become ``best_params`` (``best_step=t``);
    3. ``wait ← wait + 1``; the value *improves* iff ``value + |min_delta| < best`` in ``"min"``
       mode (``value − |min_delta| > best`` in ``"max"`` mode);
    4. on improvement: ``best ← value``, ``best_step ← t``, ``best_params ← params``, and
       ``wait ← 0`` only if the value also improves on ``baseline`` (or there is none);
    5. otherwise, stop when ``wait ≥ patience`` and ``t > 0``.

    Once ``should_stop`` is set the state is frozen (Keras is not called again after it stops):
    further calls only advance ``step``. Values are compared in float32; a NaN value is never an
    improvement (it counts toward patience). ``init`` and ``update`` can be wrapped in
    ``jax.jit`` and used inside ``jax.lax`` loops.

    Args:
      patience: number of monitored calls without improvement after which to stop (int ``>= 0``).
      min_delta: minimum change that counts as an improvement; its sign is ignored (as in Keras).
      mode: ``"min"`` (the value should decrease, e.g. a loss) or ``"max"`` (e.g. an accuracy).
        Keras' ``"auto"`` infers the direction from a metric name, which is not available here.
      baseline: a value the monitored value must improve on for the wait counter to reset;
        ``None`` for no baseline.
      start_from_step: number of initial calls to ignore (warm-up; Keras ``start_from_epoch``).

    Returns:
      An :class:`EarlyStopping` named tuple ``(init, update)``; its state is
      :class:`EarlyStoppingState`.

    Example:
      >>> import jax, jax.numpy as jnp, optareg
      >>> es = optareg.early_stopping(2)
      >>> update = jax.jit(es.update)
      >>> state = es.init({"w": jnp.zeros(())})
      >>> for t, loss in enumerate([10.0, 9.0, 8.0, 9.0, 8.9, 8.7, 9.0, 8.0]):
      ...     state = update(state, loss, {"w": jnp.float32(t)})
      ...     if state.should_stop:
      ...         break
      >>> t, int(state.best_step), float(state.best_value), float(state.best_params["w"])
      (4, 2, 8.0, 2.0)

    References:
      Keras, ``keras.callbacks.EarlyStopping`` (``keras/src/callbacks/early_stopping.py``).
      Prechelt, "Early Stopping — But When?", Neural Networks: Tricks of the Trade, 1998.
    """
    patience = _validation.check_int("patience", patience, low=0)
    _validation.check_scalar("min_delta", min_delta, low=None, allow_schedule=False)
    if mode == "auto":
        raise ValueError(
            '`mode` must be "min" or "max"; got "auto" (Keras infers the direction from the '
            'metric name, which early_stopping does not see: pass mode="min" for a loss, '
            'mode="max" for an accuracy).'
        )
    _validation.check_choice("mode", mode, ("min", "max"))
    if baseline is not None:
        _validation.check_scalar("baseline", baseline, low=None, allow_schedule=False)
    start_from_step = _validation.check_int("start_from_step", start_from_step, low=0)

    # Keras: min_delta = abs(min_delta), negated in "min" mode; improvement iff
    # monitor_op(value - min_delta, reference).
    delta = jnp.float32(-abs(float(min_delta)) if mode == "min" else abs(float(min_delta)))
    monitor_op = jnp.less if mode == "min" else jnp.greater
    initial_best = jnp.float32(jnp.inf if mode == "min" else -jnp.inf)

    def is_improvement(value, reference):
        return monitor_op(value - delta, reference)

    def init(params: Any) -> EarlyStoppingState:
        zero = jnp.zeros([], jnp.int32)
        return EarlyStoppingState(
            step=zero,
            wait=zero,
            best_value=initial_best,
            best_step=zero,
            best_params=jax.tree.map(lambda p: jnp.array(p, copy=True), params),
            should_stop=jnp.zeros([], jnp.bool_),
            stopped_step=zero,
        )

    def update(state: EarlyStoppingState, value: Any, params: Any) -> EarlyStoppingState:
        value = jnp.asarray(value, jnp.float32)
        if value.shape != ():
            raise ValueError(f"early_stopping: `value` must be a scalar; got shape {value.shape}.")
        return _keras_step(
            state, value, params, patience, start_from_step, baseline, is_improvement
        )

    return EarlyStopping(init, update)


def _keras_step(state, value, params, patience, start_from_step, baseline, is_improvement):
    """One ``on_epoch_end`` of ``keras.callbacks.EarlyStopping``, as a pure function."""
    t = state.step
    active = (t >= start_from_step) & ~state.should_stop

    # Keras: `if self.restore_best_weights and self.best_weights is None`
    first = active & (t == start_from_step)
    best_step = jnp.where(first, t, state.best_step)

    wait = state.wait + 1
    improved = active & is_improvement(value, state.best_value)
    best_value = jnp.where(improved, value, state.best_value)
    best_step = jnp.where(improved, t, best_step)
    keep_params = first | improved
    if baseline is None:
        reset = improved
    else:
        reset = improved & is_improvement(value, jnp.float32(baseline))
    wait = jnp.where(reset, 0, wait)
    stop = active & ~improved & (wait >= patience) & (t > 0)

    best_params = jax.tree.map(
        lambda b, p: jnp.where(keep_params, jnp.asarray(p, b.dtype), b),
        state.best_params,
        params,
    )
    return EarlyStoppingState(
        step=_counters.increment(t),
        wait=jnp.where(active, wait, state.wait).astype(jnp.int32),
        best_value=best_value,
        best_step=best_step.astype(jnp.int32),
        best_params=best_params,
        should_stop=state.should_stop | stop,
        stopped_step=jnp.where(stop, t, state.stopped_step).astype(jnp.int32),
    )
