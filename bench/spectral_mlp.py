"""The Equinox MLP scenario of the spectral issue, per ``spectral_clip`` method.

An ``eqx.nn.MLP`` 64-128-128-128-10 (ReLU) on scikit-learn digits (pixels / 16, full batch),
``optax.adam(3e-4)`` then ``optareg.spectral_clip(1.0, method=...)``, 400 steps in one jitted
``lax.scan``. After every step every weight matrix's σ_max is measured by a float64 SVD. Printed
per method: the final training loss, σ_max/c − 1 after step 1, its maximum over all steps (and
where), its maximum after step 100 and after step 200, the smallest σ₅/σ₁ over the layers at
the end, and the wall time (compilation included).

Run: ``python -m bench.spectral_mlp [--steps 400] [--methods exact,power,newton_schulz]``.
BLAS runs on one thread (OpenBLAS's spinning threads slow ``eigh`` by 30× on a loaded machine).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax


def run(method: str | None, steps: int = 400, lr: float = 3e-4, seed: int = 0) -> dict:
    """One training run; ``method=None`` is the default ``spectral_clip(1.0)``."""
    import equinox as eqx
    from sklearn.datasets import load_digits

    import optareg

    x, y = load_digits(return_X_y=True)
    x, y = jnp.asarray(x / 16.0, jnp.float32), jnp.asarray(y)
    model = eqx.nn.MLP(64, 10, 128, 3, key=jax.random.key(seed))
    params, static = eqx.partition(model, eqx.is_array)
    kwargs = {} if method is None else {"method": method}
    tx = optareg.chain(optax.adam(lr), optareg.spectral_clip(1.0, **kwargs))

    def loss_fn(p):
        logits = jax.vmap(eqx.combine(p, static))(x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    @jax.jit
    def train(params):
        def step(carry, _):
            params, state = carry
            loss, grads = jax.value_and_grad(loss_fn)(params)
            updates, state = tx.update(grads, state, params)
            params = optax.apply_updates(params, updates)
            return (params, state), (loss, [layer.weight for layer in params.layers])

        return jax.lax.scan(step, (params, tx.init(params)), None, length=steps)[1]

    t0 = time.perf_counter()
    losses, weights = jax.block_until_ready(train(params))
    seconds = time.perf_counter() - t0
    sv = [np.linalg.svd(np.asarray(w, np.float64), compute_uv=False) for w in weights]
    excess = np.max([s[:, 0] for s in sv], axis=0) - 1.0
    return {
        "loss": float(losses[-1]),
        "step1": float(excess[0]),
        "max": float(excess.max()),
        "argmax": int(excess.argmax()) + 1,
        "after100": float(excess[100:].max()) if steps > 100 else float("nan"),
        "after200": float(excess[200:].max()) if steps > 200 else float("nan"),
        "ratio": min(float(s[-1, 4] / s[-1, 0]) for s in sv),
        "seconds": seconds,
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--methods", default="default,exact,power,newton_schulz")
    args = ap.parse_args(argv)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover
        threadpool_limits = None
    print(f"Equinox MLP 64-128-128-128-10, digits, adam(3e-4), {args.steps} steps, c = 1\n")
    print(
        "| method | loss | σ_max/c − 1 step 1 | max (step) | max after 100 | max after 200 "
        "| min σ₅/σ₁ | time |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name in args.methods.split(","):
        method = None if name == "default" else name
        if threadpool_limits is not None:
            with threadpool_limits(1, user_api="blas"):
                r = run(method, args.steps)
        else:  # pragma: no cover
            r = run(method, args.steps)
        print(
            f"| {name} | {r['loss']:.3f} | {r['step1']:+.1e} | {r['max']:+.1e} ({r['argmax']}) "
            f"| {r['after100']:+.1e} | {r['after200']:+.1e} | {r['ratio']:.3f} "
            f"| {r['seconds']:.0f} s |"
        )


if __name__ == "__main__":
    main()
