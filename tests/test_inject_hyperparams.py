"""``optax.inject_hyperparams(optareg.X)(...)`` with no ``static_args``, over the registry.

optax passes every number not named in ``static_args`` as an array, traced in a jitted
``update``: strengths, but also ``metrics_every``, iteration counts, ``axis`` and ``seed``.
For every registry entry (new transforms included: the loop is over ``registry.ENTRIES``) the
injected transform must init and update, with updates and metrics equal to the plain
transform's, and ``optareg.chain`` must still see through the wrapper. One entry per code path
and set of integer arguments keeps the compilations few.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import assert_close, extra_args, grads_for, make_params
from registry import ENTRIES, Entry

import optareg

# Entries whose arguments cannot be injected as arrays, and why. Callable arguments (mask
# functions, penalties, projections) are schedules to optax (it calls them with the step
# count): they are named in static_args, as optax documents; optareg then raises a TypeError
# saying so (tests/test_masks.py, tests/test_penalties.py).
_SHAPES = "`{}` decides the shapes the computation reduces to: name it in static_args"


def _is_schedule(fn) -> bool:
    try:
        return np.ndim(fn(jnp.zeros([], jnp.int32))) == 0
    except Exception:  # noqa: BLE001 - a mask / penalty / projection called with a step count
        return False


def _skip_reason(entry: Entry) -> str | None:
    for k, v in entry.kwargs.items():
        if callable(v) and not _is_schedule(v):
            return f"`{k}` is a function of the params: optax calls it as a schedule unless it is in static_args"
    if entry.factory is optareg.sharpness_monitor:
        return (
            "covered by tests/test_sharpness.py::test_inject_hyperparams (traced num_iters and "
            "metrics_every); its LOBPCG loop compiles for ~10 s per variant"
        )
    if entry.factory in (optareg.max_norm, optareg.unit_norm) and "axis" in entry.kwargs:
        return _SHAPES.format("axis")
    if isinstance(entry.kwargs.get("matrix_axes"), int):
        return _SHAPES.format("matrix_axes")
    return None


def _ints(entry: Entry) -> tuple[str, ...]:
    return tuple(sorted(k for k, v in entry.kwargs.items() if type(v) is int))


def _cases():
    seen, out = set(), []
    for e in ENTRIES:
        key = (e.factory, e.kwargs.get("method"), _ints(e))
        if key in seen:
            continue
        seen.add(key)
        reason = _skip_reason(e)
        marks = [pytest.mark.skip(reason=reason)] if reason else []
        out.append(pytest.param(e, id=e.id, marks=marks))
    return out


@pytest.fixture(autouse=True, scope="module")
def _fast_compilation():
    """Compile with most XLA optimizations off (compilation is nearly all of this module's
    time); plain and injected alike. The executables are dropped at the end."""
    before = jax.config.values["jax_disable_most_optimizations"]
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", before)
    jax.clear_caches()


def _order_error(tx, entry: Entry) -> str | None:
    """The error of ``optareg.chain`` with ``tx`` on the wrong side of an optimizer."""
    try:
        if entry.position == "first":
            optareg.chain(optax.sgd(0.1), tx)
        else:
            optareg.chain(tx, optax.sgd(0.1))
    except ValueError as e:
        return str(e)
    return None


@pytest.mark.parametrize("entry", _cases())
def test_inject_without_static_args_equals_plain(entry):
    plain = entry.make()
    injected = optax.inject_hyperparams(entry.factory)(**entry.kwargs)
    # the order check sees through the wrapper: misplaced, both raise the same error
    assert _order_error(injected, entry) == _order_error(plain, entry)
    params = make_params()
    extra = extra_args(entry)

    def run(tx):
        step = jax.jit(lambda g, s, p: tx.update(g, s, p, **extra))
        state, p, outs = tx.init(params), params, []
        for i in range(2):
            u, state = step(grads_for(p, seed=70 + i), state, p)
            p = optax.apply_updates(p, u)
            outs.append((u, optareg.metrics(state)))
        return outs

    for (u_plain, m_plain), (u_inj, m_inj) in zip(run(plain), run(injected), strict=True):
        assert_close(u_inj, u_plain, entry.atol)
        assert set(m_inj) == set(m_plain)
        for k in m_plain:
            np.testing.assert_allclose(m_inj[k], m_plain[k], rtol=1e-5, atol=1e-6, err_msg=k)
