"""low_precision_updates: exact landings on bfloat16 / float16 grids, Kahan and stochastic rounding.

Oracles are NumPy (``ml_dtypes`` for bfloat16): the float32 target ``x = θ + u``, its
round-to-nearest, exact float64 sums, a brute-force search over neighbouring steps where the
addition itself rounds, closed forms for the decay runs, and frequencies for stochastic rounding.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import chex
import equinox as eqx
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import optax
import pytest

import optareg
from optareg import low_precision as lp

BF = ml_dtypes.bfloat16
LPU = optareg.low_precision_updates
METHODS = ("kahan", "stochastic")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def bits(a):
    a = np.asarray(a)
    return a.view({1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[a.dtype.itemsize])


def f64(a):
    return np.asarray(a).astype(np.float64)


def jitted(tx):
    @jax.jit
    def step(u, s, p):
        new_u, s = tx.update(u, s, p)
        return new_u, s, optax.apply_updates(p, new_u)

    return step


def draw(kind, n, seed, npdtype=BF, spread=8.0):
    """θ (``npdtype``) of many magnitudes and float32 updates ``u = ±θ·r`` with r of one class
    (float16: steps at most 500·θ and |θ| ≲ 100, so that nothing overflows)."""
    rng = np.random.default_rng(seed)
    th = (rng.standard_normal(n) * np.exp(rng.uniform(-spread, spread, n))).astype(np.float32)
    th = th.astype(npdtype)
    huge = 500.0 if npdtype == np.float16 else 1e6
    lo, hi = {"tiny": (1e-12, 2**-9), "comparable": (2**-9, 4.0), "huge": (2.0, huge)}[kind]
    r = np.exp(rng.uniform(np.log(lo), np.log(hi), n)) * rng.choice([-1.0, 1.0], n)
    return th, (f64(th) * r).astype(np.float32)


def regimes(th, x):
    """Masks of the three regimes of the module docstring (float32 θ and target x)."""
    a = np.abs(th)
    xs = np.where(th < 0, -x, x)
    coarse = (xs < a / 2) & (xs > -a)
    sterbenz = (xs >= a / 2) & (xs <= 2 * a)
    return sterbenz, coarse, ~sterbenz & ~coarse


def best_rounding_landing(th, x, y, npdtype, k=4):
    """Brute force where the addition rounds: over the 2k+1 steps around RN(y − θ), the best
    (|landing − y|, then |landing − x|) any of them achieves (landings correctly rounded)."""
    d = (f64(y) - f64(th)).astype(npdtype)
    cands = [d]
    up, dn = d, d
    for _ in range(k):
        up = np.nextafter(up, np.full_like(up, np.inf))
        dn = np.nextafter(dn, np.full_like(dn, -np.inf))
        cands += [up, dn]
    scores = []
    for c in cands:
        land = f64((f64(th) + f64(c)).astype(npdtype))
        scores.append((np.abs(land - f64(y)), np.abs(land - f64(x))))
    e_y = np.min([s[0] for s in scores], axis=0)
    e_x = np.min([np.where(s[0] == e_y, s[1], np.inf) for s in scores], axis=0)
    return e_y, e_x


# ---------------------------------------------------------------------------------------------
# the motivating decay run
# ---------------------------------------------------------------------------------------------


def decay_run(final, dtype=jnp.bfloat16, n=256, steps=1000, lam=1e-3):
    tx = optareg.chain(optax.sgd(0.0), optareg.decoupled_weight_decay(lam), *final)

    def body(carry, _):
        p, s = carry
        u, s = tx.update(jax.tree.map(jnp.zeros_like, p), s, p)
        return (optax.apply_updates(p, u), s), None

    p = {"w": jnp.ones((n,), dtype)}
    (p, s), _ = jax.jit(lambda c: jax.lax.scan(body, c, None, steps))((p, tx.init(p)))
    return f64(p["w"]), s


CLOSED_FORM = (1 - 1e-3) ** 1000  # 0.3677


def test_decay_is_lost_in_plain_bfloat16_and_kept_in_float32():
    w_bf, _ = decay_run([])
    np.testing.assert_array_equal(w_bf, 1.0)  # every step rounds back to θ
    w32, _ = decay_run([], jnp.float32)
    np.testing.assert_allclose(w32, CLOSED_FORM, rtol=1e-4)


def test_decay_run_kahan_within_1_percent_of_float32():
    w, state = decay_run([LPU("kahan")])
    np.testing.assert_allclose(w, CLOSED_FORM, rtol=0.01)
    comp = f64(state[-1].compensation["w"])
    assert np.all(np.abs(comp) <= 2**-9 * 1.0)  # never more than half an ulp of θ is owed


def test_decay_run_stochastic_mean_within_2_percent():
    w, state = decay_run([LPU("stochastic", seed=0)])
    assert abs(w.mean() / CLOSED_FORM - 1) < 0.02
    assert 0.05 < w.std() / CLOSED_FORM < 0.2  # the weights really were rounded at random
    assert state[-1].compensation is None


@pytest.mark.parametrize("lam", [1e-5, 3e-6, 1e-6])
def test_kahan_keeps_steps_below_its_own_buffers_resolution(lam):
    """Decay steps of λ·θ below 2⁻¹⁸·|θ| (3e-6 on weights of 1.0: AdamW with lr 3e-4 and
    λ = 0.01): a bf16 compensation buffer rounded to nearest swallows them once it holds more
    than 2⁸ of them (the run ended at exactly 1.0 for 3e-6, and 3 % off for 1e-5); rounded
    stochastically it keeps them on average. Oracle: the closed form (1 − λ)ⁿ."""
    steps = 30000 if lam > 1e-6 else 100000
    w, state = decay_run([LPU("kahan")], steps=steps, lam=lam)
    closed = (1 - lam) ** steps
    assert abs(w.mean() / closed - 1) < 2e-3, (w.mean(), closed)
    assert w.std() / closed < 5e-3  # θ itself is rounded to nearest: no random walk
    comp = f64(state[-1].compensation["w"])
    assert np.all(np.abs(comp) <= 2**-8 * np.abs(w))  # at most about half an ulp of θ owed


def test_kahan_accumulates_steps_far_below_the_resolution():
    """1000 steps of +1e-4 on θ = 1 (half an ulp is 3.9e-3): θ + c tracks 1.1 (plain: 1.0)."""
    tx = LPU("kahan")
    step = jitted(tx)
    p = jnp.ones((8,), jnp.bfloat16)
    s = tx.init(p)
    u = jnp.full((8,), 1e-4, jnp.float32)
    plain = p
    for _ in range(1000):
        _, s, p = step(u, s, p)
        plain = optax.apply_updates(plain, u.astype(jnp.bfloat16))
    exact = 1.0 + 1000 * f64(np.float32(1e-4))
    # each step rounds c (≤ half an ulp of θ, 2^-8 here) stochastically to bf16: an error of
    # at most one ulp of c (2^-16), zero on average, so θ + c stays within 1000 · 2^-17 of the
    # exact sum with a wide margin (plain bf16: 0.1 off).
    np.testing.assert_allclose(f64(p) + f64(s.compensation), exact, atol=1000 * 2**-17)
    np.testing.assert_allclose(f64(p), exact, atol=2**-8 + 1000 * 2**-17)
    np.testing.assert_array_equal(f64(plain), 1.0)


# ---------------------------------------------------------------------------------------------
# exactness, one step from a zero compensation, bf16 and f16
# ---------------------------------------------------------------------------------------------


SEEDS = {"tiny": 1, "comparable": 2, "huge": 3}


@pytest.mark.parametrize("npdtype", [BF, np.float16], ids=["bf16", "f16"])
@pytest.mark.parametrize("kind", ["tiny", "comparable", "huge"])
def test_kahan_lands_exactly_on_the_rounded_target(kind, npdtype):
    th, u = draw(kind, 20000, seed=SEEDS[kind], npdtype=npdtype, spread=3.0)
    tx = LPU("kahan")
    new_u, s, land = jitted(tx)(u, tx.init(jnp.asarray(th)), jnp.asarray(th))
    new_u, land, comp = map(np.asarray, (new_u, land, s.compensation))
    assert new_u.dtype == npdtype and land.dtype == npdtype and comp.dtype == npdtype
    th32 = th.astype(np.float32)
    x = th32 + u  # float32, as the transform computes it
    sterbenz, coarse, rounding = regimes(th32, x)
    y = x.astype(npdtype)
    # θ/2 ≤ x ≤ 2θ: exactly RN(x); −θ < x < θ/2: exactly θ + RN(u); θ + u' is exact there.
    np.testing.assert_array_equal(bits(land[sterbenz]), bits(y[sterbenz]))
    y_coarse = (f64(th) + f64(u.astype(npdtype))).astype(npdtype)
    np.testing.assert_array_equal(bits(land[coarse]), bits(y_coarse[coarse]))
    assert np.all(
        f64(th[sterbenz | coarse]) + f64(new_u[sterbenz | coarse]) == f64(land[sterbenz | coarse])
    )
    # elsewhere the addition rounds: on y wherever any of 9 neighbouring steps reaches it, but
    # for a few targets next to a power of two (0.015 % here), and always within one ulp of y.
    e_y, _ = best_rounding_landing(th[rounding], x[rounding], y[rounding], npdtype)
    off = np.abs(f64(land[rounding]) - f64(y[rounding]))
    assert np.sum(off != e_y) <= 1e-3 * off.size
    gaps = [np.abs(f64(np.nextafter(y, np.full_like(y, v))) - f64(y)) for v in (np.inf, -np.inf)]
    assert np.all(off <= np.maximum(*gaps)[rounding])
    if kind != "tiny":
        assert rounding.any() and (sterbenz.any() or kind == "huge")
    # the compensation is what was not applied, θ + u − θ_new, rounded stochastically to the
    # buffer's dtype: one of the two neighbours, within one ulp (2⁻⁷ relative for bf16).
    owed = f64(th) + f64(u) - f64(land)
    tiny = float(np.finfo(npdtype).smallest_subnormal)  # + float32 arithmetic on θ, u, θ_new:
    atol = tiny + 2.0**-23 * (np.abs(f64(th)) + np.abs(f64(u)) + np.abs(f64(land)))
    ulp = 2.0 ** -np.finfo(npdtype).nmant
    assert np.all(np.abs(f64(comp) - owed) <= ulp * np.abs(owed) + atol)


def test_the_three_regimes_on_hand_picked_values():
    """θ = 1: a tiny step (lost in plain bf16), a halving, a sign flip, a huge step, from ±0."""
    th = np.array([1.0, 1.0, 1.0, 1.0, 1.0, 0.0, -0.0, 3.0], BF)
    u = np.array([1e-3, -0.5, -1.75, -0.999, 1000.3, 1e-30, -2.5, 1e-8], np.float32)
    tx = LPU("kahan")
    new_u, s, land = jitted(tx)(u, tx.init(jnp.asarray(th)), jnp.asarray(th))
    expect = np.array([1.0, 0.5, -0.75, 0.0, 1000.0, 1e-30, -2.5, 3.0], np.float32)
    np.testing.assert_array_equal(bits(land), bits(expect.astype(BF)))
    # -0.999 from 1.0 cannot land on 0.001: the reachable grid there is 2^-8 (lands on 0).
    owed = [1e-3, 0, 0, 1 - 0.999, 1.3, 0, 0, 1e-8]  # 1000.3 from 1 lands on 1000: 1.3 owed
    np.testing.assert_allclose(f64(s.compensation), owed, rtol=2**-8, atol=1e-12)


@pytest.mark.parametrize("method", ["kahan", "stochastic"])
def test_signed_zeros(method):
    th = np.array([0.0, 0.0, -0.0, -0.0, 1.0, -1.0], BF)
    u = np.array([0.0, -0.0, 0.0, -0.0, -1.0, 1.0], np.float32)
    tx = LPU(method)
    _, _, land = jitted(tx)(u, tx.init(jnp.asarray(th)), jnp.asarray(th))
    plain = (th.astype(np.float32) + u).astype(BF)  # IEEE: -0 only for (-0) + (-0)
    np.testing.assert_array_equal(bits(land), bits(plain))


@pytest.mark.parametrize("method", ["kahan", "stochastic"])
def test_subnormals(method):
    """Subnormal θ, steps and targets: the landing is the backend's correctly rounded float32
    sum (XLA:CPU flushes subnormal operands, as plain ``apply_updates`` does), never NaN."""
    tiny = float(np.finfo(np.float32).smallest_normal)  # 2^-126, also bf16's smallest normal
    th = np.array([1e-39, -5e-40, 1e-39, 1e-39, tiny, tiny, 3 * tiny, 1e-39], BF)
    u = np.array([0.0, 2e-40, 1.0, -1e-39, -0.75 * tiny, 1e-40, -2.5 * tiny, tiny], np.float32)
    tx = LPU(method)
    _, _, land = jitted(tx)(u, tx.init(jnp.asarray(th)), jnp.asarray(th))
    ideal = jax.jit(lambda p, u: (p.astype(jnp.float32) + u).astype(jnp.bfloat16))(th, u)
    assert np.all(np.isfinite(f64(land)))
    if method == "kahan":
        np.testing.assert_array_equal(bits(land), bits(ideal))
    else:  # the ideal sum or one of its neighbours
        nb = [np.nextafter(ideal, np.full_like(ideal, v)) for v in (np.inf, -np.inf)]
        assert np.all(
            (f64(land) == f64(ideal)) | (f64(land) == f64(nb[0])) | (f64(land) == f64(nb[1]))
        )


@pytest.mark.parametrize("method", ["kahan", "stochastic"])
def test_nan_and_inf_propagate(method):
    th = np.array([1.0, 1.0, 1.0, 2.0, np.inf, np.nan, -np.inf], BF)
    u = np.array([np.nan, np.inf, -np.inf, 1e-4, 1.0, 1.0, 1e-3], np.float32)
    tx = LPU(method)
    _, s, land = jitted(tx)(u, tx.init(jnp.asarray(th)), jnp.asarray(th))
    land = f64(land)
    assert np.isnan(land[0]) and land[1] == np.inf and land[2] == -np.inf
    assert land[4] == np.inf and np.isnan(land[5]) and land[6] == -np.inf
    assert np.isfinite(land[3])
    if method == "kahan":
        chex.assert_tree_all_finite(s.compensation)  # reset where the step was not finite
        assert f64(s.compensation)[3] == pytest.approx(1e-4, rel=2**-8)


# ---------------------------------------------------------------------------------------------
# stochastic rounding: the two neighbours, with the right frequencies
# ---------------------------------------------------------------------------------------------


def stochastic_landings(th, u, draws, seed=0, x64=False):
    tx = LPU("stochastic", seed=seed)
    p = jnp.asarray(th)

    def body(s, _):
        new_u, s = tx.update(jnp.asarray(u), s, p)
        return s, optax.apply_updates(p, new_u)

    _, lands = jax.jit(lambda s: jax.lax.scan(body, s, None, draws))(tx.init(p))
    return np.asarray(lands)


def neighbours(v, npdtype):
    """The two values of ``npdtype`` around ``v`` (float64), below and above (equal if exact)."""
    y = v.astype(npdtype)
    lo = np.where(f64(y) > v, np.nextafter(y, np.full_like(y, -np.inf)), y)
    hi = np.where(f64(y) < v, np.nextafter(y, np.full_like(y, np.inf)), y)
    return lo, hi


@pytest.mark.parametrize(
    "npdtype, x64", [(BF, False), (np.float16, False), (BF, True)], ids=["bf16", "f16", "bf16-f64"]
)
def test_stochastic_rounding_is_unbiased(npdtype, x64):
    """Each landing is one of the two neighbours of the target (of θ + the step's neighbours
    where the step takes more than half of θ away), chosen up with probability distance/spacing:
    the frequency over 2000 draws is within 6σ of it for each of 300 entries."""
    rng = np.random.default_rng(7)
    n = 300
    th = np.concatenate([np.ones(n // 3), rng.uniform(0.5, 4, n - n // 3)]).astype(npdtype)
    rel = np.concatenate([rng.uniform(-1e-3, 1e-3, n // 3), rng.uniform(-1.8, 0.5, n - n // 3)])
    udt = np.float64 if x64 else np.float32
    u = (f64(th) * rel).astype(udt)
    with jax.enable_x64(x64):
        lands = stochastic_landings(th, u, 2000)
    x = f64(th.astype(udt) + u)
    sterbenz, coarse, _ = regimes(f64(th), x)
    assert sterbenz.sum() > 100 and coarse.sum() > 20
    lo, hi = neighbours(x, npdtype)
    t_lo, t_hi = neighbours(f64(u), npdtype)
    lo = np.where(coarse, f64(th) + f64(t_lo), f64(lo))
    hi = np.where(coarse, f64(th) + f64(t_hi), f64(hi))
    lands = f64(lands)
    assert np.all((lands == lo) | (lands == hi))
    span = hi - lo
    p = np.where(span > 0, (x - lo) / np.where(span > 0, span, 1), 0.0)
    freq = np.mean(lands == hi, axis=0) * (span > 0)
    sigma = np.sqrt(p * (1 - p) / lands.shape[0])
    assert np.all(np.abs(freq - p) <= 6 * sigma + 2.0**-15)
    assert np.mean((freq > 0) & (freq < 1)) > 0.8  # really random, not a fixed rounding


def test_stochastic_bits_are_reproducible_and_differ_by_seed_step_and_leaf():
    th = jnp.ones((4096,), jnp.bfloat16)
    u = jnp.full((4096,), 2.0**-9, jnp.float32)  # a quarter of bf16's ulp at 1: up w.p. 1/4
    params, updates = {"a": th, "b": th}, {"a": u, "b": u}

    txs = [LPU("stochastic", seed=seed) for seed in (0, 0, 1)]  # two separate seed-0 objects

    @jax.jit
    def two_steps(states):
        out = []
        for tx, s in zip(txs, states, strict=True):
            lands = []
            for _ in range(2):
                new_u, s = tx.update(updates, s, params)
                lands.append(optax.apply_updates(params, new_u))
            out.append(lands)
        return out

    a, b, c = two_steps([tx.init(params) for tx in txs])
    chex.assert_trees_all_equal(a, b)  # same seed, same bits
    up = lambda t: f64(t) > 1.0  # noqa: E731
    assert abs(up(a[0]["a"]).mean() - 0.25) < 0.03
    for other in (a[1]["a"], a[0]["b"], c[0]["a"]):  # next step, other leaf, other seed
        agree = np.mean(up(a[0]["a"]) == up(other))
        assert abs(agree - (0.25**2 + 0.75**2)) < 0.04  # independent: 5/8, not 1


def test_leaf_bits_are_uniform_and_decorrelated():
    key = jax.random.PRNGKey(3)
    b = np.asarray(lp.leaf_bits(key, (256, 256)), np.uint64)
    counts = np.bincount((b >> 24).ravel().astype(np.int64), minlength=256)
    chi2 = np.sum((counts - counts.mean()) ** 2 / counts.mean())
    assert chi2 < 255 + 6 * np.sqrt(2 * 255)
    low = np.bincount((b & 0xFF).ravel().astype(np.int64), minlength=256)
    assert np.sum((low - low.mean()) ** 2 / low.mean()) < 255 + 6 * np.sqrt(2 * 255)
    f = (b >> 16).astype(np.float64).ravel() / 2**16
    assert abs(np.corrcoef(f[:-1], f[1:])[0, 1]) < 0.02  # neighbouring elements
    g = np.asarray(lp.leaf_bits(jax.random.fold_in(key, 1), (256, 256)), np.float64).ravel()
    assert abs(np.corrcoef(f, g)[0, 1]) < 0.02  # the next key


# ---------------------------------------------------------------------------------------------
# pass-through, masks, jit, scan, x64
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["kahan", "stochastic"])
def test_float32_and_float64_leaves_pass_through_bit_for_bit(method):
    with jax.enable_x64(True):
        specials = np.array([np.nan, -0.0, np.inf, 1e-45, 1e-3, -7.0])
        params = {
            "f32": jnp.ones(6, jnp.float32),
            "f64": jnp.ones(6, jnp.float64),
            "bf16": jnp.ones(6, jnp.bfloat16),
        }
        updates = {
            "f32": jnp.asarray(specials, jnp.float32),
            "f64": jnp.asarray(specials, jnp.float64),
            "bf16": jnp.asarray(specials[3:], jnp.float64).repeat(2),
        }
        tx = LPU(method)
        state = tx.init(params)
        out, state = jax.jit(tx.update)(updates, state, params)
        for k in ("f32", "f64"):
            assert out[k].dtype == updates[k].dtype
            np.testing.assert_array_equal(bits(out[k]), bits(updates[k]))
        assert out["bf16"].dtype == jnp.bfloat16
        if method == "kahan":
            assert state.compensation["f32"] is None and state.compensation["f64"] is None
            assert state.compensation["bf16"].dtype == jnp.bfloat16


def test_x64_kahan_with_float64_updates_is_exact():
    th, u = draw("comparable", 5000, seed=3)
    with jax.enable_x64(True):
        u64 = f64(u) * (1 + 1e-9)  # not float32-representable
        tx = LPU("kahan")
        _, s, land = jitted(tx)(u64, tx.init(jnp.asarray(th)), jnp.asarray(th))
        assert land.dtype == jnp.bfloat16 and s.compensation.dtype == jnp.bfloat16
    x = f64(th) + u64
    sterbenz, coarse, _ = regimes(f64(th), x)
    np.testing.assert_array_equal(bits(np.asarray(land)[sterbenz]), bits(x.astype(BF)[sterbenz]))
    y_coarse = (f64(th) + f64(u64.astype(BF))).astype(BF)
    np.testing.assert_array_equal(bits(np.asarray(land)[coarse]), bits(y_coarse[coarse]))


def _masked_case(method, mask):
    params = {"a": jnp.ones(4, jnp.bfloat16), "b": jnp.ones(4, jnp.bfloat16)}
    updates = {"a": jnp.full(4, 1e-3, jnp.float32), "b": jnp.full(4, 1e-3, jnp.float32)}
    tx = LPU(method, mask=mask)
    out, _ = jax.jit(tx.update)(updates, tx.init(params), params)
    return out


@pytest.mark.parametrize("method", ["kahan", "stochastic"])
def test_mask_leaves_masked_out_leaves_untouched(method):
    out = _masked_case(method, {"a": True, "b": False})
    assert out["a"].dtype == jnp.bfloat16
    assert out["b"].dtype == jnp.float32
    np.testing.assert_array_equal(bits(out["b"]), bits(np.full(4, 1e-3, np.float32)))


class Linear(eqx.Module):
    weight: jax.Array
    bias: jax.Array

    def __call__(self, x):
        return self.weight @ x + self.bias


class TwoLayers(eqx.Module):
    layers: tuple

    def __call__(self, x):
        return self.layers[1](jax.nn.relu(self.layers[0](x)))


def test_equinox_module_of_bools_as_mask():
    rng = np.random.default_rng(0)

    def lin(o, i):
        return Linear(
            jnp.asarray(rng.normal(size=(o, i)), jnp.bfloat16), jnp.zeros(o, jnp.bfloat16)
        )

    params = TwoLayers((lin(4, 3), lin(2, 4)))
    mask = jax.tree.map(lambda x: x.ndim > 1, params)  # a callable Module whose leaves are bools
    assert callable(mask)
    updates = jax.tree.map(lambda x: (x * 1e-3).astype(jnp.float32), params)  # below 1/2 ulp
    tx = LPU("kahan", mask=mask)
    out, state = jax.jit(tx.update)(updates, tx.init(params), params)
    w, u = params.layers[0].weight, updates.layers[0].weight
    assert out.layers[0].weight.dtype == jnp.bfloat16  # kernels: rounded, exact landing
    assert out.layers[0].bias.dtype == jnp.float32  # biases: masked out, untouched
    np.testing.assert_array_equal(bits(out.layers[0].bias), bits(updates.layers[0].bias))
    landed = optax.apply_updates(params, out).layers[0].weight
    np.testing.assert_array_equal(
        bits(landed), bits((np.asarray(w, np.float32) + np.asarray(u)).astype(BF))
    )
    comp = state.inner_state.compensation.layers[0].weight
    np.testing.assert_allclose(f64(comp), f64(u), rtol=2**-8)


def test_jitted_loop_equals_lax_scan():
    """3 steps of a jitted step in a Python loop equal ``lax.scan`` of the same step, bit for
    bit, for both methods (the per-step keys come from the state's counter, not from Python)."""
    th, u = draw("comparable", 512, seed=11)
    p0, u = jnp.asarray(th), jnp.asarray(u * 0.01)
    txs = [LPU(m) for m in METHODS]

    def step(carry, _):
        out = []
        for tx, (p, s) in zip(txs, carry, strict=True):
            new_u, s = tx.update(u, s, p)
            out.append((optax.apply_updates(p, new_u), s))
        return out, None

    init = [(p0, tx.init(p0)) for tx in txs]
    looped, jit_step = init, jax.jit(step)
    for _ in range(3):
        looped, _ = jit_step(looped, None)
    scanned, _ = jax.jit(lambda c: jax.lax.scan(step, c, None, 3))(init)
    chex.assert_trees_all_equal(scanned, looped)
    assert not np.array_equal(f64(looped[0][0]), f64(looped[1][0]))  # the methods differ


# ---------------------------------------------------------------------------------------------
# chains: after every optareg transform and common optax optimizers
# ---------------------------------------------------------------------------------------------


def _recorder():
    """A pass-through transform whose state is the last updates it saw."""

    def init_fn(params):
        return jax.tree.map(lambda p: jnp.zeros(jnp.shape(p), jnp.float32), params)

    def update_fn(updates, state, params=None):
        del state, params
        return updates, jax.tree.map(lambda u: u.astype(jnp.float32), updates)

    from optareg import _chain  # noqa: PLC0415

    return _chain.tag(optax.GradientTransformation(init_fn, update_fn), "diagnostic", "recorder")


def test_after_every_optareg_transform():
    """One chain with every optareg transform of the registry (one entry per factory, each in
    its place), then ``low_precision_updates``, on bf16 params: 2 jitted steps keep dtypes and
    finite values, and land exactly on RN(θ + u) wherever the step is at most θ/2.
    ``spectral_clip`` is left out only for its compile time here (~10× the others' on CPU); its
    output is an ordinary post-step update like the others'."""
    import helpers  # noqa: PLC0415
    from registry import ENTRIES  # noqa: PLC0415

    from optareg import _chain  # noqa: PLC0415

    entries = helpers.one_per(lambda e: e.factory, ENTRIES, param=False)
    skip = (LPU, optareg.spectral_clip)
    txs = [e.make() for e in entries if e.factory not in skip]
    # parameter averages go after low_precision_updates (they average what lands): not here
    txs = [tx for tx in txs if _chain.kind_of(tx) != "averaging"]
    order = ("extra_args", "gradient", "optimizer", "post_step", "diagnostic")
    txs = sorted(txs, key=lambda tx: order.index(_chain.kind_of(tx)))
    kinds = [_chain.kind_of(tx) for tx in txs]
    k = min(kinds.index("optimizer"), kinds.index("post_step"))  # sgd before prox_adam, a
    assert len(txs) >= 13  # complete optimizer that no other optimizer may follow
    tx = optareg.chain(*txs[:k], optax.sgd(0.1), *txs[k:], _recorder(), LPU("kahan"))
    params = helpers.make_params(jnp.bfloat16)

    @jax.jit
    def step(p, s):
        u, s = tx.update(helpers.grad_fn(p), s, p, grad_fn=helpers.grad_fn)
        return optax.apply_updates(p, u), s

    p, s = params, jax.jit(tx.init)(params)
    checked = 0
    for _ in range(2):
        p_old, comp = p, s[-1].compensation
        p, s = step(p, s)
        for th, c, u, land in zip(*map(jax.tree.leaves, (p_old, comp, s[-2], p)), strict=True):
            t = np.asarray(u) + np.asarray(c, np.float32)  # the step owed, as the transform sums
            x = np.asarray(th, np.float32) + t
            sterbenz, coarse, _ = regimes(np.asarray(th, np.float32), x)
            land = np.asarray(land)
            np.testing.assert_array_equal(bits(land[sterbenz]), bits(x.astype(BF)[sterbenz]))
            y_coarse = (f64(th) + f64(t.astype(BF))).astype(BF)
            np.testing.assert_array_equal(bits(land[coarse]), bits(y_coarse[coarse]))
            checked += sterbenz.sum() + coarse.sum()
    assert checked > 50
    chex.assert_trees_all_equal_dtypes(p, params)
    chex.assert_tree_all_finite(p)


@pytest.mark.parametrize(
    "opt, lost_in_plain_bf16",
    [
        (optax.adamw(1e-3, weight_decay=0.1), True),
        (optax.lion(1e-4), True),
        (optax.sgd(0.1, momentum=0.9), True),
        (optax.adafactor(1e-3), False),
    ],
    ids=["adamw", "lion", "sgd_momentum", "adafactor"],
)
def test_after_optax_optimizers_every_step_is_taken(opt, lost_in_plain_bf16):
    """bf16 params of 1.0, 200 small steps (each below half an ulp): with kahan the weights end
    where the sum of the optimizer's requested steps says (θ₀ + Σu, accumulated in float32),
    within half an ulp plus the buffer's drift bound; plain bf16 never moves."""
    params = {"w": jnp.ones((16, 8), jnp.bfloat16)}
    last = LPU("kahan")

    def run(final, steps=200):
        def body(carry, _):
            p, s, s_last, total = carry
            g = jax.tree.map(lambda x: jnp.full(x.shape, 1e-3, x.dtype), p)
            u, s = opt.update(g, s, p)
            total = total + u["w"].astype(jnp.float32)
            if final:
                u, s_last = last.update(u, s_last, p)
            return (optax.apply_updates(p, u), s, s_last, total), None

        init = (params, opt.init(params), last.init(params), jnp.zeros((16, 8), jnp.float32))
        (p, _, _, total), _ = jax.jit(lambda c: jax.lax.scan(body, c, None, steps))(init)
        return f64(p["w"]), f64(total)

    w, total = run(final=True)
    assert np.max(np.abs(total)) > 0.02  # many ulps of movement in all
    np.testing.assert_allclose(w, 1.0 + total, atol=2**-8 + 200 * 2**-17)
    if lost_in_plain_bf16:
        np.testing.assert_array_equal(run(final=False)[0], 1.0)


# ---------------------------------------------------------------------------------------------
# construction, placement, checkpoints, devices
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"method": "nearest"}, ValueError, "`method`"),
        ({"method": None}, ValueError, "`method`"),
        ({"seed": 1.5}, TypeError, "`seed`"),
        ({"seed": True}, TypeError, "`seed`"),
        ({"seed": -1}, ValueError, "`seed`"),
        ({"seed": 2**32}, ValueError, "`seed`"),
        ({"mask": {"a": 1}}, TypeError, "`mask`"),
        ({"method": "kahan", "axis_name": "data"}, ValueError, "`axis_name`"),
    ],
)
def test_bad_arguments_fail_at_construction(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        LPU(**kwargs)


def test_float8_params_are_an_error_at_init():
    with pytest.raises(TypeError, match="float8_e4m3fn"):
        LPU().init({"w": jnp.ones(3, jnp.float8_e4m3fn)})


def test_goes_last_in_optareg_chain():
    optareg.chain(optax.adamw(1e-3), optareg.prox_l1(1e-3, 1e-3), LPU(), optareg.track())
    with pytest.raises(ValueError, match="low_precision_updates"):
        optareg.chain(LPU(), optax.sgd(0.1))
    with pytest.raises(ValueError, match="low_precision_updates"):
        optareg.chain(optax.sgd(0.1), LPU(), optareg.decoupled_weight_decay(1e-3))


def test_orbax_checkpoint_resumes_bit_for_bit(tmp_path):
    """10 steps straight equal 5 steps → orbax save → restore into a fresh setup → 5 steps, for
    both methods at once (a mixed bf16 / float32 tree: ``None`` buffers for float32)."""
    ocp = pytest.importorskip("orbax.checkpoint")
    params0 = {"w": jnp.asarray(draw("comparable", 64, 5)[0]), "norm": jnp.ones(3, jnp.float32)}

    def make():
        txs = [optareg.chain(optax.adamw(1e-2, weight_decay=0.1), LPU(m, seed=3)) for m in METHODS]

        @jax.jit
        def step(carry, i):
            out = []
            for tx, (p, s) in zip(txs, carry, strict=True):
                g = jax.tree.map(lambda x: jnp.sin(x.astype(jnp.float32) + i).astype(x.dtype), p)
                u, s = tx.update(g, s, p)
                out.append((optax.apply_updates(p, u), s))
            return out

        return [(params0, tx.init(params0)) for tx in txs], step

    carry, step = make()
    for i in range(10):
        carry = step(carry, i)
        if i == 4:
            saved = carry
    with ocp.StandardCheckpointer() as ck:
        ck.save(tmp_path / "ckpt", saved)
        ck.wait_until_finished()
    target, step2 = make()
    with ocp.StandardCheckpointer() as ck:
        resumed = ck.restore(tmp_path / "ckpt", target)
    for i in range(5, 10):
        resumed = step2(resumed, i)
    chex.assert_trees_all_equal(resumed, carry)
    (_, s_kahan), (_, s_sr) = carry
    assert s_kahan[-1].compensation["norm"] is None and s_sr[-1].compensation is None
    assert s_kahan[-1].compensation["w"].dtype == jnp.bfloat16


MULTIDEVICE = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, numpy as np, optax, optareg
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    mesh = Mesh(np.array(jax.devices()), ("x",))
    th = jnp.ones((8, 512), jnp.bfloat16)
    u = jnp.full((8, 512), 2.0**-9, jnp.float32)  # a quarter ulp: up with probability 1/4
    txs = [optareg.low_precision_updates(m, seed=1) for m in ("kahan", "stochastic")]
    both = jax.jit(lambda u, p: [tx.update(u, tx.init(p), p)[0] for tx in txs])
    ref = both(u, th)
    sh = NamedSharding(mesh, P("x", None))
    out = both(jax.device_put(u, sh), jax.device_put(th, sh))
    for o, r in zip(out, ref):
        assert o.sharding.is_equivalent_to(sh, 2), o.sharding
        np.testing.assert_array_equal(np.asarray(o, np.float32), np.asarray(r, np.float32))
    def shard_step(axis_name):
        tx = optareg.low_precision_updates("stochastic", seed=1, axis_name=axis_name)
        def f(p, u):
            new_u, _ = tx.update(u, tx.init(p), p)
            return optax.apply_updates(p, new_u)
        return jax.jit(jax.shard_map(f, mesh=mesh, in_specs=(P("x"), P("x")), out_specs=P("x")))
    same = np.asarray(shard_step(None)(th, u), np.float32)
    diff = np.asarray(shard_step("x")(th, u), np.float32)
    print("rows_identical_without_axis_name", all((same[i] == same[0]).all() for i in range(8)))
    print("rows_identical_with_axis_name", sum((diff[i] == diff[0]).all() for i in range(1, 8)))
    print("up_fraction", float((diff > 1).mean()))
    """
)


def test_sharded_jit_and_shard_map_on_8_simulated_devices():
    env = dict(os.environ)
    env["XLA_FLAGS"] = env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, "-c", MULTIDEVICE], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = dict(line.split() for line in proc.stdout.strip().splitlines())
    assert out["rows_identical_without_axis_name"] == "True"  # replicas stay in sync
    assert out["rows_identical_with_axis_name"] == "0"  # each shard draws its own bits
    assert abs(float(out["up_fraction"]) - 0.25) < 0.03


# ---------------------------------------------------------------------------------------------
# the example
# ---------------------------------------------------------------------------------------------


def test_example_smoke(capsys):
    from helpers import load_example

    mod = load_example("low_precision")
    # two of the four runs cover every code path of the script (dtype, with / without the
    # transform); the other two differ only by a dtype or a method string.
    rows = mod.main(["--steps", "5", "--width", "8", "--runs", "bf16,stochastic", "--no-plot"])
    text = capsys.readouterr().out
    assert set(rows) == {"bf16", "bf16 + stochastic"}
    for name, r in rows.items():
        assert name in text and np.isfinite(r["loss"]) and r["param_norm"] > 0
        assert 0 <= r["requested_lost"] <= 1
    assert rows["bf16 + stochastic"]["applied_lost"] == 0.0  # every nonzero entry of u' lands
