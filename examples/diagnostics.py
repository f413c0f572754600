"""Make each regularizer visible: the metrics `optareg.track` records, raw beside smoothed.

Data: scikit-learn's bundled digits (8x8 images, 10 classes), 80/20 stratified split. Model: a
two-layer MLP (plain JAX pytree). The same Adam optimizer is trained in five settings:

* ``adam``: no regularization;
* ``+ weight decay``: ``optareg.add_decayed_weights(λ, mask=decay_mask)`` before the learning
  rate (AdamW in the PyTorch convention) — the parameter norm stops growing;
* ``+ prox_l1``: an L1 proximal step after the update — exact zeros, the sparsity climbs;
* ``+ spectral_clip``: every weight matrix kept at spectral norm ≤ 2 — the norm is capped;
* ``lr x10``: no regularization but a learning rate ten times larger — update/parameter ratio
  and gradient-norm spikes.

Each setting runs ``optareg.chain(track("raw"), <optimizer>, track("step"))``; per step the script
reads ``optareg.metrics`` (train loss, ``raw/grad_norm``, ``step/param_norm``,
``step/update_ratio``, ``step/sparsity``) inside the jitted epoch (``lax.scan``) and saves
``diagnostics.png`` in ``--out`` (default ``examples/out``): one row per metric, the raw per-step curve on the left and
its exponential moving average on the right. Smoothing is what most dashboards show, and it hides
exactly the spikes that announce trouble: compare the ``lr x10`` curves in both columns.

Run: ``python examples/diagnostics.py`` (about 15 s on 2 CPU cores; ``--epochs``, ``--hidden``,
``--batch-size``, ``--smoothing`` to change the setting).
"""

from __future__ import annotations

import time

import _cli
import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import optareg

FIG = "diagnostics.png"  # written to --out
METRICS = [
    ("loss", "train loss (mini-batch)", "log"),
    ("raw/grad_norm", "gradient norm ‖g‖", "log"),
    ("step/param_norm", "parameter norm ‖θ‖", "linear"),
    ("step/update_ratio", "update ratio ‖Δθ‖/‖θ‖", "log"),
    ("step/sparsity", "fraction of exact zeros in θ", "linear"),
]


def load_data(seed: int = 0):
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    x_tr, x_va, y_tr, y_va = train_test_split(x, y, test_size=0.2, random_state=seed, stratify=y)
    return x_tr, x_va, y_tr.astype(np.int32), y_va.astype(np.int32)


def init_mlp(key, d_in: int, hidden: int, d_out: int):
    k1, k2 = jax.random.split(key)
    return {
        "dense1": {
            "kernel": jax.random.normal(k1, (d_in, hidden)) / np.sqrt(d_in),
            "bias": jnp.zeros(hidden),
        },
        "dense2": {
            "kernel": jax.random.normal(k2, (hidden, d_out)) / np.sqrt(hidden),
            "bias": jnp.zeros(d_out),
        },
    }


def mlp(params, x):
    h = jax.nn.relu(x @ params["dense1"]["kernel"] + params["dense1"]["bias"])
    return h @ params["dense2"]["kernel"] + params["dense2"]["bias"]


def loss_fn(params, x, y):
    return optax.softmax_cross_entropy_with_integer_labels(mlp(params, x), y).mean()


def settings(lr: float) -> dict[str, optax.GradientTransformation]:
    """The optimizers compared, each wrapped between a raw and a final-step `track`."""

    def adam(lr, *post):
        return optareg.chain(
            optareg.track(name="raw"),
            optax.adam(lr),
            *post,
            optareg.track(name="step"),
        )

    return {
        "adam": adam(lr),
        "+ weight decay": optareg.chain(
            optareg.track(name="raw"),
            optax.scale_by_adam(),
            optareg.add_decayed_weights(0.5, mask=optareg.masks.decay_mask),
            optax.scale_by_learning_rate(lr),
            optareg.track(name="step"),
        ),
        "+ prox_l1": adam(lr, optareg.prox_l1(3e-2, lr, mask=optareg.masks.decay_mask)),
        "+ spectral_clip": adam(lr, optareg.spectral_clip(2.0, method="power")),
        "lr x10": adam(10 * lr),
    }


def train(tx, data, *, epochs: int, batch_size: int, hidden: int, seed: int):
    """Train and return per-step metrics (dict of 1-D arrays) and the final validation accuracy."""
    x_tr, x_va, y_tr, y_va = data
    params = init_mlp(jax.random.key(seed), x_tr.shape[1], hidden, 10)
    state = tx.init(params)
    n_batches = len(x_tr) // batch_size

    @jax.jit
    def epoch(params, state, xb, yb):
        def step(carry, batch):
            params, state = carry
            loss, grads = jax.value_and_grad(loss_fn)(params, *batch)
            updates, state = tx.update(grads, state, params)
            params = optax.apply_updates(params, updates)
            return (params, state), {"loss": loss, **optareg.metrics(state)}

        (params, state), trace = jax.lax.scan(step, (params, state), (xb, yb))
        return params, state, trace

    rng = np.random.default_rng(seed)
    traces = []
    for _ in range(epochs):
        perm = rng.permutation(len(x_tr))[: n_batches * batch_size].reshape(n_batches, batch_size)
        params, state, trace = epoch(params, state, x_tr[perm], y_tr[perm])
        traces.append(jax.device_get(trace))
    history = {k: np.concatenate([t[k] for t in traces]) for k in traces[0]}
    acc = float(jnp.mean(jnp.argmax(mlp(params, x_va), -1) == y_va))
    return history, acc


def ema(x: np.ndarray, beta: float) -> np.ndarray:
    """Debiased exponential moving average (what most dashboards call "smoothing")."""
    out, m = np.empty(len(x)), 0.0
    for i, v in enumerate(x):
        m = beta * m + (1 - beta) * v
        out[i] = m / (1 - beta ** (i + 1))
    return out


def plot(histories: dict[str, dict[str, np.ndarray]], beta: float, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(METRICS), 2, figsize=(11, 2.4 * len(METRICS)), sharex=True)
    for row, (key, label, scale) in enumerate(METRICS):
        for col, smooth in enumerate([False, True]):
            ax = axes[row, col]
            for name, h in histories.items():
                y = np.asarray(h[key], np.float64)
                ax.plot(ema(y, beta) if smooth else y, lw=0.8 if not smooth else 1.4, label=name)
            ax.set_yscale(scale)
            ax.set_ylabel(label if col == 0 else "")
            ax.grid(alpha=0.3)
            if row == 0:
                ax.set_title("raw (per step)" if not smooth else f"smoothed (EMA β={beta})")
    for ax in axes[-1]:
        ax.set_xlabel("step")
    fig.suptitle("optareg.track metrics read with optareg.metrics: raw beside smoothed", y=0.995)
    # one legend for all panels, in a row of its own under the title: inside a panel it covers
    # curves (every panel has data in every corner at some setting)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=len(labels), bbox_to_anchor=(0.5, 0.97))
    fig.tight_layout(rect=(0, 0, 1, 0.945))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    parser = _cli.parser(__doc__)
    parser.add_argument("--epochs", type=_cli.positive_int, default=10, help="training epochs")
    parser.add_argument("--hidden", type=_cli.positive_int, default=64, help="hidden units")
    parser.add_argument("--batch-size", type=_cli.positive_int, default=32, help="minibatch size")
    parser.add_argument("--lr", type=_cli.positive_float, default=3e-3, help="Adam learning rate")
    parser.add_argument(
        "--smoothing", type=_cli.decay_rate, default=0.98, help="EMA coefficient β, in [0, 1)"
    )
    parser.add_argument("--seed", type=_cli.nonnegative_int, default=0, help="random seed")
    _cli.add_out(parser)
    args = parser.parse_args(argv)
    t0 = time.perf_counter()

    data = load_data(args.seed)
    if args.batch_size > len(data[0]):
        parser.error(f"argument --batch-size: must be at most {len(data[0])} (the training set)")
    histories, rows = {}, []
    for name, tx in settings(args.lr).items():
        h, acc = train(
            tx,
            data,
            epochs=args.epochs,
            batch_size=args.batch_size,
            hidden=args.hidden,
            seed=args.seed,
        )
        histories[name] = h
        # skip the first epoch (Adam's warm-up transient), when there is more than one
        warm = len(h["loss"]) // args.epochs if args.epochs > 1 else 0
        g, g_ema = h["raw/grad_norm"], ema(h["raw/grad_norm"], args.smoothing)
        rows.append(
            (
                name,
                acc,
                h["step/param_norm"][-1],
                np.median(h["step/update_ratio"]),
                g[warm:].max() / np.median(g[warm:]),
                g_ema[warm:].max() / np.median(g[warm:]),
                h["step/sparsity"][-1],
                int(h["raw/nonfinite"].sum()),
            )
        )

    print("‖g‖ spike: max of the gradient norm after the first epoch / its median, raw and EMA")
    header = (
        f"{'setting':<16} {'val acc':>7} {'‖θ‖':>7} {'‖Δθ‖/‖θ‖ med':>13} {'‖g‖ spike':>9} "
        f"{'EMA spike':>9} {'zeros':>6} {'non-finite':>10}"
    )
    print(header)
    print("-" * len(header))
    for name, acc, pn, med, spike, spike_ema, sp, nf in rows:
        print(
            f"{name:<16} {acc:7.4f} {pn:7.2f} {med:13.2e} {spike:9.1f} {spike_ema:9.1f} "
            f"{sp:6.3f} {nf:10d}"
        )
    path = _cli.figure_path(args.out, FIG)
    plot(histories, args.smoothing, path)
    print(f"saved {path}; done in {time.perf_counter() - t0:.1f} s")
    return rows


if __name__ == "__main__":
    main()
