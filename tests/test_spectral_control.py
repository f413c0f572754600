"""Spectral control for Muon (issue 30): the soft cap of ``spectral_clip``, ``spectral_hammer``,
``spectral_weight_decay`` and ``qk_clip``, each against a numpy float64 oracle (SVD, the
paper's polynomial and quartic, logits recomputed from the weights), chained after
``optax.contrib.muon`` and ``optax.adamw``."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optareg

RNG = np.random.default_rng(0)


def _with_spectrum(m, n, sigmas, seed=0):
    """An m×n float64 matrix with the given singular values (random singular vectors)."""
    rng = np.random.default_rng(seed)
    u, _ = np.linalg.qr(rng.standard_normal((m, m)))
    v, _ = np.linalg.qr(rng.standard_normal((n, n)))
    r = len(sigmas)
    return (u[:, :r] * np.asarray(sigmas)) @ v[:, :r].T


def _svals(x):
    return np.linalg.svd(np.asarray(x, np.float64), compute_uv=False)


def _one_step(tx, params, updates, **extra):
    state = tx.init(params)
    out, state = tx.update(updates, state, params, **extra)
    return optax.apply_updates(params, out), state


# --------------------------------------------------------------------------------------------
# soft cap: singular values follow the paper's polynomial, α from the paper's quartic
# --------------------------------------------------------------------------------------------


def _paper_alpha(k):
    """Smallest non-negative real root of −k⁹α⁴ + 3k⁷α³ − 3k⁵α² + k − 1 (units of c), with
    the clamp αk² ≤ 1/3 the transform documents."""
    if k <= 1:
        return 0.0
    roots = np.roots([-(k**9), 3 * k**7, -3 * k**5, 0.0, k - 1.0])
    real = roots[(np.abs(roots.imag) < 1e-9) & (roots.real >= 0)].real
    return min(real.min(), 1.0 / (3.0 * k * k))


def _soft_cap_oracle(x, c, k):
    """U·c·f_α(Σ/c)·Vᵀ, f_α(σ) = p₂(p₁(σ)), p₁ = σ − ασ³, p₂ = s + αs³."""
    a = _paper_alpha(k)
    u, s, vt = np.linalg.svd(x, full_matrices=False)
    t = s / c
    p1 = t - a * t**3
    f = p1 + a * p1**3
    return (u * (c * f)) @ vt, c * f


@pytest.mark.parametrize("shape", [(24, 16), (16, 24)])
@pytest.mark.parametrize("max_update_norm", [None, 0.05])
def test_soft_cap_follows_the_papers_polynomial(shape, max_update_norm):
    c = 2.0
    theta = _with_spectrum(*shape, np.linspace(0.97 * c, 0.1, min(shape)), seed=1)
    step = 0.02 * RNG.standard_normal(shape)
    tx = optareg.spectral_clip(c, method="soft_cap", max_update_norm=max_update_norm)
    new, _ = _one_step(
        tx, {"w": jnp.asarray(theta, jnp.float32)}, {"w": jnp.asarray(step, jnp.float32)}
    )
    x = np.asarray(theta, np.float32).astype(np.float64) + np.asarray(step, np.float32)
    b = np.linalg.norm(step) if max_update_norm is None else max_update_norm
    if b < np.linalg.norm(step) / np.sqrt(min(shape)):  # a claim below ‖u‖_F/√rank ≤ ‖u‖₂
        b = np.linalg.norm(step)  # is no bound: the transform falls back to ‖u‖_F
    k = min(np.linalg.norm(x), _svals(np.asarray(theta, np.float32))[0] + b) / c
    want, want_s = _soft_cap_oracle(x, c, k)
    np.testing.assert_allclose(_svals(new["w"]), want_s, atol=2e-5)
    np.testing.assert_allclose(np.asarray(new["w"], np.float64), want, atol=2e-5)
    if max_update_norm is None or max_update_norm >= np.linalg.norm(step, 2):
        assert _svals(new["w"])[0] <= c * (1 + 1e-5)  # inside from inside: the coupling


def test_soft_cap_from_far_outside_contracts_then_holds_the_bound():
    """σ_max(θ₀) = 3c: k = 3 (exact at init), α clamped at αk² = 1/3, every singular value
    follows f_α; the bound the state carries shrinks by g(1/3) per step until it is c."""
    c = 1.0
    theta = _with_spectrum(12, 12, [3.0, 1.0, 0.5], seed=2)
    tx = optareg.spectral_clip(c, method="soft_cap")
    params = {"w": jnp.asarray(theta, jnp.float32)}
    state = tx.init(params)
    zeros = {"w": jnp.zeros((12, 12))}
    step = jax.jit(tx.update)
    u, state = step(zeros, state, params)
    new = optax.apply_updates(params, u)
    x = np.asarray(params["w"], np.float64)
    k = min(np.linalg.norm(x), _svals(x)[0]) / c
    _, want_s = _soft_cap_oracle(x, c, k)
    np.testing.assert_allclose(_svals(new["w"]), want_s, atol=1e-5)
    assert float(optareg.metrics(state)["spectral_clip/sigma_max"]) == pytest.approx(k, rel=1e-5)
    for _ in range(6):
        u, state = step(zeros, state, new)
        new = optax.apply_updates(new, u)
    assert _svals(new["w"])[0] <= c * (1 + 1e-5)


def test_max_update_norm_is_for_the_soft_cap_only():
    with pytest.raises(ValueError, match="max_update_norm"):
        optareg.spectral_clip(1.0, method="exact", max_update_norm=0.1)
    with pytest.raises(ValueError, match="max_update_norm"):
        optareg.spectral_clip(1.0, method="soft_cap", max_update_norm=-1.0)


# --------------------------------------------------------------------------------------------
# spectral hammer and spectral weight decay: only the top singular value moves
# --------------------------------------------------------------------------------------------

_SPECTRUM = [3.0, 2.0, 1.5, 0.7, 0.3, 0.1]


def test_hammer_changes_only_the_top_singular_value():
    theta = _with_spectrum(20, 12, _SPECTRUM, seed=3)
    tx = optareg.spectral_hammer(1.0, init_iters=200, num_iters=4)
    new, state = _one_step(tx, {"w": jnp.asarray(theta, jnp.float32)}, {"w": jnp.zeros((20, 12))})
    got = _svals(new["w"])
    want = np.sort(np.r_[1.0, _SPECTRUM[1:], np.zeros(6)])[::-1]
    np.testing.assert_allclose(got, want, atol=1e-5)
    m = optareg.metrics(state)
    assert float(m["spectral_hammer/sigma_max"]) == pytest.approx(3.0, rel=1e-5)
    assert float(m["spectral_hammer/sigma_max_after"]) == pytest.approx(1.0, rel=1e-5)


def test_hammer_meets_the_bound_after_convergence_per_layer_of_a_stack():
    """Three singular values above c: one hammered per step, then the clustered ones near c
    converge (mixing pushes σ₂, σ₃ slightly below c); the layer inside the ball is untouched."""
    spectra = ([2.5, 2.0, 1.5, 0.5], [0.9, 0.5, 0.2])
    stack = np.stack([_with_spectrum(10, 8, s, seed=i) for i, s in enumerate(spectra)])
    tx = optareg.spectral_hammer(1.0, init_iters=50, num_iters=16, stack_axes=1)
    params = {"w": jnp.asarray(stack, jnp.float32)}
    state = tx.init(params)
    step = jax.jit(tx.update)
    zeros = {"w": jnp.zeros_like(params["w"])}
    for _ in range(20):
        u, state = step(zeros, state, params)
        params = optax.apply_updates(params, u)
    top0, top1 = _svals(params["w"][0]), _svals(params["w"][1])
    assert top0[0] <= 1.0 + 1e-5, top0
    assert (top0[1:3] > 0.9).all()  # brought to the cap, not far below it
    np.testing.assert_allclose(top0[3], 0.5, atol=1e-5)  # below c from the start: kept
    np.testing.assert_allclose(top1[:3], spectra[1], atol=1e-6)  # inside: untouched


@pytest.mark.parametrize("use_lr", [False, True])
def test_spectral_weight_decay_shrinks_the_top_singular_value_only(use_lr):
    theta = _with_spectrum(12, 20, _SPECTRUM, seed=4)
    if use_lr:  # pytorch convention: λ·η per step
        tx = optareg.spectral_weight_decay(0.5, learning_rate=0.2, init_iters=200, num_iters=4)
        factor = 1 - 0.5 * 0.2
    else:
        tx = optareg.spectral_weight_decay(0.25, init_iters=200, num_iters=4)
        factor = 1 - 0.25
    new, state = _one_step(tx, {"w": jnp.asarray(theta, jnp.float32)}, {"w": jnp.zeros((12, 20))})
    want = np.sort(np.r_[factor * 3.0, _SPECTRUM[1:], np.zeros(6)])[::-1]
    np.testing.assert_allclose(_svals(new["w"]), want, atol=1e-5)
    assert float(optareg.metrics(state)["spectral_weight_decay/sigma_max_after"]) == (
        pytest.approx(factor * 3.0, rel=1e-5)
    )


def test_spectral_weight_decay_decays_theta_not_theta_plus_u():
    """Like decoupled_weight_decay: θ_new = θ + u − λσ₁(θ)u₁v₁ᵀ(θ)."""
    theta = _with_spectrum(8, 8, [2.0, 1.0, 0.5], seed=5)
    step = 0.1 * RNG.standard_normal((8, 8))
    tx = optareg.spectral_weight_decay(0.1, init_iters=300)
    new, _ = _one_step(
        tx, {"w": jnp.asarray(theta, jnp.float32)}, {"w": jnp.asarray(step, jnp.float32)}
    )
    u, s, vt = np.linalg.svd(theta)
    want = theta + step - 0.1 * s[0] * np.outer(u[:, 0], vt[0])
    np.testing.assert_allclose(np.asarray(new["w"], np.float64), want, atol=1e-5)


@pytest.mark.parametrize(
    ("factory", "kwargs", "match"),
    [
        (optareg.spectral_hammer, {"max_norm": 0.0}, "max_norm"),
        (optareg.spectral_hammer, {"num_iters": 0}, "num_iters"),
        (optareg.spectral_hammer, {"layout": "jax"}, "layout"),
        (optareg.spectral_weight_decay, {"weight_decay": 1.5}, "weight_decay"),
        (optareg.spectral_weight_decay, {"learning_rate": 0.1, "convention": "x"}, "convention"),
        (optareg.spectral_weight_decay, {"init_iters": -1}, "init_iters"),
        (optareg.qk_clip, {"threshold": 0.0}, "threshold"),
        (optareg.qk_clip, {"alpha": 1.5}, "alpha"),
        (optareg.qk_clip, {"num_heads": 0}, "num_heads"),
        (optareg.qk_clip, {"query": "("}, "query"),
        (optareg.qk_clip, {"stack_axes": -1}, "stack_axes"),
    ],
)
def test_bad_arguments_raise_at_construction(factory, kwargs, match):
    with pytest.raises(ValueError, match=match):
        factory(**kwargs)


# --------------------------------------------------------------------------------------------
# QK-Clip: logits recomputed from the rescaled weights
# --------------------------------------------------------------------------------------------

H, D, E, T = 4, 8, 16, 6


def _logits_np(wq, wk, x, bq=None, bk=None):
    """Per-head max of q·k/√D over batch and positions (float64), wq/wk of shape (E, H, D)."""
    q = np.einsum("bte,ehd->bthd", x, wq) + (0 if bq is None else bq)
    k = np.einsum("bte,ehd->bthd", x, wk) + (0 if bk is None else bk)
    return np.einsum("bqhd,bkhd->bhqk", q, k).max(axis=(0, 2, 3)) / np.sqrt(D)


def _assert_ratio(new, old, per_head, rtol):
    """new / old == per_head (one factor per head, axis 1 of (E, H, D))."""
    want = np.broadcast_to(np.asarray(per_head)[None, :, None], new.shape)
    np.testing.assert_allclose(new / old, want, rtol=rtol)


def _qk_problem(seed=6):
    rng = np.random.default_rng(seed)
    wq = rng.standard_normal((E, H, D)) * np.array([3.0, 0.2, 2.0, 0.2])[None, :, None]
    wk = rng.standard_normal((E, H, D)) * np.array([3.0, 0.2, 1.0, 0.2])[None, :, None]
    x = rng.standard_normal((2, T, E))
    return wq.astype(np.float32), wk.astype(np.float32), x.astype(np.float32)


@pytest.mark.parametrize("alpha", [0.5, 0.25])
def test_qk_clip_separate_kernels_logits_below_tau(alpha):
    wq, wk, x = _qk_problem()
    s = _logits_np(wq, wk, x)
    tau = float(np.sort(s)[1] * 1.01)  # two heads over τ, two under
    params = {"attn": {"query": {"kernel": jnp.asarray(wq)}, "key": {"kernel": jnp.asarray(wk)}}}
    logits = optareg.attention_max_logits(
        jnp.einsum("bte,ehd->bthd", x, wq), jnp.einsum("bte,ehd->bthd", x, wk)
    )
    np.testing.assert_allclose(np.asarray(logits), s, rtol=1e-5)
    tx = optareg.qk_clip(tau, alpha=alpha)
    zeros = jax.tree.map(jnp.zeros_like, params)
    new, state = _one_step(tx, params, zeros, max_logits={"attn": logits})
    nq, nk = (np.asarray(new["attn"][n]["kernel"], np.float64) for n in ("query", "key"))
    after = _logits_np(nq, nk, x)
    over = s > tau
    assert over.sum() == 2
    np.testing.assert_allclose(after[over], tau, rtol=1e-5)  # clipped heads: exactly τ
    assert (after <= tau * (1 + 1e-5)).all()
    np.testing.assert_array_equal(nq[:, ~over], wq[:, ~over])  # untouched: bit-identical
    np.testing.assert_array_equal(nk[:, ~over], wk[:, ~over])
    gamma = tau / s[over]
    _assert_ratio(nq[:, over], wq[:, over], gamma**alpha, 1e-5)
    _assert_ratio(nk[:, over], wk[:, over], gamma ** (1 - alpha), 1e-5)
    m = optareg.metrics(state)
    assert float(m["qk_clip/heads_clipped"]) == 2
    assert float(m["qk_clip/max_logit"]) == pytest.approx(s.max(), rel=1e-5)


@pytest.mark.parametrize("layout", ["flax", "torch"])
def test_qk_clip_fused_qkv_and_flat_heads(layout):
    wq, wk, x = _qk_problem(seed=7)
    wv = np.random.default_rng(8).standard_normal((E, H, D)).astype(np.float32)
    fused = np.concatenate([w.reshape(E, H * D) for w in (wq, wk, wv)], axis=1)  # (E, 3HD)
    leaf = fused if layout == "flax" else fused.T  # torch: (3HD, E)
    s = _logits_np(wq, wk, x)
    tau = float(np.median(s))
    params = {"blk": {"c_attn": {"weight" if layout == "torch" else "kernel": jnp.asarray(leaf)}}}
    tx = optareg.qk_clip(tau, num_heads=H, layout=layout)
    state = tx.init(params)
    grads = jax.tree.map(
        lambda p: jnp.asarray(0.01 * RNG.standard_normal(p.shape), p.dtype), params
    )
    u, state = tx.update(grads, state, params, max_logits=jnp.asarray(s, jnp.float32))
    new = np.asarray(jax.tree.leaves(optax.apply_updates(params, u))[0])
    plain = np.asarray(jax.tree.leaves(optax.apply_updates(params, grads))[0])
    new = new if layout == "flax" else new.T
    plain = plain if layout == "flax" else plain.T
    nq, nk, nv = (new[:, i * H * D : (i + 1) * H * D].reshape(E, H, D) for i in range(3))
    pq, pk, pv = (plain[:, i * H * D : (i + 1) * H * D].reshape(E, H, D) for i in range(3))
    over = s > tau
    np.testing.assert_array_equal(nv, pv)  # values never touched
    np.testing.assert_array_equal(nq[:, ~over], pq[:, ~over])  # untouched heads land on θ + u
    np.testing.assert_array_equal(nk[:, ~over], pk[:, ~over])
    gamma = tau / s[over]
    _assert_ratio(nq[:, over], pq[:, over], np.sqrt(gamma), 1e-4)
    _assert_ratio(nk[:, over], pk[:, over], np.sqrt(gamma), 1e-4)


def test_qk_clip_stacked_layers_and_errors():
    wq, wk, x = _qk_problem(seed=9)
    params = {
        "layers": {
            "query": {"kernel": jnp.stack([wq, wq])},
            "key": {"kernel": jnp.stack([wk, 0.1 * wk])},
        }
    }
    s = np.stack([_logits_np(wq, wk, x), _logits_np(wq, 0.1 * wk, x)])
    tau = float(s[0].max() / 2)
    tx = optareg.qk_clip(tau, stack_axes=1)
    zeros = jax.tree.map(jnp.zeros_like, params)
    new, _ = _one_step(tx, params, zeros, max_logits={"layers": jnp.asarray(s)})
    for layer in range(2):
        after = _logits_np(
            np.asarray(new["layers"]["query"]["kernel"][layer], np.float64),
            np.asarray(new["layers"]["key"]["kernel"][layer], np.float64),
            x,
        )
        assert (after <= tau * (1 + 1e-5)).all()
        np.testing.assert_allclose(after, np.minimum(s[layer], tau), rtol=1e-5)
    state = tx.init(params)
    with pytest.raises(ValueError, match="max_logits"):
        tx.update(zeros, state, params)
    with pytest.raises(ValueError, match="shape"):
        tx.update(zeros, state, params, max_logits={"layers": jnp.ones(H)})
    with pytest.raises(ValueError, match="no entry"):
        tx.update(zeros, state, params, max_logits={"other": jnp.ones((2, H))})
    torch_q = {"q_proj": {"weight": jnp.ones((8, 4))}}  # (H·D, in): 8 rows are not 3 heads
    tx = optareg.qk_clip(1.0, layout="torch")
    with pytest.raises(ValueError, match="cannot find 3 heads"):
        tx.update(torch_q, tx.init(torch_q), torch_q, max_logits=jnp.ones(3))


class _Block(nn.Module):
    @nn.compact
    def __call__(self, x):
        attn = nn.MultiHeadDotProductAttention(
            num_heads=H,
            qkv_features=H * D,
            attention_fn=optareg.max_logit_attention_fn,
            name="attn",
        )
        return attn(x, sow_weights=True)


def test_qk_clip_linen_recipe_end_to_end():
    """max_logit_attention_fn + collect_max_logits: the sown logits are the oracle's, and one
    qk_clip step brings the layer's largest logit to τ."""
    model = _Block()
    x = jnp.asarray(np.random.default_rng(10).standard_normal((2, T, E)), jnp.float32)
    params = model.init(jax.random.PRNGKey(0), x)["params"]
    params = jax.tree.map(lambda p: 4.0 * p, params)  # large logits

    def logits_of(p):
        _, inter = model.apply({"params": p}, x, mutable=["intermediates"])
        return optareg.collect_max_logits(inter)

    a = params["attn"]
    oracle = _logits_np(
        np.asarray(a["query"]["kernel"], np.float64),
        np.asarray(a["key"]["kernel"], np.float64),
        np.asarray(x, np.float64),
        np.asarray(a["query"]["bias"]),
        np.asarray(a["key"]["bias"]),
    )
    before = logits_of(params)
    np.testing.assert_allclose(np.asarray(before["attn"]), oracle, rtol=1e-4)
    tau = float(oracle.max() / 3)
    tx = optareg.chain(optax.sgd(1e-3), optareg.qk_clip(tau))
    state = tx.init(params)
    zeros = jax.tree.map(jnp.zeros_like, params)
    u, state = tx.update(zeros, state, params, max_logits=before)
    after = logits_of(optax.apply_updates(params, u))["attn"]
    assert float(jnp.max(after)) <= tau * (1 + 1e-4)
    with pytest.raises(ValueError, match="misplaced"):
        optareg.chain(optareg.qk_clip(tau), optax.adamw(1e-3))


# --------------------------------------------------------------------------------------------
# chained after muon (its non-matrix leaves go to adam) and after adamw
# --------------------------------------------------------------------------------------------


def _only(name):
    """A mask selecting the kernel ``name`` of the chained test's params."""
    return lambda params: {k: k == name for k in params}


@pytest.mark.parametrize("base", ["muon", "adamw"])
def test_chained_after_muon_and_adamw(base):
    """Each method on its own kernel (masks), all in one chain after the optimizer: the vectors
    (muon routes them to adam) pass through as the optimizer made them, the hammer and the soft
    cap hold the bound, spectral weight decay shrinks the top singular value."""
    rng = np.random.default_rng(11)
    start = {"soft": [0.9, 0.5, 0.3], "hammer": [0.9, 0.5, 0.3], "swd": [3.0, 0.5, 0.3]}
    params = {
        k: jnp.asarray(_with_spectrum(16, 8, v, seed=i), jnp.float32)
        for i, (k, v) in enumerate(start.items())
    }
    params["bias"] = jnp.asarray(rng.standard_normal(8), jnp.float32)
    opt = optax.contrib.muon(0.02) if base == "muon" else optax.adamw(0.02)
    tx = optareg.chain(
        opt,
        optareg.spectral_clip(1.0, method="soft_cap", mask=_only("soft")),
        optareg.spectral_hammer(1.0, num_iters=2, mask=_only("hammer")),
        optareg.spectral_weight_decay(0.1, learning_rate=0.5, mask=_only("swd")),
    )
    state, ref_state = tx.init(params), opt.init(params)
    step, ref = jax.jit(tx.update), jax.jit(opt.update)
    for _ in range(4):
        g = jax.tree.map(lambda p: jnp.asarray(rng.standard_normal(p.shape), p.dtype), params)
        u, state = step(g, state, params)
        ru, ref_state = ref(g, ref_state, params)
        np.testing.assert_allclose(u["bias"], ru["bias"], rtol=1e-6)
        params = optax.apply_updates(params, u)
        assert all(np.isfinite(np.asarray(v)).all() for v in params.values())
    assert _svals(params["soft"])[0] <= 1.0 + 1e-5
    assert _svals(params["hammer"])[0] <= 1.0 + 1e-3  # power iterate: not a certificate
    assert _svals(params["swd"])[0] < 3.0 * 0.95**3  # (1 − λη) = 0.95 per step, plus the steps
