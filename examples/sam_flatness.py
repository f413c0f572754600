"""SAM finds flatter minima, seen along training: the top Hessian eigenvalue under SGD and SAM.

Data: scikit-learn's bundled 8×8 digits (1797 images, 10 classes), pixels scaled to [0, 1], a fixed
2/3 – 1/3 train/test split. Model: a Flax NNX MLP 64 → 128 → 128 → 10 (ReLU). Both runs start
from the same initialization and see the same minibatches; only the transforms in front of the
optimizer change, and both carry the same pass-through sharpness monitor:

* ``SGD``: ``optareg.chain(monitor, optax.sgd(η))``
* ``SAM``: ``optareg.chain(monitor, optareg.sam_perturb(ρ), optax.sgd(η))``

with ``monitor = optareg.sharpness_monitor(num_iters=8, metrics_every=20, learning_rate=η)``:
every 20 steps it estimates ``λ_max`` of the Hessian of the minibatch loss at the current
weights from 8 Hessian-vector products, warm-started from its previous eigenvector, and records
``edge_of_stability = λ_max·η/2`` (the monitor and SAM both read ``grad_fn``). The step is the
same for both runs::

    grads = jax.grad(loss)(params, x, y)
    updates, opt_state = tx.update(grads, opt_state, params,
                                   grad_fn=lambda p: jax.grad(loss)(p, x, y))

Gradient descent with step ``η`` is stable along a direction of curvature ``λ`` only if
``λ < 2/η``. Under SGD the minibatch sharpness climbs to that limit and hovers around it (the
edge of stability, Cohen et al. 2021; ``edge_of_stability ≈ 1``); SAM keeps it several times
lower. The script prints a table: test accuracy, the final training loss, the final top
eigenvalue of the *full* training loss (``optareg.hessian_top_eigenvalue``, 50 HVPs) and the
mean and maximum of the monitored ``λ_max·η/2``. Measured on 2 CPU cores with the defaults: SGD
λ_max(full) ≈ 3.1, edge_of_stability ≈ 0.65 on average over the last quarter (up to 1.4); SAM
λ_max(full) ≈ 0.55 (5.5× lower), edge_of_stability ≈ 0.15 (up to 0.53), at a training loss 1.2×
SGD's and a higher test accuracy (0.988 vs 0.978).

Saves ``sam_flatness.png`` in ``--out``: the monitored λ_max along training for both runs
with ``2/η`` drawn in, and the training loss.

Run: ``python examples/sam_flatness.py`` (about 45 s of CPU time, compilation included).
"""

from __future__ import annotations

import _cli
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from sklearn.datasets import load_digits

import optareg

FIG = "sam_flatness.png"  # written to --out
TOP = "sharpness_monitor/top_eigenvalue"
EOS = "sharpness_monitor/edge_of_stability"


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


def train(tx, params0, loss, batches):
    """All minibatch steps in one ``lax.scan``; returns the params and per-step logs."""
    grad = jax.grad(loss)

    def step(carry, batch):
        params, state = carry
        x, y = batch
        g = grad(params, x, y)
        updates, state = tx.update(g, state, params, grad_fn=lambda p: grad(p, x, y))
        m = optareg.metrics(state)
        logs = (loss(params, x, y), m[TOP], m[EOS])
        return (optax.apply_updates(params, updates), state), logs

    run = jax.jit(lambda carry, bs: jax.lax.scan(step, carry, bs))
    (params, _), logs = run((params0, tx.init(params0)), batches)
    return params, [np.asarray(v) for v in logs]


def main(argv=None):
    ap = _cli.parser(__doc__)
    ap.add_argument("--steps", type=_cli.positive_int, default=800, help="minibatch steps per run")
    ap.add_argument("--batch", type=_cli.positive_int, default=64, help="minibatch size")
    ap.add_argument("--width", type=_cli.positive_int, default=128, help="hidden units per layer")
    ap.add_argument(
        "--lr", type=_cli.positive_float, default=0.2, help="SGD step size η (no momentum)"
    )
    ap.add_argument("--rho", type=_cli.positive_float, default=0.3, help="SAM radius ρ")
    ap.add_argument(
        "--every", type=_cli.positive_int, default=20, help="measure λ_max every k steps"
    )
    ap.add_argument("--iters", type=_cli.positive_int, default=8, help="HVPs per measurement")
    ap.add_argument("--seed", type=_cli.nonnegative_int, default=0, help="random seed")
    ap.add_argument("--no-plot", action="store_true", help="do not save the figure")
    _cli.add_out(ap)
    args = ap.parse_args(argv)

    Xtr, ytr, Xte, yte = load_data(args.seed)
    if args.batch > len(ytr):  # minibatches are drawn without replacement
        ap.error(f"argument --batch: must be at most {len(ytr)} (the training images)")
    graphdef, params0 = nnx.split(MLP(args.width, rngs=nnx.Rngs(args.seed)))
    loss, accuracy = make_loss(graphdef)
    rng = np.random.default_rng(args.seed + 1)
    idx = np.stack([rng.choice(len(ytr), args.batch, replace=False) for _ in range(args.steps)])
    batches = (jnp.asarray(Xtr[idx]), jnp.asarray(ytr[idx]))
    xtr, ytr_j = jnp.asarray(Xtr), jnp.asarray(ytr)
    full_grad = jax.jit(jax.grad(lambda p: loss(p, xtr, ytr_j)))

    def monitor():
        return optareg.sharpness_monitor(
            num_iters=args.iters, metrics_every=args.every, learning_rate=args.lr
        )

    runs = {
        "SGD": optareg.chain(monitor(), optax.sgd(args.lr)),
        "SAM": optareg.chain(monitor(), optareg.sam_perturb(args.rho), optax.sgd(args.lr)),
    }
    results = {}
    for name, tx in runs.items():
        params, (losses, tops, eos) = train(tx, params0, loss, batches)
        measured = np.arange(0, args.steps, args.every)
        results[name] = dict(
            losses=losses,
            steps=measured,
            tops=tops[measured],
            eos_last=float(np.mean(eos[measured][-max(1, len(measured) // 4) :])),
            eos_max=float(np.max(eos[measured])),
            lam_full=float(optareg.hessian_top_eigenvalue(full_grad, params, num_iters=50)),
            acc=float(accuracy(params, jnp.asarray(Xte), jnp.asarray(yte))),
            train_loss=float(loss(params, xtr, ytr_j)),
        )

    print(
        f"digits: {len(ytr)} train / {len(yte)} test, MLP 64-{args.width}-{args.width}-10, "
        f"{args.steps} steps of batch {args.batch}, sgd(η={args.lr}), SAM ρ={args.rho}; "
        f"λ_max measured every {args.every} steps ({args.iters} HVPs), 2/η = {2 / args.lr:g}"
    )
    header = (
        f"{'method':<6} {'test acc':>9} {'train loss':>11} {'λ_max (full)':>13} "
        f"{'λ_max·η/2 (full)':>17} {'edge_of_stability: last 1/4':>28} {'max':>6}"
    )
    print(header)
    print("-" * len(header))
    for name, r in results.items():
        print(
            f"{name:<6} {r['acc']:>9.4f} {r['train_loss']:>11.4f} {r['lam_full']:>13.3f} "
            f"{r['lam_full'] * args.lr / 2:>17.3f} {r['eos_last']:>28.3f} {r['eos_max']:>6.2f}"
        )
    sgd, sam = results["SGD"], results["SAM"]
    print(
        f"SAM's final λ_max is {sgd['lam_full'] / sam['lam_full']:.1f}x lower than SGD's "
        f"(at a training loss {sam['train_loss'] / sgd['train_loss']:.2f}x SGD's)."
    )

    if not args.no_plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
        for name, r in results.items():
            (line,) = a1.plot(r["steps"], r["tops"], marker="o", ms=3, label=f"{name}")
            a1.axhline(r["lam_full"], color=line.get_color(), ls=":", lw=1)
            k = 25
            a2.plot(np.convolve(r["losses"], np.ones(k) / k, mode="valid"), label=name)
        a1.axhline(2 / args.lr, color="k", ls="--", lw=1.2, label=f"2/η = {2 / args.lr:g}")
        a1.set(
            xlabel="step",
            ylabel="λ_max of the minibatch-loss Hessian",
            title="sharpness_monitor: top Hessian eigenvalue",
        )
        # below the axes: the SGD curve reaches every height of the panel
        a1.legend(
            title="dotted: final full-batch λ_max",
            fontsize=8,
            title_fontsize=8,
            ncol=3,
            loc="upper center",
            bbox_to_anchor=(0.5, -0.14),
        )
        a2.set(
            xlabel="step",
            ylabel="minibatch loss (moving avg.)",
            yscale="log",
            title="training loss",
        )
        a2.legend(loc="upper right")
        fig.tight_layout()
        path = _cli.figure_path(args.out, FIG)
        fig.savefig(path, dpi=110)
        print(f"saved {path}")
    return results


if __name__ == "__main__":
    main()
