"""SAM finds flatter minima: the same Flax NNX MLP on digits trained with SGD, SAM and ASAM.

Data: scikit-learn's bundled 8×8 digits (1797 images, 10 classes), pixels scaled to [0, 1], a fixed
2/3 – 1/3 train/test split. Model: a Flax NNX MLP 64 → 128 → 128 → 10 (ReLU). Each run starts from
the same initialization and sees the same minibatches; only the gradient transform in front of
the optimizer changes:

* ``SGD``:  ``optax.sgd(η, momentum=0.9)``
* ``SAM``:  ``optax.chain(optareg.sam_perturb(ρ), optax.sgd(η, momentum=0.9))``
* ``ASAM``: ``optax.chain(optareg.sam_perturb(ρ_a, adaptive=True), optax.sgd(η, momentum=0.9))``

The training step is the same for all three::

    grads = jax.grad(loss)(params, x, y)
    updates, opt_state = tx.update(grads, opt_state, params,
                                   grad_fn=lambda p: jax.grad(loss)(p, x, y))

For each run it prints the test accuracy, the final training loss, the top eigenvalue of the
Hessian of the full training loss at the final weights (power iteration on Hessian-vector
products, ``jax.jvp`` of ``jax.grad``), and the measured wall time per step relative to SGD (SAM
costs two gradient evaluations per step, so about 2×). SAM's top eigenvalue comes out lower, and
not because it fits the training set better: the cross-entropy Hessian shrinks as the training
loss goes to zero, so the script also prints the training loss, which is at least SGD's for SAM
with the defaults (measured on 2 CPU cores: SGD λ_max ≈ 1.16 at train loss 0.0032, SAM
λ_max ≈ 0.13 at 0.0047, about 9× lower; ASAM λ_max ≈ 0.20 at 0.0025, about 6× lower).

Saves ``examples/figures/sam_flatness.png``: training-loss curves and the loss along the top
Hessian eigenvector around each solution.

Run: ``python examples/sam_flatness.py`` (about 20 s of CPU time on 2 cores).
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.flatten_util import ravel_pytree
from sklearn.datasets import load_digits

import optareg

HERE = os.path.dirname(os.path.abspath(__file__))
FIG = os.path.join(HERE, "figures", "sam_flatness.png")


class MLP(nnx.Module):
    def __init__(self, width: int, *, rngs: nnx.Rngs):
        self.l1 = nnx.Linear(64, width, rngs=rngs)
        self.l2 = nnx.Linear(width, width, rngs=rngs)
        self.l3 = nnx.Linear(width, 10, rngs=rngs)

    def __call__(self, x):
        return self.l3(nnx.relu(self.l2(nnx.relu(self.l1(x)))))


def load_data(seed=0):
    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32)
    perm = np.random.default_rng(seed).permutation(len(y))
    n_train = 2 * len(y) // 3
    tr, te = perm[:n_train], perm[n_train:]
    return X[tr], y[tr], X[te], y[te]


def make_loss(graphdef):
    def loss(params, x, y):
        logits = nnx.merge(graphdef, params)(x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    def accuracy(params, x, y):
        return jnp.mean(jnp.argmax(nnx.merge(graphdef, params)(x), -1) == y)

    return loss, accuracy


def top_hessian_eigenvalue(loss_fn, params, iters=100, seed=0):
    """Largest-magnitude Hessian eigenvalue by power iteration on HVPs (jvp of grad)."""
    flat, unravel = ravel_pytree(params)
    grad_flat = lambda f: ravel_pytree(jax.grad(loss_fn)(unravel(f)))[0]  # noqa: E731
    hvp = lambda v: jax.jvp(grad_flat, (flat,), (v,))[1]  # noqa: E731

    def body(_, carry):
        v, _ = carry
        hv = hvp(v)
        lam = jnp.vdot(v, hv)
        return hv / jnp.linalg.norm(hv), lam

    v0 = jax.random.normal(jax.random.PRNGKey(seed), flat.shape)
    v, lam = jax.lax.fori_loop(0, iters, body, (v0 / jnp.linalg.norm(v0), 0.0))
    return lam, unravel(v)


def train(name, tx, params0, loss, batches, chunk, uses_grad_fn):
    """Run all minibatch steps (``lax.scan`` in chunks); return params, losses, s/step."""
    grad = jax.grad(loss)

    def step(carry, batch):
        params, state = carry
        x, y = batch
        extra = {"grad_fn": lambda p: grad(p, x, y)} if uses_grad_fn else {}
        g = grad(params, x, y)
        updates, state = tx.update(g, state, params, **extra)
        return (optax.apply_updates(params, updates), state), loss(params, x, y)

    run_chunk = jax.jit(lambda carry, bs: jax.lax.scan(step, carry, bs))
    xs, ys = batches
    carry = (params0, tx.init(params0))
    losses, t_steady, n_steady = [], 0.0, 0
    for i, start in enumerate(range(0, len(xs), chunk)):
        bs = (xs[start : start + chunk], ys[start : start + chunk])
        t0 = time.perf_counter()
        carry, ls = run_chunk(carry, bs)
        ls = np.asarray(ls)  # wait for the result
        if i > 0:  # the first chunk includes compilation
            t_steady += time.perf_counter() - t0
            n_steady += len(ls)
        losses.append(ls)
    return carry[0], np.concatenate(losses), t_steady / max(n_steady, 1)


def loss_along(loss_fn, params, direction, ts):
    return [float(loss_fn(jax.tree.map(lambda p, d: p + t * d, params, direction))) for t in ts]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=800, help="minibatch steps per run")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--rho", type=float, default=0.3, help="SAM radius")
    ap.add_argument("--asam-rho", type=float, default=1.0, help="ASAM radius")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-plot", action="store_true")
    args = ap.parse_args(argv)

    Xtr, ytr, Xte, yte = load_data(args.seed)
    model = MLP(args.width, rngs=nnx.Rngs(args.seed))
    graphdef, params0 = nnx.split(model)
    loss, accuracy = make_loss(graphdef)

    rng = np.random.default_rng(args.seed + 1)
    idx = np.stack([rng.choice(len(ytr), args.batch, replace=False) for _ in range(args.steps)])
    batches = (jnp.asarray(Xtr[idx]), jnp.asarray(ytr[idx]))
    train_loss = jax.jit(lambda p: loss(p, jnp.asarray(Xtr), jnp.asarray(ytr)))
    full_loss = lambda p: loss(p, jnp.asarray(Xtr), jnp.asarray(ytr))  # noqa: E731
    top_eig = jax.jit(lambda p: top_hessian_eigenvalue(full_loss, p))

    base = lambda: optax.sgd(args.lr, momentum=0.9)  # noqa: E731
    runs = {
        "SGD": (base(), False),
        "SAM": (optax.chain(optareg.sam_perturb(args.rho), base()), True),
        "ASAM": (optax.chain(optareg.sam_perturb(args.asam_rho, adaptive=True), base()), True),
    }
    results = {}
    for name, (tx, uses) in runs.items():
        params, losses, sec = train(name, tx, params0, loss, batches, 200, uses)
        lam, vec = top_eig(params)
        results[name] = dict(
            params=params,
            losses=losses,
            sec=sec,
            lam=float(lam),
            vec=vec,
            acc=float(accuracy(params, jnp.asarray(Xte), jnp.asarray(yte))),
            train_loss=float(train_loss(params)),
        )

    sgd = results["SGD"]
    print(
        f"digits: {len(ytr)} train / {len(yte)} test, MLP 64-{args.width}-{args.width}-10, "
        f"{args.steps} steps of batch {args.batch}, sgd(lr={args.lr}, momentum=0.9)"
    )
    print(
        f"{'method':<6} {'test acc':>9} {'train loss':>11} {'top Hessian eig':>16} "
        f"{'vs SGD':>8} {'cost/step vs SGD':>17}"
    )
    for name, r in results.items():
        print(
            f"{name:<6} {r['acc']:>9.4f} {r['train_loss']:>11.4f} {r['lam']:>16.3f} "
            f"{r['lam'] / sgd['lam']:>7.2f}x {r['sec'] / sgd['sec']:>16.2f}x"
        )
    for name in ("SAM", "ASAM"):
        r = results[name]
        drop = 100.0 * (1.0 - r["lam"] / sgd["lam"])
        print(
            f"{name} lowers the top Hessian eigenvalue by {drop:.0f}% relative to SGD "
            f"(at a training loss {r['train_loss'] / sgd['train_loss']:.2f}x SGD's)."
        )

    if not args.no_plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8))
        k = 25
        for name, r in results.items():
            smooth = np.convolve(r["losses"], np.ones(k) / k, mode="valid")
            a1.plot(smooth, label=name)
            ts = np.linspace(-1.0, 1.0, 41)
            a2.plot(
                ts,
                loss_along(train_loss, r["params"], r["vec"], ts),
                label=f"{name} (λ_max={r['lam']:.1f})",
            )
        a1.set(
            xlabel="step",
            ylabel="minibatch loss (moving avg.)",
            yscale="log",
            title="training loss",
        )
        a2.set(
            xlabel="t (unit top eigenvector)",
            ylabel="train loss",
            title="loss along the top Hessian eigenvector",
        )
        a1.legend()
        a2.legend()
        fig.tight_layout()
        os.makedirs(os.path.dirname(FIG), exist_ok=True)
        fig.savefig(FIG, dpi=110)
        print(f"saved {os.path.relpath(FIG)}")
    return results


if __name__ == "__main__":
    main()
