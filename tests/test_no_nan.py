"""No NaN from finite input: property tests over every registered transform.

The promise, made precise (each transform alone, not chained with an optimizer):

* **Moderate range** — params and gradients with entries in
  ``{0, ±subnormal, ±1e-30, ordinary |x| ≤ 1e4}`` (and ±max/4 for float16, whose range float32
  arithmetic covers): the updates *and every leaf of the state* are finite, shapes and dtypes are
  kept.
* **Full range** — entries up to ``±1e30`` and ``±max(dtype)/4`` for float32 / bfloat16 (a quarter
  of the range, so that ``θ + u`` itself cannot overflow): the updates are finite and the state
  holds no NaN. Quantities that are squares or norms of the inputs and are stored in float32 —
  Adam's second moment ``nu``, the recorded norms (``grad_norm``, ``param_norm``,
  ``update_norm``, ``perturbed_grad_norm``, ``sigma``) — may saturate to ``+inf`` when their exact
  value exceeds float32's range; everything else (ratios, cosines, power-iteration vectors,
  stored directions) stays finite. Norms must therefore be computed so that they do not
  overflow for entries below max/4 (scale by the max-abs, or by a power of two, before
  squaring).

Non-finite gradients (NaN/Inf) are *propagated*, never silently turned into finite numbers: the
table ``NONFINITE`` below documents, per transform, how far they spread and whether they stick
in the state; ``optax.apply_if_finite`` skips such steps without touching the inner state.

Run ``HYPOTHESIS_PROFILE=thorough pytest tests/test_no_nan.py`` for 500-example runs; the "ci"
profile uses ``max_examples // 15`` examples per (transform, range) plus the explicit corner
example.
"""

from __future__ import annotations

import re

import chex
import helpers as tc
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from registry import ENTRIES, Entry
from registry._entry import code_path_key

DTYPES = (jnp.float32, jnp.bfloat16, jnp.float16)
IDS = [e.id for e in ENTRIES]

# The suite's tree structure (the registry's masks and references are written for it), with the
# shapes drawn per example: 0-d, 1-d, 2-d and 4-d leaves, with size-1 axes.
SHAPES = {
    ("conv", "kernel"): [(3, 3, 2, 4), (1, 1, 1, 1), (2, 1, 3, 1), (1, 2, 1, 3)],
    ("dense", "bias"): [(4,), (1,)],
    ("dense", "kernel"): [(6, 4), (1, 4), (5, 1), (1, 1)],
    ("scale",): [()],
}

_N_EXAMPLES = max(2, settings().max_examples // 15)
_SATURATING = re.compile(
    r"\.nu\b|grad_norm|param_norm|update_norm|perturbed_grad_norm|\.sigma\b|/value\b|/penalty\b"
)


def _finfo(dtype):
    return jnp.finfo(dtype)


def special_values(dtype, full: bool) -> list[float]:
    fi = _finfo(dtype)
    tiny = float(fi.smallest_subnormal)
    vals = [0.0, tiny, -tiny, 1e-30, -1e-30, 1.0, -1.0]
    if jnp.dtype(dtype) == jnp.float16:
        vals += [float(fi.max) / 4, -float(fi.max) / 4]
    elif full:
        vals += [1e30, -1e30, float(fi.max) / 4, -float(fi.max) / 4]
    return vals


def largest(dtype, full: bool) -> float:
    return max(abs(v) for v in special_values(dtype, full))


@st.composite
def trees(draw, full: bool):
    """(dtype, shapes, params, grads, reference) with entries from the range's value set."""
    dtype = draw(st.sampled_from(DTYPES))
    shapes = {k: draw(st.sampled_from(v)) for k, v in SHAPES.items()}
    specials = special_values(dtype, full)
    value = st.one_of(st.sampled_from(specials), st.floats(-1e4, 1e4, allow_nan=False, width=32))

    def leaf(shape):
        n = int(np.prod(shape, dtype=np.int64))
        vals = draw(st.lists(value, min_size=n, max_size=n))
        return np.asarray(vals, np.float64).reshape(shape)

    def tree():
        return _assemble({k: jnp.asarray(leaf(s), dtype) for k, s in shapes.items()})

    return dtype, tree(), tree(), tree()


def _assemble(flat: dict) -> dict:
    out: dict = {}
    for path, x in flat.items():
        node = out
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = x
    return out


def corners(dtype, full: bool):
    """Two corner cases at the range's largest value m (every fifth / third entry negative):
    params and gradients with the same signs (``θ + u = 2m``: every norm, Gram matrix and
    singular value as large as the range allows), and gradients of opposite sign (``θ + u = 0``
    with huge intermediate products)."""
    m = largest(dtype, full)
    out = []
    for period, flip in ((5, 1.0), (3, -1.0)):
        flat = {}
        for k, shapes in SHAPES.items():
            shape = shapes[0]
            n = int(np.prod(shape, dtype=np.int64))
            signs = np.where(np.arange(n) % period == period - 1, -1.0, 1.0).reshape(shape)
            flat[k] = jnp.asarray(m * signs, dtype)
        t = _assemble(flat)
        out.append((dtype, t, jax.tree.map(lambda x, f=flip: x * f, t), t))
    return out


def make(entry: Entry, reference):
    if isinstance(entry.kwargs.get("reference"), dict):
        return entry.make(reference=reference)
    return entry.make()


def _leaves_with_paths(tree):
    return [
        (jax.tree_util.keystr(p), x)
        for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]
        if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.inexact)
    ]


def check_one_step(entry: Entry, case, full: bool):
    dtype, params, grads, reference = case
    tx = make(entry, reference)
    extra = tc.extra_args(entry)
    state0 = tx.init(params)
    updates, state = tx.update(grads, state0, params, **extra)
    chex.assert_trees_all_equal_shapes_and_dtypes(updates, params)
    chex.assert_trees_all_equal_shapes_and_dtypes(state, state0)
    chex.assert_tree_all_finite(updates)
    for path, x in _leaves_with_paths(state0) + _leaves_with_paths(state):
        x = np.asarray(x, np.float64)
        assert not np.isnan(x).any(), f"NaN in state {path}"
        if full and _SATURATING.search(path):
            assert not np.isneginf(x).any(), f"-inf in state {path}"
        else:
            assert np.isfinite(x).all(), f"non-finite state {path}: {x}"


_FULL_RANGE_BUGS: dict[str, str] = {}  # every transform keeps the full-range promise


def _full_range_xfail(entry_id: str) -> str | None:
    for key, reason in _FULL_RANGE_BUGS.items():
        if entry_id.startswith(key):
            return reason
    return None


def _code_paths() -> list[Entry]:
    """One registry entry per distinct numerical code path (factory, method, norm, ASAM, GSAM,
    LookSAM, per-leaf, reference, cautious); variants that only add a mask or a schedule reuse
    the same arithmetic and are covered by the conformance suite's finiteness checks."""

    def key(e):
        kw = e.kwargs
        extra = (kw.get("reference") is not None, kw.get("cautious", False), "matrix_axes" in kw)
        return (*code_path_key(e), *extra)

    return tc.one_per(key, param=False)


def _params(full: bool):
    out = []
    for e in _code_paths():
        reason = _full_range_xfail(e.id) if full else None
        marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
        out.append(pytest.param(e, id=e.id, marks=marks))
    return out


@pytest.mark.parametrize("entry", _params(full=False))
@settings(max_examples=_N_EXAMPLES)
@given(case=trees(full=False))
@example(case="corner")
def test_moderate_range_updates_and_state_finite(entry, case):
    # the moderate corner only differs from ordinary values for float16 (max/4)
    cases = corners(jnp.float16, False) if case == "corner" else [case]
    for c in cases:
        check_one_step(entry, c, full=False)


@pytest.mark.parametrize("entry", _params(full=True))
@settings(max_examples=_N_EXAMPLES)
@given(case=trees(full=True))
@example(case="corner")
def test_full_range_updates_finite_and_state_never_nan(entry, case):
    # float16's full range is its moderate range: the full corner is float32 / bfloat16
    full = [c for dt in (jnp.float32, jnp.bfloat16) for c in corners(dt, True)]
    cases = full if case == "corner" else [case]
    for c in cases:
        check_one_step(entry, c, full=True)


def test_spectral_power_vectors_survive_an_overflowing_step():
    """After one step on a matrix near max/4 the power-iteration vectors are still unit vectors
    (an unscaled ‖Wv‖ overflows, the vectors collapse to 0 and clipping stops for good)."""
    import optareg

    tx = optareg.spectral_clip(1.0, method="power")
    w = jnp.full((6, 4), 3e38 / 4, jnp.float32) * jnp.asarray([1.0, -1.0, 1.0, 1.0])
    state = tx.init({"w": jnp.eye(6, 4)})
    _, state = tx.update({"w": w - jnp.eye(6, 4)}, state, {"w": jnp.eye(6, 4)})
    np.testing.assert_allclose(np.linalg.norm(np.asarray(state.u["w"])), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(state.v["w"])), 1.0, rtol=1e-5)


# --------------------------------------------------------------------------------------------
# non-finite gradients: documented behaviour
# --------------------------------------------------------------------------------------------

# How a NaN / +Inf in one gradient entry spreads into the updates of one step ("entry": only
# that entry; "matrix": the matrix containing it; "leaf": the whole leaf; "tree": every leaf),
# and whether it sticks in the state (a later step with a finite gradient is still non-finite).
# Keys are registry-id prefixes (longest match wins). SAM's "entry" holds for the suite's
# separable loss: SAM evaluates grad_fn at θ + ε, and ε carries the NaN, so with a real network
# the NaN reaches every leaf.
NONFINITE = {
    "add_decayed_weights": ("entry", False),
    "decoupled_weight_decay": ("entry", False),
    "prox_l1": ("entry", False),
    "prox_elastic_net": ("entry", False),
    # NaN: the norm of its group is NaN, so the whole group is NaN; +Inf: the group's norm is
    # inf, its scale 1 − τ/inf = 1, so only the entry is inf
    "prox_group_lasso": {"nan": ("group", False), "inf": ("entry", False)},
    "prox_group_lasso-mask": ("entry", False),  # the conv kernel is masked out here
    "prox_nuclear": ("matrix", False),
    "prox_adam": ("entry", True),
    "sam_perturb": ("entry", False),
    "sam_perturb-gsam": ("tree", False),
    # linf: ε = ρ·sign(g) is finite for g = ±inf, so the perturbed gradient is finite
    "sam_perturb-linf": {"nan": ("entry", False), "inf": ("none", False)},
    "sam_perturb-reuse3": ("entry", True),
    "spectral_clip": ("entry", False),
    "spectral_clip-exact": ("leaf", False),
    "spectral_clip-newton_schulz": ("leaf", False),
    "spectral_clip-stacked": ("matrix", False),
    "spectral_clip-stacked_int": ("matrix", False),
    "track": ("entry", False),
    "max_norm": ("entry", False),
    "non_neg": ("entry", False),
    "unit_norm-mask": ("entry", False),
    "project-mask": ("entry", False),
    "add_penalty": ("entry", False),
    "unit_norm": {"nan": ("group", False), "inf": ("entry", False)},
    "project-per_leaf": {"nan": ("leaf", False), "inf": ("entry", False)},
    "project": ("tree", False),
    "low_precision_updates": ("entry", False),
    "sharpness_monitor": ("entry", False),  # updates pass through; the state holds no gradient
}
_SWALLOWS_NAN: dict[str, str | None] = {}  # no transform turns a NaN into a number
_BAD_INDEX = (0, 0, 0, 0)  # the poisoned entry of the conv kernel
ENTRY_AXIS = {e.id: e.kwargs.get("axis", -1) for e in ENTRIES}


def _lookup(table: dict, entry_id: str):
    keys = [k for k in table if entry_id == k or entry_id.startswith(k + "-")]
    return table[max(keys, key=len)] if keys else None


def _expected_mask(scope: str, shape, entry_id: str) -> np.ndarray:
    m = np.zeros(shape, bool)
    if scope == "entry":
        m[_BAD_INDEX] = True
    elif scope == "group":  # group j = the slice at index j along `axis`
        axis = ENTRY_AXIS.get(entry_id, -1) % len(shape)
        index = [slice(None)] * len(shape)
        index[axis] = _BAD_INDEX[axis]
        m[tuple(index)] = True
    elif scope == "matrix":  # prox_nuclear: batch over (kh, kw); stacked: batch over kh
        if entry_id.startswith("prox_nuclear"):
            m[0, 0] = True
        else:
            m[0] = True
    elif scope != "none":
        m[...] = True
    return m


def _nonfinite_params():
    """One entry per row of ``NONFINITE`` (the first registry entry the row applies to)."""
    out, rows = [], set()
    for e in ENTRIES:
        keys = [k for k in NONFINITE if e.id == k or e.id.startswith(k + "-")]
        if not keys:  # no documented spread yet (low_precision_updates, sharpness_monitor)
            continue
        row = max(keys, key=len)
        if row in rows:
            continue
        rows.add(row)
        for bad in ("nan", "inf"):
            reason = _lookup(_SWALLOWS_NAN, e.id) if bad == "nan" else None
            marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
            out.append(pytest.param(e, bad, id=f"{e.id}-{bad}", marks=marks))
    return out


@pytest.mark.parametrize("entry, bad", _nonfinite_params())
def test_nonfinite_gradient_behaviour_is_as_documented(entry, bad):
    doc = _lookup(NONFINITE, entry.id)
    scope, sticky = doc[bad] if isinstance(doc, dict) else doc
    tx = entry.make()
    extra = tc.extra_args(entry)
    params = tc.make_params()
    grads = tc.grads_for(params, seed=3)
    kernel = grads["conv"]["kernel"].at[_BAD_INDEX].set(float(bad))
    grads = {**grads, "conv": {"kernel": kernel}}
    updates, state = tx.update(grads, tx.init(params), params, **extra)
    for path, u in _leaves_with_paths(updates):
        got = ~np.isfinite(np.asarray(u, np.float32))
        if path == "['conv']['kernel']":
            want = _expected_mask(scope, u.shape, entry.id)
        else:
            want = np.full(u.shape, scope == "tree")
        np.testing.assert_array_equal(got, want, err_msg=f"{entry.id} {bad}: leaf {path}")
    # A following step with a finite gradient: clean unless the state is documented as sticky.
    new_params = optax.apply_updates(params, jax.tree.map(jnp.nan_to_num, updates))
    updates2, _ = tx.update(tc.grads_for(params, seed=4), state, new_params, **extra)
    finite2 = all(bool(jnp.all(jnp.isfinite(u))) for u in jax.tree.leaves(updates2))
    assert finite2 != sticky, f"{entry.id}: sticky={sticky} but next step finite={finite2}"


def _one_per_factory():
    seen, out = set(), []
    for e in ENTRIES:
        if e.factory not in seen:
            seen.add(e.factory)
            out.append(pytest.param(e, id=e.id))
    return out


@pytest.mark.parametrize("entry", _one_per_factory())
def test_apply_if_finite_skips_the_bad_step_and_keeps_state(entry):
    """``optax.apply_if_finite(chain)`` drops a NaN step: zero update, inner state untouched, and
    the run then continues bit for bit as a run that never saw the bad step."""
    extra = tc.extra_args(entry)
    params = tc.make_params()
    g0, g1 = (tc.grads_for(params, seed=40 + i) for i in range(2))
    g_bad = jax.tree.map(lambda g: g.at[(0,) * g.ndim].set(jnp.nan), g0)
    tx = optax.apply_if_finite(tc.chained(entry, entry.make()), max_consecutive_errors=3)
    step = jax.jit(lambda g, s, p: tx.update(g, s, p, **extra))

    def run(grads):
        state, p = tx.init(params), params
        for g in grads:
            u, state = step(g, state, p)
            p = optax.apply_updates(p, u)
        return p, state

    p_skip, s_skip = run([g0, g1])
    p_bad, s_bad = run([g0])
    u, s_after = step(g_bad, s_bad, p_bad)
    for x in jax.tree.leaves(u):
        np.testing.assert_array_equal(np.asarray(x, np.float32), 0.0)
    tc.assert_identical(s_after.inner_state, s_bad.inner_state)
    assert int(s_after.notfinite_count) == 1 and not bool(s_after.last_finite)
    u, s_final = step(g1, s_after, p_bad)
    tc.assert_identical(optax.apply_updates(p_bad, u), p_skip)
    tc.assert_identical(s_final.inner_state, s_skip.inner_state)
    assert int(s_final.notfinite_count) == 0 and int(s_final.total_notfinite) == 1
