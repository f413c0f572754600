"""Parameter averaging (``ema_params``, ``swa``, ``averaged_params``) and decay timescales.

Oracles: numpy float64 loops of the EMA (both ``debias`` modes, ``start_step`` / ``every``, a
decay schedule on ``n``) and of SWA's mean on the parameter sequence the run lands on;
``torch.optim.swa_utils.AveragedModel`` (EMA via ``get_ema_multi_avg_fn`` and its default SWA)
on the same sequence; bfloat16 params against the float64 average of the same bf16 sequence;
closed forms for the timescales (and ``optax.adamw``'s decay over ``τ`` steps, ``(1 − 1/τ)^τ``);
hand-computed batch statistics for ``recompute_batch_stats``.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optareg

SHAPES = {"a": (3, 4), "b": (5,), "c": ()}
STEPS = 12


def make_tree(seed, dtype=jnp.float32, scale=1.0):
    rng = np.random.default_rng(seed)
    return {k: jnp.asarray(scale * rng.normal(size=s), dtype) for k, s in SHAPES.items()}


def run(tx, params, steps=STEPS, seed=100, scale=0.3):
    """``steps`` jitted calls of ``tx`` fed random updates directly (a pass-through sees the
    update it is given); returns (states, landed params θ_{t+1}, averaged_params) per step."""

    @jax.jit
    def step(state, params, u):
        out, state = tx.update(u, state, params)
        new = optax.apply_updates(params, out)
        return out, state, new, optareg.averaged_params(state, new)

    state, states, thetas, avgs = tx.init(params), [], [], []
    for t in range(steps):
        u = make_tree(seed + t, jax.tree.leaves(params)[0].dtype, scale)
        out, state, params, avg = step(state, params, u)
        for x, y in zip(jax.tree.leaves(out), jax.tree.leaves(u), strict=True):  # pass-through
            assert x.dtype == y.dtype
            np.testing.assert_array_equal(np.asarray(x, np.float64), np.asarray(y, np.float64))
        states.append(state), thetas.append(params), avgs.append(avg)
    return states, thetas, avgs


def f64(tree):
    return {k: np.asarray(v, np.float64) for k, v in tree.items()}


def is_avg_step(t, start, every):
    return t >= start and (t - start) % every == 0


def ema_oracle(thetas, beta, debias, start, every):
    """numpy float64: the average after each step, None before the first averaging step."""
    a, n, prod, out = None, 0, 1.0, []
    for t, th in enumerate(thetas):
        th = f64(th)
        if is_avg_step(t, start, every):
            b = beta(n) if callable(beta) else beta
            if debias:
                a = {k: (0.0 if a is None else b * a[k]) + (1 - b) * th[k] for k in th}
                prod *= b
            else:
                a = th if a is None else {k: b * a[k] + (1 - b) * th[k] for k in th}
            n += 1
        scale = 1 - prod if debias else 1.0
        out.append(None if a is None else {k: v / scale for k, v in a.items()})
    return out


def swa_oracle(thetas, start, every):
    chosen = [f64(th) for t, th in enumerate(thetas) if is_avg_step(t, start, every)]
    out, seen = [], []
    for t, th in enumerate(thetas):
        if is_avg_step(t, start, every):
            seen.append(f64(th))
        out.append({k: np.mean([s[k] for s in seen], 0) for k in th} if seen else None)
    assert len(seen) == len(chosen)
    return out


def check_against(avgs, thetas, oracle, rtol, atol=0.0):
    for t, (avg, th, ref) in enumerate(zip(avgs, thetas, oracle, strict=True)):
        if ref is None:  # before the first averaging step: params unchanged
            for k in th:
                np.testing.assert_array_equal(np.asarray(avg[k]), np.asarray(th[k]), f"step {t}")
            continue
        for k in th:
            np.testing.assert_allclose(f64(avg)[k], ref[k], rtol=rtol, atol=atol, err_msg=f"{t}")


# --------------------------------------------------------------------------------------------
# the math against numpy float64
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("debias", [True, False], ids=["debias", "plain"])
@pytest.mark.parametrize("start, every", [(0, 1), (3, 2)], ids=["every1", "start3-every2"])
def test_ema_matches_numpy_float64(debias, start, every):
    with jax.enable_x64(True):
        tx = optareg.ema_params(0.8, debias=debias, start_step=start, every=every)
        states, thetas, avgs = run(tx, make_tree(0, jnp.float64))
        check_against(avgs, thetas, ema_oracle(thetas, 0.8, debias, start, every), 1e-13)
        assert int(states[-1].n) == sum(is_avg_step(t, start, every) for t in range(STEPS))
        assert int(states[-1].count) == STEPS


def test_ema_decay_schedule_is_evaluated_on_n():
    """β_n = 0.5 + 0.1·min(n, 3) on the averaging steps t = 2, 5, 8, 11 (n = 0..3, not t)."""
    sched = lambda n: 0.5 + 0.1 * jnp.minimum(n, 3)  # noqa: E731
    with jax.enable_x64(True):
        tx = optareg.ema_params(sched, start_step=2, every=3)
        _, thetas, avgs = run(tx, make_tree(1, jnp.float64))
        oracle = ema_oracle(thetas, lambda n: 0.5 + 0.1 * min(n, 3), True, 2, 3)
        check_against(avgs, thetas, oracle, 1e-13)


def test_swa_matches_numpy_mean():
    with jax.enable_x64(True):
        _, thetas, avgs = run(optareg.swa(start_step=2, every=3), make_tree(2, jnp.float64))
        check_against(avgs, thetas, swa_oracle(thetas, 2, 3), 1e-13)
    # float32: the running mean stays within rounding of the float64 mean (no growing sum)
    _, thetas, avgs = run(optareg.swa(), make_tree(2), steps=40, scale=3.0)
    check_against(avgs, thetas, swa_oracle(thetas, 0, 1), 0.0, atol=2e-6 * 3 * 40**0.5)


def test_timescale_100_is_bit_identical_to_decay_099():
    a, _, _ = run(optareg.ema_params(0.99), make_tree(3), steps=5)
    b, _, _ = run(optareg.ema_params(timescale=100), make_tree(3), steps=5)
    chex.assert_trees_all_equal(a[-1], b[-1])
    np.testing.assert_allclose(a[-1].decay_product, 0.99**5, rtol=1e-7)


def test_bf16_params_get_a_float32_average():
    """bf16 params: a float32 average, within 1e-6 of the float64 average of the same bf16
    sequence; averaged_params casts it back to bf16."""
    tx = optareg.ema_params(0.9, start_step=1)
    states, thetas, avgs = run(tx, make_tree(4, jnp.bfloat16), steps=20)
    oracle = ema_oracle(thetas, 0.9, True, 1, 1)
    last = states[-1]
    chex.assert_trees_all_equal_dtypes(last.average, make_tree(0, jnp.float32))
    debiased = {k: np.asarray(v, np.float64) / (1 - float(last.decay_product)) for k, v in
                last.average.items()}  # fmt: skip
    for k in SHAPES:
        np.testing.assert_allclose(debiased[k], oracle[-1][k], rtol=0, atol=1e-6)
        assert avgs[-1][k].dtype == jnp.bfloat16
        np.testing.assert_array_equal(avgs[-1][k], jnp.asarray(oracle[-1][k], jnp.bfloat16))
    # an explicit dtype overrides: a bf16 average
    s, _, _ = run(optareg.ema_params(0.9, dtype=jnp.bfloat16), make_tree(4, jnp.bfloat16), 2)
    chex.assert_trees_all_equal_dtypes(s[-1].average, make_tree(0, jnp.bfloat16))


def test_distance_ratio_metric():
    """‖ā − θ_{t+1}‖/‖θ_{t+1}‖ over the averaged leaves; 0 before the first averaging step; held
    between metrics steps."""
    tx = optareg.ema_params(0.7, start_step=2, name="slow", metrics_every=3)
    states, thetas, _ = run(tx, make_tree(5), steps=7)
    oracle = ema_oracle(thetas, 0.7, True, 2, 1)

    def ratio(t):
        if oracle[t] is None:
            return 0.0
        th = f64(thetas[t])
        num = sum(np.sum((oracle[t][k] - th[k]) ** 2) for k in th)
        return np.sqrt(num / sum(np.sum(th[k] ** 2) for k in th))

    for t, s in enumerate(states):
        got = float(optareg.metrics(s)["slow/distance_ratio"])
        np.testing.assert_allclose(got, ratio(t - t % 3), rtol=1e-5, atol=1e-7)
    assert float(optareg.metrics(states[6])["slow/distance_ratio"]) > 0.01


# --------------------------------------------------------------------------------------------
# torch.optim.swa_utils.AveragedModel on the same parameter sequence
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["ema", "swa"])
def test_matches_torch_averaged_model(kind):
    torch = pytest.importorskip("torch", reason="torch (CPU) is the AveragedModel oracle")
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    start, every = 2, 2
    if kind == "ema":
        tx = optareg.ema_params(0.75, debias=False, start_step=start, every=every)
    else:
        tx = optareg.swa(start, every)
    _, thetas, avgs = run(tx, make_tree(6))

    model = torch.nn.ParameterDict({k: torch.nn.Parameter(torch.zeros(s)) for k, s in
                                    SHAPES.items()})  # fmt: skip
    multi = get_ema_multi_avg_fn(0.75) if kind == "ema" else None
    averaged = AveragedModel(model, multi_avg_fn=multi)
    for t, th in enumerate(thetas):
        with torch.no_grad():
            for k in SHAPES:
                model[k].copy_(torch.from_numpy(np.array(th[k])))
        if is_avg_step(t, start, every):
            averaged.update_parameters(model)
            for k in SHAPES:
                ref = averaged.module[k].detach().numpy()
                np.testing.assert_allclose(avgs[t][k], ref, rtol=1e-6, atol=1e-7)


# --------------------------------------------------------------------------------------------
# masks, wrappers, reading back
# --------------------------------------------------------------------------------------------


def test_mask_holds_no_average_for_masked_out_leaves():
    mask = {"a": True, "b": False, "c": True}
    masked, _, m_avgs = run(optareg.ema_params(0.8, mask=mask), make_tree(7), steps=4)
    _, thetas, full = run(optareg.ema_params(0.8), make_tree(7), steps=4)
    inner = optareg.averaging.diagnostics.find_nodes(masked[-1], optareg.averaging._is_state)[0]
    assert isinstance(inner.average["b"], optax.MaskedNode)
    np.testing.assert_array_equal(m_avgs[-1]["b"], thetas[-1]["b"])
    for k in ("a", "c"):
        np.testing.assert_array_equal(m_avgs[-1][k], full[-1][k])


def test_before_the_first_averaging_step_params_are_returned():
    _, thetas, avgs = run(optareg.swa(start_step=5), make_tree(8), steps=5)
    for th, avg in zip(thetas, avgs, strict=True):
        chex.assert_trees_all_equal(avg, th)


def _reference_run(grads, params):
    state, params = _run_wrapped(optax.chain(optax.sgd(0.1), optareg.ema_params(0.9)), grads,
                                 params)  # fmt: skip
    return optareg.averaged_params(state, params), params


def _run_wrapped(tx, grads, params, repeat=1):
    state = tx.init(params)
    update = jax.jit(tx.update)
    for g in grads:
        for _ in range(repeat):
            u, state = update(g, state, params)
            params = optax.apply_updates(params, u)
    return state, params


WRAPPERS = {
    "optareg.chain(nested)": lambda: optareg.chain(
        optax.chain(optax.sgd(0.1), optareg.ema_params(0.9)), optareg.track()
    ),
    "optax.masked": lambda: optax.masked(
        optax.chain(optax.sgd(0.1), optareg.ema_params(0.9)),
        lambda p: jax.tree.map(lambda _: True, p),
    ),
    "inject_hyperparams": lambda: optax.chain(
        optax.sgd(0.1), optax.inject_hyperparams(optareg.ema_params)(decay=0.9)
    ),
    "MultiSteps": lambda: optax.MultiSteps(
        optareg.chain(optax.sgd(0.1), optareg.ema_params(0.9)), every_k_schedule=2
    ),
}


@pytest.mark.parametrize("wrapper", list(WRAPPERS))
def test_averaged_params_through_wrappers(wrapper):
    """Found by type through each wrapper, equal to the plain chain's average, under jit too
    (MultiSteps gets each gradient twice: one optimizer step, one average, per two calls)."""
    grads = [make_tree(20 + i) for i in range(4)]
    ref, ref_params = _reference_run(grads, make_tree(9))
    state, params = _run_wrapped(WRAPPERS[wrapper](), grads, make_tree(9), 2 if "Multi" in
                                 wrapper else 1)  # fmt: skip
    chex.assert_trees_all_close(params, ref_params, rtol=1e-6)
    chex.assert_trees_all_close(optareg.averaged_params(state, params), ref, rtol=1e-6)
    jitted = jax.jit(optareg.averaged_params)(state, params)
    chex.assert_trees_all_equal(jitted, optareg.averaged_params(state, params))


def test_averaged_params_in_a_flax_nnx_optimizer():
    nnx = pytest.importorskip("flax.nnx")
    model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    opt = nnx.Optimizer(
        model, optareg.chain(optax.sgd(0.1), optareg.ema_params(0.5, debias=False)), wrt=nnx.Param
    )
    x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 3)), jnp.float32)
    thetas = []

    @nnx.jit
    def train_step(model, opt):
        opt.update(model, nnx.grad(lambda m: jnp.sum(m(x) ** 2))(model))

    for _ in range(2):
        train_step(model, opt)
        thetas.append({k: np.asarray(v[...]) for k, v in nnx.state(model, nnx.Param).items()})
    oracle = ema_oracle(thetas, 0.5, False, 0, 1)[-1]
    params = nnx.state(model, nnx.Param)
    avg = optareg.averaged_params(opt.opt_state, params)
    assert jax.tree.structure(avg) == jax.tree.structure(params)  # Param nodes kept
    nnx.update(model, avg)
    for k in ("kernel", "bias"):
        np.testing.assert_allclose(getattr(model, k)[...], oracle[k], rtol=1e-6)


def test_several_states_need_a_name():
    tx = optareg.chain(optax.sgd(0.1), optareg.ema_params(0.9), optareg.swa(name="tail"))
    state, params = _run_wrapped(tx, [make_tree(30), make_tree(31)], make_tree(10))
    with pytest.raises(ValueError, match=r"several averaging states.*\['ema', 'tail'\]"):
        optareg.averaged_params(state, params)
    with pytest.raises(ValueError, match=r"no averaging state named 'other'"):
        optareg.averaged_params(state, params, name="other")
    swa_avg = optareg.averaged_params(state, params, name="tail")
    mean = {k: (np.asarray(params[k]) + np.asarray(_prev(tx, params)[k])) / 2 for k in SHAPES}
    chex.assert_trees_all_close(swa_avg, mean, rtol=1e-6)
    with pytest.raises(ValueError, match="no averaging state"):
        optareg.averaged_params(optax.sgd(0.1).init(params), params)
    with pytest.raises(ValueError, match="does not match the tree"):
        optareg.averaged_params(state, {"a": params["a"]}, name="ema")


def _prev(tx, params):
    """The params after the first of the two steps of test_several_states_need_a_name."""
    _, first = _run_wrapped(tx, [make_tree(30)], make_tree(10))
    return first


# --------------------------------------------------------------------------------------------
# scale: lax.scan, vmap over seeds; chain order
# --------------------------------------------------------------------------------------------


def test_scan_and_vmap_over_seeds_match_python_loops():
    tx = optareg.chain(optax.adam(1e-2), optareg.ema_params(0.8, start_step=1))

    def train(params):
        def body(carry, _):
            params, state = carry
            g = jax.tree.map(lambda p: p + jnp.sin(p), params)
            u, state = tx.update(g, state, params)
            return (optax.apply_updates(params, u), state), None

        (params, state), _ = jax.lax.scan(body, (params, tx.init(params)), None, 6)
        return optareg.averaged_params(state, params)

    seeds = [make_tree(s) for s in (11, 12, 13)]
    batched = jax.jit(jax.vmap(train))(jax.tree.map(lambda *x: jnp.stack(x), *seeds))
    update = jax.jit(tx.update)
    for i, p in enumerate(seeds):
        state = tx.init(p)
        for _ in range(6):
            u, state = update(jax.tree.map(lambda x: x + jnp.sin(x), p), state, p)
            p = optax.apply_updates(p, u)
        loop = optareg.averaged_params(state, p)
        chex.assert_trees_all_close(jax.tree.map(lambda x: x[i], batched), loop, rtol=1e-6)


def test_chain_places_averaging_last():
    ema, lp = optareg.ema_params(), optareg.low_precision_updates()
    optareg.chain(optax.adam(1e-3), optareg.prox_l1(1e-3, 1e-3), lp, ema, optareg.swa(),
                  optareg.track())  # fmt: skip
    with pytest.raises(ValueError, match=r"`ema` \(position 0\) is misplaced.*changes the update"):
        optareg.chain(ema, optax.adam(1e-3))
    with pytest.raises(ValueError, match=r"`ema` \(position 1\) is misplaced.*low_precision"):
        optareg.chain(optax.adam(1e-3), ema, lp)
    with pytest.raises(ValueError, match=r"`swa` \(position 1\).*optax.MultiSteps"):
        optareg.chain(optax.MultiSteps(optax.adam(1e-3), 2), optareg.swa())


@pytest.mark.parametrize(
    "kwargs, err, match",
    [
        ({"decay": 1.0}, ValueError, "`decay` must be a finite number >= 0.0 and < 1.0"),
        ({"decay": -0.1}, ValueError, "`decay`"),
        ({"decay": 0.9, "timescale": 10}, ValueError, "both given"),
        ({"timescale": 0.5}, ValueError, "`timescale` must be a finite number >= 1.0"),
        ({"start_step": -1}, ValueError, "`start_step` must be an integer >= 0"),
        ({"every": 0}, ValueError, "`every` must be an integer >= 1"),
        ({"every": 1.5}, TypeError, "`every` must be an integer"),
        ({"dtype": jnp.int32}, ValueError, "`dtype` must be None or a floating dtype"),
        ({"debias": 1}, TypeError, "`debias` must be a bool"),
        ({"name": "a/b"}, ValueError, "`name` must be a non-empty string"),
        ({"metrics_every": 0}, ValueError, "`metrics_every`"),
        ({"mask": True}, TypeError, "`mask` is a single bool"),
    ],
)
def test_ema_params_rejects_bad_arguments(kwargs, err, match):
    with pytest.raises(err, match=match):
        optareg.ema_params(**kwargs)


def test_swa_rejects_bad_arguments_and_needs_params():
    with pytest.raises(ValueError, match="`start_step`"):
        optareg.swa(-2)
    with pytest.raises(ValueError, match="`every`"):
        optareg.swa(every=0)
    tx = optareg.swa()
    with pytest.raises(ValueError, match="`params` is None"):
        tx.update(make_tree(0), tx.init(make_tree(0)))


def test_average_of_the_low_precision_landing():
    """After ``low_precision_updates`` on bf16 params the average sees the bf16 weights that
    land (decay 0, no debias: the average is exactly the params); the average is float32."""
    tx = optareg.chain(
        optax.sgd(1e-3), optareg.low_precision_updates(), optareg.ema_params(0.0, debias=False)
    )
    grads = [make_tree(50 + i, jnp.bfloat16) for i in range(3)]
    state, params = _run_wrapped(tx, grads, make_tree(14, jnp.bfloat16))
    (found,) = optareg.averaging.diagnostics.find_nodes(state, optareg.averaging._is_state)
    assert int(found.n) == 3
    for k in SHAPES:
        assert found.average[k].dtype == jnp.float32
        np.testing.assert_array_equal(found.average[k], params[k].astype(jnp.float32))
    chex.assert_trees_all_equal(optareg.averaged_params(state, params), params)


def test_a_nan_sticks_in_the_average_unless_apply_if_finite_skips_it():
    """NaN in one update entry: passed through, that entry of the average is NaN for good (the
    README's table); ``optax.apply_if_finite`` around the chain skips the step instead."""
    bad = [make_tree(40), {**make_tree(41), "b": make_tree(41)["b"].at[2].set(jnp.nan)}]
    bad.append(make_tree(42))
    for wrap, finite in ((lambda tx: tx, False), (lambda tx: optax.apply_if_finite(tx, 5), True)):
        tx = wrap(optareg.chain(optax.sgd(0.1), optareg.ema_params(0.5)))
        state, params = _run_wrapped(tx, bad, make_tree(15))
        avg = optareg.averaged_params(state, params)
        assert np.isfinite(avg["b"][2]) == finite
        assert np.isfinite(np.delete(np.asarray(avg["b"]), 2)).all()
        assert np.isfinite(avg["a"]).all()


# --------------------------------------------------------------------------------------------
# weight decay timescales
# --------------------------------------------------------------------------------------------


def test_weight_decay_for_timescale_closed_form_and_adamw():
    """λ = 1/(η·τ_iter); ``optax.adamw`` with that λ shrinks θ by (1 − 1/τ)^τ in τ steps of zero
    gradient (decay per step η·λ = 1/τ)."""
    assert optareg.weight_decay_for_timescale(200, 5e-3) == pytest.approx(1.0, rel=1e-15)
    lam = optareg.weight_decay_for_timescale(2.0, 1e-3, steps_per_epoch=50)
    assert lam == pytest.approx(1 / (1e-3 * 100), rel=1e-15)
    assert optareg.decay_timescale(lam, 1e-3, steps_per_epoch=50) == pytest.approx(2.0, rel=1e-14)
    assert optareg.decay_timescale(0.1, 1e-3) == pytest.approx(1e4, rel=1e-14)
    tau = 40
    tx = optax.adamw(1e-2, weight_decay=optareg.weight_decay_for_timescale(tau, 1e-2))
    params = {"w": jnp.ones(3)}
    state = tx.init(params)
    for _ in range(tau):
        u, state = tx.update({"w": jnp.zeros(3)}, state, params)
        params = optax.apply_updates(params, u)
    np.testing.assert_allclose(params["w"], (1 - 1 / tau) ** tau, rtol=1e-5)


@pytest.mark.parametrize(
    "fn, args, kwargs, match",
    [
        ("weight_decay_for_timescale", (0.0, 1e-3), {}, "`timescale` must be a finite number > 0"),
        ("weight_decay_for_timescale", (1.0, -1.0), {}, "`learning_rate`"),
        ("weight_decay_for_timescale", (1.0, 1e-3), {"steps_per_epoch": 0}, "`steps_per_epoch`"),
        ("decay_timescale", (0.0, 1e-3), {}, "`weight_decay` must be a finite number > 0"),
        ("decay_timescale", (0.1, float("inf")), {}, "`learning_rate`"),
    ],
)
def test_timescale_functions_reject_bad_arguments(fn, args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        getattr(optareg, fn)(*args, **kwargs)


# --------------------------------------------------------------------------------------------
# BatchNorm statistics for the averaged weights
# --------------------------------------------------------------------------------------------


def test_recompute_batch_stats_for_averaged_weights():
    """NNX: load the SWA weights, recompute the BatchNorm statistics: the running mean / var are
    the mean of the batch means / (biased) variances of the averaged layer's outputs."""
    nnx = pytest.importorskip("flax.nnx")

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.dense = nnx.Linear(3, 4, rngs=rngs)
            self.bn = nnx.BatchNorm(4, momentum=0.9, rngs=rngs)

        def __call__(self, x):
            return self.bn(self.dense(x))

    model = Net(nnx.Rngs(0))
    opt = nnx.Optimizer(model, optareg.chain(optax.sgd(0.1), optareg.swa()), wrt=nnx.Param)
    rng = np.random.default_rng(0)
    batches = [jnp.asarray(rng.normal(size=(8, 3)) + i, jnp.float32) for i in range(3)]

    @nnx.jit
    def train_step(model, opt, x):
        opt.update(model, nnx.grad(lambda m: jnp.sum(m(x) ** 2))(model))

    for x in batches:
        train_step(model, opt, x)
    nnx.update(model, optareg.averaged_params(opt.opt_state, nnx.state(model, nnx.Param)))
    model.eval()
    optareg.recompute_batch_stats(model, batches)
    k, b = np.asarray(model.dense.kernel[...], np.float64), np.asarray(model.dense.bias[...])
    outs = [np.asarray(x, np.float64) @ k + b for x in batches]
    np.testing.assert_allclose(model.bn.mean[...], np.mean([o.mean(0) for o in outs], 0), 1e-5)
    np.testing.assert_allclose(model.bn.var[...], np.mean([o.var(0) for o in outs], 0), 1e-5)
    assert model.bn.momentum == 0.9 and model.bn.use_running_average is True


# --------------------------------------------------------------------------------------------
# the example
# --------------------------------------------------------------------------------------------


def test_weight_averaging_example_smoke(tmp_path, capsys):
    from helpers import assert_png, load_example

    mod = load_example("weight_averaging")
    argv = ["--seeds", "2", "--epochs", "3", "--n-train", "100", "--hidden", "8"]
    res = mod.main([*argv, "--batch-size", "20", "--swa-start", "0.5", "--out", str(tmp_path)])
    text = capsys.readouterr().out
    assert_png(tmp_path / "weight_averaging.png")
    assert res["loss"].shape == res["acc"].shape == (2, 3) and np.isfinite(res["loss"]).all()
    assert res["tau_epoch"] == pytest.approx(20.0)  # the default --decay-epochs, read back
    for phrase in ("τ_epoch = 20 epochs", "EMA − live", "SWA − live", "val loss mean ± std"):
        assert phrase in text
    for bad in (["--epochs", "1"], ["--batch-size", "200", "--n-train", "100"], ["--lr", "0"]):
        with pytest.raises(SystemExit):
            mod.parse_args(bad)
