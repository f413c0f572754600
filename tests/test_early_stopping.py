"""optareg.early_stopping reproduces keras.callbacks.EarlyStopping (Keras 3) exactly.

Oracle: ``KerasOracle`` below is a line-by-line transcription of
``keras/src/callbacks/early_stopping.py`` (``__init__``, ``_set_monitor_op``, ``on_epoch_end``,
``_is_improvement``) with ``restore_best_weights=True``; the golden sequences are derived by hand
from that code in the comments.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import optareg


class KerasOracle:
    """keras.callbacks.EarlyStopping.on_epoch_end, transcribed (comparisons in float32)."""

    def __init__(self, patience, min_delta=0.0, mode="min", baseline=None, start_from_epoch=0):
        self.patience = patience
        self.baseline = baseline
        self.min_delta = abs(min_delta)
        self.start_from_epoch = start_from_epoch
        self.monitor_op = np.less if mode == "min" else np.greater
        if self.monitor_op is np.less:
            self.min_delta *= -1
        self.best = np.float32(np.inf if self.monitor_op is np.less else -np.inf)
        self.wait = 0
        self.stopped_epoch = 0
        self.best_weights = None
        self.best_epoch = 0
        self.stop_training = False

    def _is_improvement(self, monitor_value, reference_value):
        return self.monitor_op(
            np.float32(monitor_value) - np.float32(self.min_delta), np.float32(reference_value)
        )

    def on_epoch_end(self, epoch, current, weights):
        if current is None or epoch < self.start_from_epoch:
            return
        if self.best_weights is None:
            self.best_weights = weights
            self.best_epoch = epoch
        self.wait += 1
        if self._is_improvement(current, self.best):
            self.best = np.float32(current)
            self.best_epoch = epoch
            self.best_weights = weights
            if self.baseline is None or self._is_improvement(current, self.baseline):
                self.wait = 0
            return
        if self.wait >= self.patience and epoch > 0:
            self.stopped_epoch = epoch
            self.stop_training = True


def params_at(t):
    """Distinct params per epoch, so best_params identifies the epoch they came from."""
    return {"w": jnp.full((2, 3), t, jnp.float32), "b": jnp.asarray(float(t), jnp.bfloat16)}


def run(values, patience, *, jit=False, **kw):
    """Run the optareg update like a Keras fit loop; return (stopped_epoch or None, state)."""
    es = optareg.early_stopping(patience, **kw)
    update = jax.jit(es.update) if jit else es.update
    state = es.init(params_at(-1))
    for epoch, v in enumerate(values):
        state = update(state, v, params_at(epoch))
        if bool(state.should_stop):
            return epoch, state
    return None, state


def run_keras(values, patience, *, min_delta=0.0, mode="min", baseline=None, start_from_step=0):
    cb = KerasOracle(patience, min_delta, mode, baseline, start_from_step)
    for epoch, v in enumerate(values):
        cb.on_epoch_end(epoch, v, epoch)
        if cb.stop_training:
            return epoch, cb
    return None, cb


def assert_best_params(state, epoch):
    chex.assert_trees_all_equal(state.best_params, params_at(epoch))
    chex.assert_trees_all_equal_shapes_and_dtypes(state.best_params, params_at(0))


# ---------------------------------------------------------------- golden sequences (by hand)


def test_golden_issue_sequence_patience_2():
    # losses [10, 9, 8, 9, 8.9, 8.7, 9, 8], patience 2, mode "min":
    #   e0: wait=1; 10 < inf  -> best=10, wait=0
    #   e1: wait=1; 9 < 10    -> best=9,  wait=0
    #   e2: wait=1; 8 < 9     -> best=8,  wait=0   (best_epoch 2)
    #   e3: wait=1; 9 < 8 no  -> 1 >= 2 no
    #   e4: wait=2; 8.9 < 8 no -> 2 >= 2 and e4 > 0: stop at epoch 4
    values = [10, 9, 8, 9, 8.9, 8.7, 9, 8]
    stopped, state = run(values, 2, jit=True)
    assert stopped == 4
    chex.assert_trees_all_equal(state, run(values, 2)[1])  # jit == eager
    assert int(state.stopped_step) == 4
    assert int(state.best_step) == 2
    assert float(state.best_value) == 8.0
    assert_best_params(state, 2)
    assert run_keras(values, 2)[0] == 4


def test_golden_min_delta():
    # losses [10, 9, 8.5, 8.3, 8.0, 7.9], patience 2, min_delta 0.5 (improve iff v + 0.5 < best):
    #   e0: 10.5 < inf -> best 10; e1: 9.5 < 10 -> best 9
    #   e2: wait=1; 9.0 < 9 no (exact tie: strict inequality)
    #   e3: 8.8 < 9 -> best 8.3, wait 0 (best_epoch 3)
    #   e4: wait=1; 8.5 < 8.3 no;  e5: wait=2; 8.4 < 8.3 no -> stop at epoch 5
    values = [10, 9, 8.5, 8.3, 8.0, 7.9]
    stopped, state = run(values, 2, min_delta=0.5)
    assert stopped == 5
    assert int(state.best_step) == 3
    assert float(state.best_value) == pytest.approx(8.3)
    assert_best_params(state, 3)
    # The sign of min_delta is ignored (Keras takes abs).
    assert run(values, 2, min_delta=-0.5)[0] == 5
    # Without min_delta every value improves: no stop.
    assert run(values, 2)[0] is None


def test_golden_baseline_blocks_reset():
    # losses [10, 9, 8, 8.5, 6.5, 7], patience 2, baseline 7 (wait resets only below 7 - 0):
    #   e0: wait=1, improves (best 10) but 10 < 7 no -> wait stays 1, return
    #   e1: wait=2, improves (best 9), no reset;  e2: wait=3, improves (best 8), no reset
    #   e3: wait=4; 8.5 < 8 no -> 4 >= 2: stop at epoch 3 (best_epoch 2)
    values = [10, 9, 8, 8.5, 6.5, 7]
    stopped, state = run(values, 2, baseline=7.0)
    assert stopped == 3
    assert int(state.best_step) == 2
    assert int(state.wait) == 4
    assert_best_params(state, 2)
    # Without a baseline: e3 wait 1, e4 improves (reset), e5 wait 1 -> no stop.
    assert run(values, 2)[0] is None


def test_golden_baseline_reset_when_beaten():
    # losses [10, 6.9, 7.0, 7.1, 6.8], patience 2, baseline 7:
    #   e0: wait=1, improves, 10 < 7 no -> wait 1
    #   e1: wait=2, improves and 6.9 < 7 -> wait 0 (best 6.9, best_epoch 1)
    #   e2: wait=1; 7.0 < 6.9 no;  e3: wait=2; 7.1 < 6.9 no -> stop at epoch 3
    stopped, state = run([10, 6.9, 7.0, 7.1, 6.8], 2, baseline=7.0)
    assert stopped == 3
    assert int(state.best_step) == 1
    assert float(state.best_value) == pytest.approx(6.9)


def test_golden_improving_never_stops_even_above_baseline():
    # Keras returns right after an improvement, before the patience check: a sequence that keeps
    # improving never stops, although it never beats the baseline and wait grows past patience.
    stopped, state = run([10, 9, 8, 7.5, 7.2], 1, baseline=1.0)
    assert stopped is None
    assert int(state.wait) == 5
    assert int(state.best_step) == 4


def test_golden_mode_max():
    # accuracies [0.5, 0.6, 0.7, 0.65, 0.71, 0.715, 0.6], mode "max", patience 2:
    #   min_delta 0.02 (improve iff v - 0.02 > best): e0..e2 improve (best 0.7 at e2)
    #   e3: wait=1; 0.63 > 0.7 no;  e4: wait=2; 0.69 > 0.7 no -> stop at epoch 4
    #   min_delta 0: e3 wait 1; e4 0.71 > 0.7 improves; e5 improves; e6 wait 1 -> no stop
    values = [0.5, 0.6, 0.7, 0.65, 0.71, 0.715, 0.6]
    stopped, state = run(values, 2, mode="max", min_delta=0.02)
    assert stopped == 4
    assert int(state.best_step) == 2
    assert float(state.best_value) == pytest.approx(0.7)
    assert_best_params(state, 2)
    stopped, state = run(values, 2, mode="max")
    assert stopped is None
    assert int(state.best_step) == 5
    assert_best_params(state, 5)


def test_golden_start_from_step():
    # losses [1, 2, 3, 4, 5, 6], patience 1, start_from_step 3: epochs 0-2 ignored entirely.
    #   e3: first monitored epoch (best_weights <- e3); wait=1; 4 < inf -> best 4, wait 0
    #   e4: wait=1; 5 < 4 no -> 1 >= 1: stop at epoch 4
    stopped, state = run([1, 2, 3, 4, 5, 6], 1, start_from_step=3)
    assert stopped == 4
    assert int(state.best_step) == 3
    assert float(state.best_value) == 4.0
    assert_best_params(state, 3)
    # Without warm-up it stops at e1 (2 is worse than 1).
    assert run([1, 2, 3, 4, 5, 6], 1)[0] == 1


def test_golden_patience_0_and_nan():
    # patience 0: e0 never stops (Keras requires epoch > 0); e1 5 -> 6 is no improvement: stop.
    assert run([5, 6], 0)[0] == 1
    # NaN is never an improvement: [nan, 3], patience 0:
    #   e0: best_weights <- e0 (first monitored); wait=1; nan < inf false; epoch 0: no stop
    #   e1: wait=2; 3 < inf -> best 3, wait 0 -> no stop, best_epoch 1
    stopped, state = run([float("nan"), 3.0], 0)
    assert stopped is None
    assert int(state.best_step) == 1
    assert_best_params(state, 1)
    # [1, nan, nan], patience 2: e1 wait 1, e2 wait 2 -> stop at 2, best stays e0.
    stopped, state = run([1.0, float("nan"), float("nan")], 2)
    assert stopped == 2
    assert int(state.best_step) == 0
    assert_best_params(state, 0)


def test_all_nan_restores_first_monitored_params():
    # Keras sets best_weights at the first monitored epoch even without improvement.
    stopped, state = run([float("nan")] * 5, 2, start_from_step=1)
    # e0 ignored; e1: best_weights <- e1, wait=1, nan < inf false; e2: wait=2 >= 2 -> stop at 2
    assert stopped == 2
    assert int(state.best_step) == 1
    assert_best_params(state, 1)
    assert run_keras([float("nan")] * 5, 2, start_from_step=1)[0] == stopped


# ---------------------------------------------------------------- property: matches the oracle


@given(
    values=st.lists(
        st.one_of(st.integers(0, 6).map(float), st.just(float("nan"))), min_size=1, max_size=12
    ),
    patience=st.integers(0, 4),
    min_delta=st.sampled_from([0.0, 0.5, 1.0, -1.0]),
    mode=st.sampled_from(["min", "max"]),
    baseline=st.sampled_from([None, 2.0, 4.5]),
    start=st.integers(0, 3),
)
def test_matches_keras_transcription(values, patience, min_delta, mode, baseline, start):
    kw = dict(min_delta=min_delta, mode=mode, baseline=baseline, start_from_step=start)
    stopped, state = run(values, patience, **kw)
    k_stopped, cb = run_keras(values, patience, **kw)
    assert stopped == k_stopped
    assert int(state.wait) == cb.wait
    assert int(state.best_step) == cb.best_epoch
    np.testing.assert_array_equal(np.float32(state.best_value), np.float32(cb.best))
    if cb.best_weights is not None:
        assert_best_params(state, cb.best_weights)
    else:  # nothing monitored yet: best_params are those given to init
        assert_best_params(state, -1)


# ---------------------------------------------------------------- API, jit, scan, validation


def test_both_call_styles_and_frozen_after_stop():
    es = optareg.early_stopping(1)
    init, update = optareg.early_stopping(1)
    p = params_at(0)
    s1, s2 = es.init(p), init(p)
    for v in [3.0, 4.0, 1.0, 0.5]:
        s1, s2 = es.update(s1, v, p), update(s2, v, p)
    chex.assert_trees_all_equal(s1, s2)
    assert bool(s1.should_stop) and int(s1.stopped_step) == 1
    assert float(s1.best_value) == 3.0  # later improvements are ignored once stopped
    assert int(s1.step) == 4
    assert isinstance(s1, optareg.EarlyStoppingState)


def test_inside_lax_scan_matches_python_loop():
    values = jnp.asarray([10, 9, 8, 9, 8.9, 8.7, 9, 8], jnp.float32)
    es = optareg.early_stopping(2)

    @jax.jit
    def scan(values):
        def body(state, tv):
            t, v = tv
            state = es.update(state, v, {"w": t.astype(jnp.float32)})
            return state, state.should_stop

        return jax.lax.scan(body, es.init({"w": jnp.float32(-1)}), (jnp.arange(8), values))

    state, stops = scan(values)
    np.testing.assert_array_equal(stops, [False] * 4 + [True] * 4)
    assert int(state.stopped_step) == 4 and float(state.best_params["w"]) == 2.0
    chex.assert_trees_all_equal_shapes_and_dtypes(state, es.init({"w": jnp.float32(0)}))


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(patience=-1), ValueError, "patience"),
        (dict(patience=1.5), TypeError, "patience"),
        (dict(patience=2, min_delta=float("nan")), ValueError, "min_delta"),
        (dict(patience=2, min_delta=float("inf")), ValueError, "min_delta"),
        (dict(patience=2, mode="auto"), ValueError, "mode"),
        (dict(patience=2, mode="minimize"), ValueError, "mode"),
        (dict(patience=2, baseline=float("inf")), ValueError, "baseline"),
        (dict(patience=2, start_from_step=-1), ValueError, "start_from_step"),
    ],
)
def test_validation(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        optareg.early_stopping(**kwargs)


def test_non_scalar_value_rejected():
    es = optareg.early_stopping(1)
    with pytest.raises(ValueError, match="scalar"):
        es.update(es.init(params_at(0)), jnp.ones(2), params_at(0))
