"""Weight decay on bfloat16 parameters: lost in plain bf16, restored by low_precision_updates.

Data: scikit-learn's bundled 8×8 digits (1797 images, 10 classes), pixels scaled to [0, 1], a
fixed 2/3 – 1/3 train/validation split. Model: an MLP 64 → 128 → 128 → 10 (ReLU), trained
full-batch with ``optax.adamw`` (decoupled decay λ, no decay on biases) for the same number of
steps in four ways:

* ``float32``:           everything in float32 (the reference);
* ``bf16``:              parameters, activations, gradients and Adam moments all in bfloat16 —
  the decay step ``η·λ·θ`` is far below half an ulp of θ and rounds away;
* ``bf16 + kahan``:      the same, with ``optareg.low_precision_updates("kahan")`` last;
* ``bf16 + stochastic``: the same, with ``optareg.low_precision_updates("stochastic")`` last.

Two ``optareg.track`` instances watch the step: ``requested`` just before
``low_precision_updates`` (what the optimizer asks for) and ``applied`` last (what lands).
``lost_update_fraction`` of the requested step is the fraction of its nonzero entries that plain
bf16 rounding would drop; of the applied step it is 0 by construction with
``low_precision_updates`` (every entry of ``u'`` that is nonzero lands exactly).

Prints the final training loss, validation accuracy and parameter norm per run, and saves
``low_precision.png`` in ``--out`` (default ``examples/out``): ‖θ‖, the training loss and the requested step's lost
fraction over the steps.

Run: ``python examples/low_precision.py`` (about 85 s of CPU time on 2 cores, half of it the four
compilations).
"""

from __future__ import annotations

import time

import _cli
import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn.datasets import load_digits

import optareg

FIG = "low_precision.png"  # written to --out
RUNS = {
    "float32": "float32",
    "bf16": "bf16",
    "kahan": "bf16 + kahan",
    "stochastic": "bf16 + stochastic",
}


def load_data(seed=0):
    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32)
    perm = np.random.default_rng(seed).permutation(len(X))
    n_train = 2 * len(X) // 3
    tr, va = perm[:n_train], perm[n_train:]
    return (jnp.asarray(X[tr]), jnp.asarray(y[tr])), (jnp.asarray(X[va]), jnp.asarray(y[va]))


def init_mlp(width, seed=0):
    rng = np.random.default_rng(seed)
    dims = (64, width, width, 10)
    return [
        {
            "kernel": jnp.asarray(rng.normal(size=(a, b)) * np.sqrt(2.0 / a), jnp.float32),
            "bias": jnp.zeros(b, jnp.float32),
        }
        for a, b in zip(dims[:-1], dims[1:], strict=True)
    ]


def logits_fn(params, x):
    h = x.astype(params[0]["kernel"].dtype)  # bf16 params: a bf16 forward pass
    for layer in params[:-1]:
        h = jax.nn.relu(h @ layer["kernel"] + layer["bias"])
    return (h @ params[-1]["kernel"] + params[-1]["bias"]).astype(jnp.float32)


def loss_fn(params, x, y):
    return optax.softmax_cross_entropy_with_integer_labels(logits_fn(params, x), y).mean()


def param_norm(params):
    return jnp.sqrt(
        sum(jnp.sum(jnp.square(p.astype(jnp.float32))) for p in jax.tree.leaves(params))
    )


def make_tx(run, lr, weight_decay):
    adamw = optax.adamw(lr, weight_decay=weight_decay, mask=optareg.masks.decay_mask)
    final = []
    if run.startswith("bf16 + "):
        final = [optareg.low_precision_updates(run.split(" + ")[1], seed=0)]
    return optareg.chain(
        adamw, optareg.track(name="requested"), *final, optareg.track(name="applied")
    )


def train(run, params, data, steps, lr, weight_decay):
    """Full-batch training under ``lax.scan``; returns final params and per-step histories."""
    x, y = data
    tx = make_tx(run, lr, weight_decay)

    def step(carry, _):
        p, s = carry
        loss, g = jax.value_and_grad(loss_fn)(p, x, y)
        u, s = tx.update(g, s, p)
        p = optax.apply_updates(p, u)
        m = optareg.metrics(s)
        return (p, s), (loss, param_norm(p), m["requested/lost_update_fraction"])

    run_fn = jax.jit(lambda p: jax.lax.scan(step, (p, tx.init(p)), None, length=steps))
    (p, s), hist = run_fn(params)
    return p, optareg.metrics(s), [np.asarray(h) for h in hist]


def accuracy(params, data):
    x, y = data
    return float(jnp.mean(jnp.argmax(logits_fn(params, x), -1) == y))


def main(argv=None):
    ap = _cli.parser(__doc__)
    ap.add_argument("--steps", type=_cli.positive_int, default=1000, help="training steps per run")
    ap.add_argument("--width", type=_cli.positive_int, default=128, help="hidden width of the MLP")
    ap.add_argument("--lr", type=_cli.positive_float, default=1e-3, help="Adam learning rate η")
    ap.add_argument(
        "--weight-decay",
        type=_cli.nonnegative_float,
        default=1.0,
        help="adamw's λ (decay η·λ/step)",
    )
    ap.add_argument("--runs", default=",".join(RUNS), help=f"comma list of {', '.join(RUNS)}")
    ap.add_argument("--no-plot", action="store_true", help="do not save the figure")
    _cli.add_out(ap)
    args = ap.parse_args(argv)
    names = [k.strip() for k in args.runs.split(",") if k.strip()]
    unknown = [k for k in names if k not in RUNS]
    if unknown or not names:
        ap.error(f"--runs takes a comma list of {', '.join(RUNS)}; got {args.runs!r}")
    runs = [RUNS[k] for k in names]
    t0 = time.perf_counter()

    train_data, val_data = load_data()
    params32 = init_mlp(args.width)
    rows, hists = {}, {}
    for run in runs:
        dtype = jnp.float32 if run == "float32" else jnp.bfloat16
        params = jax.tree.map(lambda p, d=dtype: p.astype(d), params32)
        p, m, hist = train(run, params, train_data, args.steps, args.lr, args.weight_decay)
        hists[run] = hist
        rows[run] = {
            "loss": float(hist[0][-1]),
            "val_acc": accuracy(p, val_data),
            "param_norm": float(param_norm(p)),
            "requested_lost": float(np.mean(hist[2])),
            "applied_lost": float(m["applied/lost_update_fraction"]),
        }

    print(
        f"digits MLP 64-{args.width}-{args.width}-10, full-batch adamw η={args.lr}, "
        f"λ={args.weight_decay} (decay {args.lr * args.weight_decay:.0e}·θ per step), "
        f"{args.steps} steps"
    )
    header = f"{'run':<19}{'train loss':>11}{'val acc':>9}{'‖θ‖':>8}{'lost (req.)':>13}{'lost (app.)':>13}"
    print(header)
    for run, r in rows.items():
        print(
            f"{run:<19}{r['loss']:>11.4f}{r['val_acc']:>9.4f}{r['param_norm']:>8.3f}"
            f"{r['requested_lost']:>13.3f}{r['applied_lost']:>13.3f}"
        )
    print(
        "lost (req.): mean over steps of requested/lost_update_fraction, the share of the "
        "step's nonzero entries that plain rounding to the parameters' dtype drops; "
        "lost (app.): applied/lost_update_fraction at the last step."
    )

    if not args.no_plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 3, figsize=(14, 4))
        styles = {"float32": "k-", "bf16": "r-", "bf16 + kahan": "b--", "bf16 + stochastic": "g:"}
        for run, (loss, norm, lost) in hists.items():
            axes[0].plot(norm, styles[run], label=run)
            axes[1].semilogy(loss, styles[run], label=run)
            axes[2].plot(lost, styles[run], label=run)
        axes[0].set(xlabel="step", ylabel="‖θ‖", title="parameter norm (decay at work)")
        axes[1].set(xlabel="step", ylabel="training loss", title="training loss")
        axes[2].set(
            xlabel="step",
            ylabel="requested/lost_update_fraction",
            title="share of the step plain rounding drops",
        )
        for ax in axes:
            ax.legend()
        fig.tight_layout()
        path = _cli.figure_path(args.out, FIG)
        fig.savefig(path, dpi=110)
        print(f"\nsaved {path}")
    print(f"total time {time.perf_counter() - t0:.1f} s")
    return rows


if __name__ == "__main__":
    main()
