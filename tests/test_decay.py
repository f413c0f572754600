"""Weight decay in every convention: closed forms, optax / PyTorch AdamW parity, schedules."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optareg

LAM = 0.1


def tree(seed, shapes=None, dtype=np.float32):
    rng = np.random.default_rng(seed)
    shapes = shapes or {"a": (3, 4), "b": (5,), "c": ()}
    return jax.tree.map(
        lambda s: jnp.asarray(rng.normal(size=s), dtype),
        shapes,
        is_leaf=lambda x: isinstance(x, tuple),
    )


def f64(t):
    return jax.tree.map(lambda x: np.asarray(x, np.float64), t)


def assert_tree_equal(a, b):
    chex.assert_trees_all_equal_structs(a, b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# ---------------------------------------------------------------------------------------------
# add_decayed_weights: closed forms
# ---------------------------------------------------------------------------------------------


def test_add_decayed_weights_closed_form_zero_reference():
    p, u = tree(0), tree(1)
    tx = optareg.add_decayed_weights(LAM)
    out, _ = tx.update(u, tx.init(p), p)
    expect = jax.tree.map(lambda u, p: u + LAM * p, f64(u), f64(p))
    chex.assert_trees_all_close(f64(out), expect, rtol=1e-6, atol=1e-7)


def test_add_decayed_weights_closed_form_tree_reference_and_init():
    p, u, r = tree(0), tree(1), tree(2)
    tx = optareg.add_decayed_weights(LAM, reference=r)
    out, _ = tx.update(u, tx.init(p), p)
    expect = jax.tree.map(lambda u, p, r: u + LAM * (p - r), f64(u), f64(p), f64(r))
    chex.assert_trees_all_close(f64(out), expect, rtol=1e-6, atol=1e-7)

    # "init": decays toward the params given to init, not toward the current ones.
    p0 = tree(3)
    tx = optareg.add_decayed_weights(LAM, reference="init")
    state = tx.init(p0)
    out, state = tx.update(u, state, p)
    expect = jax.tree.map(lambda u, p, r: u + LAM * (p - r), f64(u), f64(p), f64(p0))
    chex.assert_trees_all_close(f64(out), expect, rtol=1e-6, atol=1e-7)


def test_init_reference_snapshot_bit_exact_across_steps():
    p0 = tree(0)
    snapshot = jax.tree.map(np.array, p0)
    tx = optax.chain(
        optax.scale_by_adam(),
        optareg.add_decayed_weights(LAM, reference="init"),
        optax.scale_by_learning_rate(0.1),
    )
    state = tx.init(p0)
    step = jax.jit(tx.update)
    params = p0
    for i in range(20):
        updates, state = step(tree(100 + i), state, params)
        params = optax.apply_updates(params, updates)
    ref = state[1].reference
    assert_tree_equal(ref, snapshot)
    # the params moved, the snapshot did not
    assert not np.allclose(params["a"], snapshot["a"])


def test_init_reference_pulls_toward_start_not_zero():
    """With zero gradients and decay toward "init", the params stay where they started."""
    p0 = tree(0)
    tx = optax.chain(optareg.add_decayed_weights(0.5, reference="init"), optax.sgd(0.5))
    state = tx.init(p0)
    p = jax.tree.map(lambda x: x + 1.0, p0)  # move away, then decay back: gap halves... x0.75
    for _ in range(5):
        u, state = tx.update(jax.tree.map(jnp.zeros_like, p), state, p)
        p = optax.apply_updates(p, u)
    gap = jax.tree.map(lambda a, b: np.asarray(a - b, np.float64), p, p0)
    chex.assert_trees_all_close(
        gap, jax.tree.map(lambda g: np.full_like(g, 0.75**5), gap), rtol=1e-5
    )


def test_add_decayed_weights_cautious_closed_form():
    p = {"w": jnp.asarray([1.0, 1.0, -2.0, -2.0, 3.0, 0.0])}
    r = {"w": jnp.asarray([0.0, 0.0, 0.0, 0.0, 5.0, 0.0])}
    u = {"w": jnp.asarray([0.5, -0.5, 0.5, -0.5, 0.25, 0.7])}
    # d = θ − θ_ref = [1, 1, -2, -2, -2, 0]; u·d = [.5, -.5, -1, 1, -.5, 0] -> decay where >= 0
    tx = optareg.add_decayed_weights(LAM, reference=r, cautious=True)
    out, _ = tx.update(u, tx.init(p), p)
    expect = np.array([0.5 + LAM, -0.5, 0.5, -0.5 - 2 * LAM, 0.25, 0.7], np.float32)
    np.testing.assert_allclose(out["w"], expect, rtol=1e-6)
    # the opposite-sign coordinates are untouched bit for bit
    np.testing.assert_array_equal(np.asarray(out["w"])[[1, 2, 4]], np.asarray(u["w"])[[1, 2, 4]])


def test_add_decayed_weights_keeps_dtype_bf16_with_schedule():
    p = tree(0, dtype=jnp.bfloat16)
    tx = optareg.add_decayed_weights(optax.linear_schedule(0.1, 0.0, 10))
    out, _ = tx.update(p, tx.init(p), p)
    chex.assert_trees_all_equal_shapes_and_dtypes(out, p)


# ---------------------------------------------------------------------------------------------
# add_decayed_weights: parity with optax
# ---------------------------------------------------------------------------------------------

_MASK = {"a": True, "b": False, "c": True}


@pytest.mark.parametrize(
    "wd", [0.0, 1e-2, optax.linear_schedule(1e-1, 1e-3, 7)], ids=["zero", "const", "schedule"]
)
@pytest.mark.parametrize(
    "mask",
    [None, _MASK, lambda p: jax.tree.map(lambda x: x.ndim > 1, p)],
    ids=["nomask", "tree", "fn"],
)
def test_matches_optax_add_decayed_weights_bit_exact(wd, mask):
    ours = optareg.add_decayed_weights(wd, mask)
    theirs = optax.add_decayed_weights(wd, mask)
    params = tree(0)
    s1, s2 = ours.init(params), theirs.init(params)
    for i in range(10):
        g = tree(10 + i)
        u1, s1 = ours.update(g, s1, params)
        u2, s2 = theirs.update(g, s2, params)
        assert_tree_equal(u1, u2)
        params = optax.apply_updates(params, jax.tree.map(lambda x: -0.1 * x, u1))


@pytest.mark.parametrize("sched", [False, True], ids=["const_lr", "warmup_cosine_lr"])
def test_chain_equals_optax_adamw(sched):
    lr = optax.warmup_cosine_decay_schedule(0.0, 3e-2, 10, 50) if sched else 3e-2
    ours = optax.chain(
        optax.scale_by_adam(), optareg.add_decayed_weights(LAM), optax.scale_by_learning_rate(lr)
    )
    theirs = optax.adamw(lr, weight_decay=LAM)
    p1 = p2 = tree(0)
    s1, s2 = ours.init(p1), theirs.init(p2)
    for i in range(50):
        g1 = jax.tree.map(lambda x, n: x + n, p1, tree(200 + i))
        g2 = jax.tree.map(lambda x, n: x + n, p2, tree(200 + i))
        u1, s1 = ours.update(g1, s1, p1)
        u2, s2 = theirs.update(g2, s2, p2)
        p1, p2 = optax.apply_updates(p1, u1), optax.apply_updates(p2, u2)
        chex.assert_trees_all_close(p1, p2, atol=1e-7, rtol=1e-7)


# ---------------------------------------------------------------------------------------------
# PyTorch AdamW parity
# ---------------------------------------------------------------------------------------------


def _adamw_trajectories(torch, dtype_name, sched, steps=200, lr0=1e-2, wd=0.1):
    """(optareg chain, torch.optim.AdamW) trajectories on a random least-squares problem."""
    npd = np.dtype(dtype_name)
    tdt = torch.float64 if dtype_name == "float64" else torch.float32
    rng = np.random.default_rng(0)
    A = rng.normal(size=(64, 10)).astype(npd)
    b = rng.normal(size=(64,)).astype(npd)
    x0 = rng.normal(size=(10,)).astype(npd)
    lr, lrs = lr0, None
    if sched:
        # The warmup-cosine values as a table, so that both sides use the very same lr sequence
        # (an optax schedule of an int32 count is float32 and its rounding depends on fusion).
        warm = optax.warmup_cosine_decay_schedule(0.0, lr0, 20, steps)
        lrs = np.asarray([warm(t) for t in range(steps)], npd)
        lr = lambda count: jnp.asarray(lrs)[count]  # noqa: E731

    tx = optax.chain(
        optax.scale_by_adam(b1=0.9, b2=0.999, eps=1e-8),
        optareg.add_decayed_weights(wd),
        optax.scale_by_learning_rate(lr),
    )
    A64, b64 = A.astype(np.float64), b.astype(np.float64)

    def grad(x):
        """The least-squares gradient in float64 numpy, rounded to the working dtype: both
        optimizers get the same gradient for the same iterate, so only their arithmetic differs."""
        x = np.asarray(x, np.float64)
        return (A64.T @ (A64 @ x - b64) / A.shape[0]).astype(npd)

    @jax.jit
    def step(x, s, g):
        u, s = tx.update(g, s, x)
        return optax.apply_updates(x, u), s

    x = jnp.asarray(x0)
    assert x.dtype == npd
    s = tx.init(x)
    traj_j = []
    for _ in range(steps):
        x, s = step(x, s, jnp.asarray(grad(x)))
        traj_j.append(np.asarray(x, np.float64))

    xt = torch.tensor(x0, dtype=tdt, requires_grad=True)
    opt = torch.optim.AdamW([xt], lr=lr0, betas=(0.9, 0.999), eps=1e-8, weight_decay=wd)
    traj_t = []
    for t in range(steps):
        if sched:
            for group in opt.param_groups:
                group["lr"] = float(lrs[t])
        xt.grad = torch.from_numpy(grad(xt.detach().numpy()))
        opt.step()
        traj_t.append(xt.detach().double().numpy().copy())
    return np.stack(traj_j), np.stack(traj_t), x0


@pytest.mark.parametrize("sched", [False, True], ids=["const_lr", "warmup_cosine_lr"])
@pytest.mark.parametrize("dtype, tol", [("float32", 1e-5), ("float64", 1e-10)])
def test_trajectory_equals_torch_adamw(dtype, tol, sched):
    torch = pytest.importorskip(
        "torch", reason="torch (CPU) is the AdamW oracle; install it to run this test"
    )
    # float64 inside the enable_x64 context only, so x64 does not leak into other tests.
    with jax.enable_x64(dtype == "float64"):
        tj, tt, x0 = _adamw_trajectories(torch, dtype, sched)
    assert float(np.max(np.abs(tt[-1] - x0))) > 0.1  # the trajectory is not trivial
    # relative error of each iterate, ||x_jax − x_torch|| / ||x_torch||, over all 200 steps
    rel = np.max(np.linalg.norm(tj - tt, axis=1) / np.linalg.norm(tt, axis=1))
    assert rel < tol, rel


# ---------------------------------------------------------------------------------------------
# decoupled_weight_decay: closed forms
# ---------------------------------------------------------------------------------------------


def _apply_last(tx, u, p, state=None):
    state = tx.init(p) if state is None else state
    out, state = tx.update(u, state, p)
    return optax.apply_updates(p, out), state


def test_decoupled_closed_form_zero_reference():
    p, u = tree(0), tree(1)
    new, _ = _apply_last(optareg.decoupled_weight_decay(LAM), u, p)
    expect = jax.tree.map(lambda p, u: p + u - LAM * p, f64(p), f64(u))
    chex.assert_trees_all_close(f64(new), expect, rtol=1e-6, atol=1e-6)


def test_decoupled_closed_form_reference_tree_and_init():
    p, u, r = tree(0), tree(1), tree(2)
    new, _ = _apply_last(optareg.decoupled_weight_decay(LAM, reference=r), u, p)
    expect = jax.tree.map(lambda p, u, r: p + u - LAM * (p - r), f64(p), f64(u), f64(r))
    chex.assert_trees_all_close(f64(new), expect, rtol=1e-6, atol=1e-6)

    tx = optareg.decoupled_weight_decay(LAM, reference="init")
    state = tx.init(r)  # snapshot r, then step from p
    new, state = _apply_last(tx, u, p, state)
    chex.assert_trees_all_close(f64(new), expect, rtol=1e-6, atol=1e-6)
    assert_tree_equal(state.reference, r)


def test_decoupled_not_multiplied_by_learning_rate():
    """After sgd(η), the decay is λ·θ whatever η is (θ_new = θ − η·g − λ·θ)."""
    p, g = tree(0), tree(1)
    for eta in (1e-3, 1.0):
        tx = optax.chain(optax.sgd(eta), optareg.decoupled_weight_decay(LAM))
        new, _ = _apply_last(tx, g, p)
        expect = jax.tree.map(lambda p, g: p - eta * g - LAM * p, f64(p), f64(g))
        chex.assert_trees_all_close(f64(new), expect, rtol=1e-6, atol=1e-6)


def test_decoupled_cautious_closed_form():
    p = {"w": jnp.asarray([1.0, 1.0, -2.0, -2.0, 3.0, 0.0])}
    r = {"w": jnp.asarray([0.0, 0.0, 0.0, 0.0, 5.0, 0.0])}
    u = {"w": jnp.asarray([0.5, -0.5, 0.5, -0.5, 0.25, 0.7])}  # signed step
    # d = [1, 1, -2, -2, -2, 0]; u·d = [.5, -.5, -1, 1, -.5, 0] -> decay where <= 0
    tx = optareg.decoupled_weight_decay(LAM, reference=r, cautious=True)
    new, _ = _apply_last(tx, u, p)
    expect = np.array([1.5, 0.5 - LAM, -1.5 + 2 * LAM, -2.5, 3.25 + 2 * LAM, 0.7], np.float32)
    np.testing.assert_allclose(new["w"], expect, rtol=1e-6)
    # opposite-sign coordinates get the step alone, exactly as without the transform
    plain = np.asarray(p["w"]) + np.asarray(u["w"])
    np.testing.assert_array_equal(np.asarray(new["w"])[[0, 3]], plain[[0, 3]])


def test_decoupled_mask_leaves_masked_out_untouched():
    p, u = tree(0), tree(1)
    tx = optareg.decoupled_weight_decay(LAM, mask=_MASK)
    out, _ = tx.update(u, tx.init(p), p)
    np.testing.assert_array_equal(out["b"], u["b"])
    np.testing.assert_allclose(
        np.asarray(out["a"], np.float64),
        np.asarray(u["a"]) - LAM * np.asarray(p["a"]),
        rtol=1e-5,
        atol=1e-6,
    )


def test_decoupled_exact_zero_survives_and_bf16_dtype():
    p = {"w": jnp.asarray([0.0, 1.0], jnp.bfloat16)}
    u = {"w": jnp.asarray([0.0, 0.5], jnp.bfloat16)}
    tx = optareg.decoupled_weight_decay(LAM)
    out, _ = tx.update(u, tx.init(p), p)
    assert out["w"].dtype == jnp.bfloat16
    new = optax.apply_updates(p, out)
    assert float(new["w"][0]) == 0.0


# ---------------------------------------------------------------------------------------------
# decay_schedule
# ---------------------------------------------------------------------------------------------

WARM = dict(init_value=0.0, peak_value=3e-3, warmup_steps=10, decay_steps=60, end_value=1e-5)


def test_decay_schedule_closed_forms():
    lr = optax.warmup_cosine_decay_schedule(**WARM)
    eta_max = WARM["peak_value"]
    lam = 0.05
    for t in (0, 3, 10, 25, 59, 80):
        eta = float(lr(t))
        chex.assert_trees_all_close(
            {
                c: float(optareg.decay_schedule(lam, lr, c)(jnp.int32(t)))
                for c in ("paper", "independent", "adamc", "pytorch")
            },
            {
                "paper": lam * eta / eta_max,
                "independent": lam,
                "adamc": lam * eta**2 / eta_max,
                "pytorch": lam * eta,
            },
            rtol=1e-6,
            atol=1e-12,
        )


def test_decay_schedule_peak_detection():
    lr = optax.warmup_cosine_decay_schedule(**WARM)
    sched = optareg.decay_schedule(1.0, lr, "paper")
    assert float(sched(10)) == pytest.approx(1.0, rel=1e-6)  # η_10 = η_max
    # explicit peak_value overrides the search
    sched = optareg.decay_schedule(1.0, lr, "paper", peak_value=6e-3)
    assert float(sched(10)) == pytest.approx(0.5, rel=1e-6)
    # a constant lr is its own peak: "paper" and "adamc" are then λ and λ·η
    assert float(optareg.decay_schedule(0.1, 1e-3, "paper")(5)) == pytest.approx(0.1, rel=1e-7)
    assert float(optareg.decay_schedule(0.1, 1e-3, "adamc")(5)) == pytest.approx(1e-4, rel=1e-6)
    # a peak beyond the horizon is not seen
    late = optax.linear_schedule(0.0, 1.0, 1000)
    assert float(optareg.decay_schedule(1.0, late, "paper", horizon=101)(100)) == pytest.approx(
        1.0, rel=1e-6
    )
    with pytest.raises(ValueError, match="peak"):
        optareg.decay_schedule(0.1, optax.constant_schedule(0.0), "paper")


def test_decay_schedule_validation():
    with pytest.raises(ValueError, match="convention"):
        optareg.decay_schedule(0.1, 1e-3, "torch")
    with pytest.raises(ValueError, match="weight_decay"):
        optareg.decay_schedule(-0.1, 1e-3, "paper")
    with pytest.raises(ValueError, match="learning_rate"):
        optareg.decay_schedule(0.1, -1e-3, "pytorch")
    with pytest.raises(ValueError, match="peak_value"):
        optareg.decay_schedule(0.1, 1e-3, "paper", peak_value=0.0)


def _run(tx, steps=60, seed=0):
    params = tree(seed)
    state = tx.init(params)
    step = jax.jit(tx.update)
    traj = []
    for i in range(steps):
        g = jax.tree.map(lambda x, n: x + n, params, tree(500 + i))
        u, state = step(g, state, params)
        params = optax.apply_updates(params, u)
        traj.append(params)
    return traj


def test_paper_convention_reproduces_optax_adamw():
    """λ_paper = λ·η_max with a warmup-cosine lr gives optax.adamw's decay η_t·λ."""
    lr = optax.warmup_cosine_decay_schedule(**WARM)
    lam = 0.2
    ours = optax.chain(
        optax.scale_by_adam(),
        optax.scale_by_learning_rate(lr),
        optareg.decoupled_weight_decay(
            optareg.decay_schedule(lam * WARM["peak_value"], lr, "paper")
        ),
    )
    for a, b in zip(_run(ours), _run(optax.adamw(lr, weight_decay=lam)), strict=True):
        chex.assert_trees_all_close(a, b, atol=1e-6, rtol=1e-6)
    # "pytorch" convention: the same without the η_max bookkeeping
    ours = optax.chain(
        optax.scale_by_adam(),
        optax.scale_by_learning_rate(lr),
        optareg.decoupled_weight_decay(optareg.decay_schedule(lam, lr, "pytorch")),
    )
    for a, b in zip(_run(ours), _run(optax.adamw(lr, weight_decay=lam)), strict=True):
        chex.assert_trees_all_close(a, b, atol=1e-6, rtol=1e-6)


def test_pytorch_convention_reproduces_optax_adamw_in_float64():
    """Under x64, λ·η_t is formed in float64 (optax's schedules return float32, and the product
    rounded to float32 was 1e-10 off adamw's float64 decay over 8 steps): now within 1e-15."""
    with jax.enable_x64(True):
        lr = optax.warmup_cosine_decay_schedule(**WARM)
        lam = 0.1
        ours = optax.chain(
            optax.scale_by_adam(),
            optax.scale_by_learning_rate(lr),
            optareg.decoupled_weight_decay(optareg.decay_schedule(lam, lr, "pytorch")),
        )

        def run(tx, steps=8):
            params = jax.tree.map(lambda x: x.astype(jnp.float64), tree(0))
            state = tx.init(params)
            for i in range(steps):
                g = jax.tree.map(lambda x, n: x + n.astype(jnp.float64), params, tree(500 + i))
                u, state = jax.jit(tx.update)(g, state, params)
                params = optax.apply_updates(params, u)
            return params

        a, b = run(ours), run(optax.adamw(lr, weight_decay=lam))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
            assert x.dtype == jnp.float64
            np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=0, atol=1e-15)


@pytest.mark.parametrize("convention", ["paper", "independent", "adamc"])
def test_decoupled_convention_matches_numpy_sgd(convention):
    """sgd + decoupled decay under each convention against a float64 numpy recursion."""
    lr = optax.warmup_cosine_decay_schedule(**WARM)
    lam = 0.05
    tx = optax.chain(
        optax.sgd(lr), optareg.decoupled_weight_decay(optareg.decay_schedule(lam, lr, convention))
    )
    traj = _run(tx, steps=40)
    p = f64(tree(0))
    eta_max = WARM["peak_value"]
    for i in range(40):
        eta = float(lr(i))
        lam_t = {"paper": lam * eta / eta_max, "independent": lam, "adamc": lam * eta**2 / eta_max}[
            convention
        ]
        g = jax.tree.map(lambda x, n: x + n, p, f64(tree(500 + i)))
        p = jax.tree.map(lambda p, g: p - eta * g - lam_t * p, p, g)
        chex.assert_trees_all_close(f64(traj[i]), p, rtol=1e-5, atol=1e-6)


def test_gradient_side_mapping_of_paper_convention():
    """add_decayed_weights(λ/η_max) before the lr == decoupled paper convention after it."""
    lr = optax.warmup_cosine_decay_schedule(**WARM)
    lam = 0.3
    a = optax.chain(
        optax.scale_by_adam(),
        optareg.add_decayed_weights(lam / WARM["peak_value"]),
        optax.scale_by_learning_rate(lr),
    )
    b = optax.chain(
        optax.scale_by_adam(),
        optax.scale_by_learning_rate(lr),
        optareg.decoupled_weight_decay(optareg.decay_schedule(lam, lr, "paper")),
    )
    for x, y in zip(_run(a), _run(b), strict=True):
        chex.assert_trees_all_close(x, y, atol=1e-6, rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("factory", [optareg.add_decayed_weights, optareg.decoupled_weight_decay])
def test_validation(factory):
    with pytest.raises(ValueError, match="weight_decay"):
        factory(-1.0)
    with pytest.raises(TypeError, match="cautious"):
        factory(0.1, cautious=1)
    with pytest.raises(ValueError, match="reference"):
        factory(0.1, reference="pretrained")
    with pytest.raises(ValueError, match="reference"):
        factory(0.1, reference={})
    tx = factory(0.1, reference={"a": jnp.ones(3)})
    with pytest.raises(ValueError, match="reference"):
        tx.init({"a": jnp.ones(4)})
    with pytest.raises(ValueError, match="reference"):
        tx.init({"b": jnp.ones(3)})
    tx = factory(0.1)
    p = {"a": jnp.ones(3)}
    with pytest.raises(ValueError, match="params"):
        tx.update(p, tx.init(p), None)


def test_decoupled_rejects_decay_above_one():
    with pytest.raises(ValueError, match="weight_decay"):
        optareg.decoupled_weight_decay(1.5)
