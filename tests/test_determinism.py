"""Determinism: the same inputs give bit-identical outputs; jit and eager agree to a few ulp.

* **Run to run**: two independent runs (a fresh transform and a freshly jitted step each; and two
  eager runs) of every registered transform on the same inputs give bit-identical updates and
  state over several steps.
* **jit vs eager**: XLA fuses and reorders floating-point operations under ``jax.jit`` (and
  contracts ``a·b + c`` into FMAs), so the two may differ in the last bits. The documented
  tolerance, per leaf, is ``|jit − eager| ≤ ULPS · eps(float32) · max(1, max|eager|)``, i.e. a few
  units in the last place of the leaf's largest entry, with ``ULPS`` = 8 for elementwise
  transforms and 64 for those built on reductions over the whole tree or on matrix
  factorizations / iterations (SAM's global norms and ``grad_fn``, ``prox_nuclear``'s SVD,
  ``spectral_clip``'s eigh / power / Newton–Schulz, ``prox_adam``'s moments). The measured
  maxima are far below these bounds (see ``test_jit_matches_eager_within_ulps``).
"""

from __future__ import annotations

import helpers as tc
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from registry import Entry
from registry._entry import code_path_key

STEPS = 2


# One registry entry per distinct code path (the conformance suite already compares jit and
# eager for every entry, with a looser absolute tolerance).
CASES = tc.one_per(code_path_key)
EPS32 = float(jnp.finfo(jnp.float32).eps)
_COMPOUND = ("sam_perturb", "prox_nuclear", "spectral_clip", "prox_adam")


def ulps_allowed(entry: Entry) -> int:
    return 64 if entry.id.startswith(_COMPOUND) else 8


def run(entry: Entry, *, jit: bool, params=None):
    """``STEPS`` steps of a fresh instance; returns the list of (updates, state)."""
    tx = entry.make()
    extra = tc.extra_args(entry)
    params = tc.make_params() if params is None else params

    def step(g, s, p):
        return tx.update(g, s, p, **extra)

    step = jax.jit(step) if jit else step
    state = tx.init(params)
    out = []
    for i in range(STEPS):
        updates, state = step(tc.grads_for(params, seed=60 + i), state, params)
        out.append((updates, state))
        params = optax.apply_updates(params, updates)
    return out


@pytest.mark.parametrize("jit", [True, False], ids=["jit", "eager"])
@pytest.mark.parametrize("entry", CASES)
def test_two_runs_are_bit_identical(entry: Entry, jit: bool):
    tc.skip_if(entry, "jit")
    first, second = run(entry, jit=jit), run(entry, jit=jit)
    for a, b in zip(first, second, strict=True):
        tc.assert_identical(a, b)


def _max_ulps(a, b) -> float:
    worst = 0.0
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        x = np.asarray(x, np.float64)
        y = np.asarray(y, np.float64)
        if x.size == 0 or x.dtype == bool:
            continue
        scale = max(1.0, float(np.max(np.abs(y))))
        worst = max(worst, float(np.max(np.abs(x - y))) / (EPS32 * scale))
    return worst


@pytest.mark.parametrize("entry", CASES)
def test_jit_matches_eager_within_ulps(entry: Entry):
    tc.skip_if(entry, "jit")
    jitted, eager = run(entry, jit=True), run(entry, jit=False)
    allowed = ulps_allowed(entry)
    for i, ((u_j, s_j), (u_e, s_e)) in enumerate(zip(jitted, eager, strict=True)):
        jax.tree.map(lambda x, y: None, (u_j, s_j), (u_e, s_e))  # same structure
        worst = max(_max_ulps(u_j, u_e), _max_ulps(s_j, s_e))
        assert worst <= allowed, f"step {i}: jit vs eager differ by {worst:.1f} ulps > {allowed}"
