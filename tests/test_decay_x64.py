"""Schedule helpers in float64 under ``jax_enable_x64`` (issue 28)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

import optareg


def test_paper_convention_is_float64_under_x64():
    """``"paper"`` with ``λ_paper = λ·η_max`` is ``"pytorch"``'s ``λ·η_t`` to float64 rounding
    (η_t/η_max in float32 was 1.5e-8 off); ``"adamc"`` is ``λ·η_t²/η_max`` in float64."""
    lam, peak = 0.1, 3e-3
    lr = optax.warmup_cosine_decay_schedule(0.0, peak, 7, 50)
    with jax.enable_x64(True):
        steps = jnp.arange(50, dtype=jnp.int32)
        eta = np.asarray(jax.vmap(lr)(steps), np.float64)  # the float32 schedule, exactly
        peak32 = float(np.float32(peak))  # η_max as found: the float32 schedule's maximum
        paper = jax.vmap(optareg.decay_schedule(lam * peak32, lr, "paper"))(steps)
        given = optareg.decay_schedule(lam * peak, lr, "paper", peak_value=peak)
        pytorch = jax.vmap(optareg.decay_schedule(lam, lr, "pytorch"))(steps)
        adamc = jax.vmap(optareg.decay_schedule(lam, lr, "adamc"))(steps)
        assert paper.dtype == pytorch.dtype == adamc.dtype == jnp.float64
        np.testing.assert_allclose(paper, pytorch, rtol=4e-16, atol=0)
        np.testing.assert_allclose(jax.vmap(given)(steps), pytorch, rtol=4e-16, atol=0)
        np.testing.assert_allclose(pytorch, lam * eta, rtol=4e-16, atol=0)
        np.testing.assert_allclose(adamc, lam * eta * eta / peak32, rtol=4e-16, atol=0)
