"""Shared test helpers: the params tree, the loss and its gradient, step runners, comparisons,
the per-code-path selection of registry entries. One home; every suite imports from here."""

from __future__ import annotations

import importlib.util
import pathlib
import sys
from collections.abc import Callable, Iterable

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from registry import ENTRIES, Entry
from registry._entry import MASK  # noqa: F401  (re-exported for the suites)


def one_per(key: Callable[[Entry], object], entries: Iterable[Entry] = ENTRIES, param=True):
    """The first entry for each value of ``key`` (as ``pytest.param`` with the entry's id)."""
    seen, out = set(), []
    for e in entries:
        k = key(e)
        if k not in seen:
            seen.add(k)
            out.append(pytest.param(e, id=e.id) if param else e)
    return out


def make_params(dtype=jnp.float32, seed=0, zero=False):
    """A small mixed pytree: a Dense kernel and bias, a 4-D conv kernel (HWIO) and a scalar."""
    rng = np.random.default_rng(seed)
    shapes = {
        "conv": {"kernel": (3, 3, 2, 4)},
        "dense": {"bias": (4,), "kernel": (6, 4)},
        "scale": (),
    }
    return jax.tree.map(
        lambda s: jnp.zeros(s, dtype) if zero else jnp.asarray(rng.normal(size=s), dtype),
        shapes,
        is_leaf=lambda x: isinstance(x, tuple),
    )


def loss(params):
    """A smooth non-quadratic loss, so a perturbed gradient differs from the plain one."""
    return sum(
        jnp.sum(0.5 * x.astype(jnp.float32) ** 2 + jnp.sin(x.astype(jnp.float32)))
        for x in jax.tree.leaves(params)
    )


def grad_fn(params):
    return jax.tree.map(lambda g, p: g.astype(p.dtype), jax.grad(loss)(params), params)


def extra_args(entry: Entry) -> dict:
    return {"grad_fn": grad_fn} if entry.needs_grad_fn else {}


def grads_for(params, seed=1, zero=False):
    if zero:
        return jax.tree.map(jnp.zeros_like, params)
    return jax.tree.map(lambda g: g * 0.5, make_params(params_dtype(params), seed=seed))


def params_dtype(params):
    return jax.tree.leaves(params)[0].dtype


def skip_if(entry: Entry, check: str):
    if check in entry.skip:
        pytest.skip(entry.skip[check])


def make_step(tx, entry: Entry, jit=True):
    """One update + apply, jitted once and reused across runs of the same transform."""
    extra = extra_args(entry)

    def step(state, params, grads):
        updates, state = tx.update(grads, state, params, **extra)
        return updates, state, optax.apply_updates(params, updates)

    return jax.jit(step) if jit else step


def run_steps(tx, params, steps, *, entry, zero_grads=False, jit=True, step=None):
    """Run ``steps`` updates and applies; return the list of (updates, state, params) per step."""
    step = step or make_step(tx, entry, jit=jit)
    state = tx.init(params)
    out = []
    for i in range(steps):
        g = grads_for(params, seed=10 + i, zero=zero_grads)
        updates, state, params = step(state, params, g)
        out.append((updates, state, params))
    return out


def assert_close(a, b, atol):
    chex.assert_trees_all_close(a, b, atol=atol, rtol=atol)


def assert_identical(a, b):
    chex.assert_trees_all_equal_structs(a, b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x, np.float64), np.asarray(y, np.float64))


def chained(entry: Entry, tx, base=None):
    """Put ``tx`` where it belongs relative to a base optimizer."""
    base = base or optax.sgd(0.1)
    if entry.position == "first":
        return optax.chain(tx, base)
    return optax.chain(base, tx)


# ---------------------------------------------------------------------------------------------
# the example scripts (examples/ is not a package)
# ---------------------------------------------------------------------------------------------

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def load_example(name: str):
    """Import ``examples/<name>.py`` as a module (with ``examples/`` on ``sys.path``, as when
    the script runs, for the helpers it imports: ``examples/_cli.py``)."""
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def assert_png(path: pathlib.Path) -> None:
    """``path`` holds a PNG of more than 10 kB (a real figure, not an empty canvas)."""
    assert path.exists(), f"{path} was not written"
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 10_000, "not a (non-trivial) PNG"
