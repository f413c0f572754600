"""Weight averaging as optimizer state: live weights against their EMA and SWA, over seeds.

Data: scikit-learn's bundled digits (1797 images of 8×8 pixels, 10 classes), pixels scaled to
[0, 1], one fixed stratified split: ``--n-train`` training images with ``--label-noise`` of their
labels replaced by random ones (so the late iterates wander), the rest for validation. Model: an
MLP 64 → ``--hidden`` → ``--hidden`` → 10 (ReLU), trained with AdamW at a constant learning rate,
mini-batches of ``--batch-size``.

One chain keeps both averages beside the optimizer; they are pass-through, so the *live* weights
(the "no averaging" run) are the same numbers in all three columns::

    optareg.chain(optax.adamw(η, weight_decay=λ),
                  optareg.ema_params(timescale=τ_ema),             # β = 1 − 1/τ_ema
                  optareg.swa(start_step=s0, every=steps_per_epoch))  # once per epoch

λ is set by its timescale (``optareg.weight_decay_for_timescale(τ_epoch, η,
steps_per_epoch=...)``, Wang & Aitchison 2025); the script prints that ``τ_epoch`` back with
``optareg.decay_timescale``. The averages are read with ``optareg.averaged_params``. Each seed
(weights and mini-batch order) is a ``lax.scan`` over epochs; the seeds run in one
``jax.jit(jax.vmap(train))`` call.

Printed: validation loss and accuracy of the live, EMA and SWA weights at the end (mean ± std and
min–max over seeds), and the paired difference to the live weights per seed. Saves a figure of
the validation loss and accuracy per epoch to ``--out``.

Run: ``python examples/weight_averaging.py`` (``--seeds``, ``--epochs``, ``--n-train``,
``--hidden``, ``--batch-size``, ``--lr``, ``--label-noise``, ``--decay-epochs``, ``--ema-epochs``,
``--swa-start``, ``--out``).
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import optareg

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "out")
KINDS = ("live", "EMA", "SWA")


def load_data(n_train: int, label_noise: float, seed: int = 0):
    """Train / validation arrays; ``label_noise`` of the training labels are random."""
    x, y = load_digits(return_X_y=True)
    x, y = (x / 16.0).astype(np.float32), y.astype(np.int32)
    x_tr, x_va, y_tr, y_va = train_test_split(
        x, y, train_size=n_train, random_state=seed, stratify=y
    )
    rng = np.random.default_rng(seed)
    noisy = rng.random(n_train) < label_noise
    y_tr = np.where(noisy, rng.integers(0, 10, n_train), y_tr).astype(np.int32)
    return tuple(jnp.asarray(a) for a in (x_tr, y_tr, x_va, y_va))


def init_mlp(key, hidden: int):
    sizes = [(64, hidden), (hidden, hidden), (hidden, 10)]
    keys = jax.random.split(key, len(sizes))
    return [
        {"kernel": jax.random.normal(k, s) * jnp.sqrt(2.0 / s[0]), "bias": jnp.zeros(s[1])}
        for k, s in zip(keys, sizes, strict=True)
    ]


def forward(params, x):
    for layer in params[:-1]:
        x = jax.nn.relu(x @ layer["kernel"] + layer["bias"])
    return x @ params[-1]["kernel"] + params[-1]["bias"]


def loss_and_acc(params, x, y):
    logits = forward(params, x)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    return loss, jnp.mean(jnp.argmax(logits, -1) == y)


def swa_epoch(args) -> int:
    """The (1-based) epoch at whose end SWA takes its first sample."""
    return max(1, round(args.swa_start * args.epochs))


def make_train(args, data):
    """``train(seed) -> {"loss", "acc"}`` of shape (epochs, 3): live, EMA, SWA per epoch."""
    x_tr, y_tr, x_va, y_va = data
    spe = args.n_train // args.batch_size  # steps per epoch (the last partial batch dropped)
    wd = optareg.weight_decay_for_timescale(args.decay_epochs, args.lr, steps_per_epoch=spe)
    tx = optareg.chain(
        optax.adamw(args.lr, weight_decay=wd),
        optareg.ema_params(timescale=args.ema_epochs * spe),
        optareg.swa(start_step=swa_epoch(args) * spe - 1, every=spe),  # at each epoch's end
    )
    grad = jax.grad(lambda p, x, y: loss_and_acc(p, x, y)[0])

    def step(carry, idx):
        params, state = carry
        updates, state = tx.update(grad(params, x_tr[idx], y_tr[idx]), state, params)
        return (optax.apply_updates(params, updates), state), None

    def epoch(carry, key):
        order = jax.random.permutation(key, args.n_train)[: spe * args.batch_size]
        carry, _ = jax.lax.scan(step, carry, order.reshape(spe, args.batch_size))
        params, state = carry
        weights = jax.tree.map(  # live, EMA, SWA stacked: one batched forward pass
            lambda *w: jnp.stack(w),
            params,
            optareg.averaged_params(state, params, name="ema"),
            optareg.averaged_params(state, params, name="swa"),
        )
        loss, acc = jax.vmap(loss_and_acc, in_axes=(0, None, None))(weights, x_va, y_va)
        return carry, {"loss": loss, "acc": acc}

    def train(seed):
        k_init, k_data = jax.random.split(jax.random.key(seed))
        params = init_mlp(k_init, args.hidden)
        keys = jax.random.split(k_data, args.epochs)
        _, history = jax.lax.scan(epoch, (params, tx.init(params)), keys)
        return history

    return train, {"steps_per_epoch": spe, "weight_decay": wd}


def summarize(history, info, args) -> dict:
    """Print the final table and the paired differences; returns the numbers."""
    loss, acc = (np.asarray(history[k])[:, -1] for k in ("loss", "acc"))  # (seeds, 3)
    spe = info["steps_per_epoch"]
    tau = optareg.decay_timescale(info["weight_decay"], args.lr, steps_per_epoch=spe)
    print(
        f"AdamW η = {args.lr:g}, λ = {info['weight_decay']:.4g}: decay timescale τ_epoch = "
        f"{tau:.3g} epochs (τ_iter = {tau * spe:.0f} steps, {spe} steps per epoch)"
    )
    print(
        f"EMA timescale {args.ema_epochs:g} epochs (β = {1 - 1 / (args.ema_epochs * spe):.5f}); "
        f"SWA of the weights at the end of every epoch from epoch {swa_epoch(args)}"
    )
    header = f"{'weights':>7} | {'val loss mean ± std':>19} {'min–max':>13} | {'val acc mean ± std':>18} {'min–max':>13}"
    print(f"\nvalidation after {args.epochs} epochs, {len(loss)} seeds")
    print(header)
    print("-" * len(header))
    for j, name in enumerate(KINDS):
        lo, ac = loss[:, j], acc[:, j]
        print(
            f"{name:>7} | {lo.mean():10.4f} ± {lo.std():6.4f} {lo.min():6.4f}–{lo.max():6.4f} | "
            f"{ac.mean():9.4f} ± {ac.std():6.4f} {ac.min():6.4f}–{ac.max():6.4f}"
        )
    print("-" * len(header))
    diff = {}
    for j, name in enumerate(KINDS[1:], start=1):
        dl, da = loss[:, j] - loss[:, 0], acc[:, j] - acc[:, 0]
        diff[name] = (dl, da)
        better = int(np.sum(dl < 0))
        print(
            f"{name} − live, paired per seed: loss {dl.mean():+.4f} ({dl.min():+.4f} … "
            f"{dl.max():+.4f}), accuracy {da.mean():+.4f} ({da.min():+.4f} … {da.max():+.4f}); "
            f"lower loss on {better} of {len(dl)} seeds"
        )
    return {"loss": loss, "acc": acc, "diff": diff, "tau_epoch": tau}


def plot(history, args, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = np.arange(1, args.epochs + 1)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6))
    first = swa_epoch(args) - 1
    for ax, key, label in zip(axes, ("loss", "acc"), ("validation loss", "validation accuracy"),
                              strict=True):  # fmt: skip
        values = np.asarray(history[key])  # (seeds, epochs, 3)
        for j, name in enumerate(KINDS):
            v, e = values[:, :, j], epochs
            if name == "SWA":  # before its first sample it is the live weights: not drawn
                v, e = v[:, first:], e[first:]
            ax.fill_between(e, v.min(0), v.max(0), color=f"C{j}", alpha=0.2, lw=0)
            ax.plot(e, v.mean(0), color=f"C{j}", label=f"{name} weights")
        ax.axvline(first + 1, color="C2", ls=":", lw=1, label="first SWA sample")
        ax.set(
            xlabel="epoch",
            ylabel=label,
            title=f"{label}: mean of {values.shape[0]} seeds, band min–max",
        )
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=9, frameon=False)
    axes[0].set_ylim(top=float(np.percentile(np.asarray(history["loss"]), 95)))
    fig.suptitle(
        f"digits, {args.n_train} training images ({args.label_noise:.0%} noisy labels), "
        f"AdamW η = {args.lr:g} constant: live weights vs EMA vs SWA"
    )
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _int_at_least(low: int):
    def parse(text: str) -> int:
        v = int(text)
        if v < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}; got {v}")
        return v

    return parse


def _float_in(low: float, high: float | None, low_open: bool = True, high_open: bool = False):
    def parse(text: str) -> float:
        v = float(text)
        ok = np.isfinite(v) and (v > low if low_open else v >= low)
        ok = ok and (high is None or (v < high if high_open else v <= high))
        if not ok:
            bound = f"{'>' if low_open else '>='} {low}" + (
                "" if high is None else f" and {'<' if high_open else '<='} {high}"
            )
            raise argparse.ArgumentTypeError(f"must be a number {bound}; got {text}")
        return v

    return parse


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--seeds", type=_int_at_least(1), default=3, help="training seeds")
    p.add_argument("--epochs", type=_int_at_least(2), default=60, help="training epochs")
    p.add_argument(
        "--n-train", type=_int_at_least(10), default=500, help="training images (max 1700)"
    )
    p.add_argument("--hidden", type=_int_at_least(1), default=128, help="MLP width")
    p.add_argument("--batch-size", type=_int_at_least(1), default=25, help="mini-batch size")
    p.add_argument("--lr", type=_float_in(0, None), default=1e-2, help="AdamW learning rate")
    p.add_argument(
        "--label-noise",
        type=_float_in(0, 1, low_open=False),
        default=0.3,
        help="fraction of training labels replaced by random ones",
    )
    p.add_argument(
        "--decay-epochs",
        type=_float_in(0, None),
        default=20.0,
        help="weight decay set by its timescale τ_epoch (λ = 1/(η·τ_epoch·steps_per_epoch))",
    )
    p.add_argument(
        "--ema-epochs",
        type=_float_in(0, None),
        default=2.0,
        help="EMA timescale in epochs (β = 1 − 1/τ, τ in steps; at least one step)",
    )
    p.add_argument(
        "--swa-start",
        type=_float_in(0, 1, low_open=False, high_open=True),
        default=0.5,
        help="SWA starts at this fraction of the epochs",
    )
    p.add_argument("--out", default=OUT, help="directory for the figure")
    args = p.parse_args(argv)
    if args.n_train > 1700:
        p.error(
            f"argument --n-train: at most 1700 (97 images stay for validation); got {args.n_train}"
        )
    if args.batch_size > args.n_train:
        p.error(f"argument --batch-size: at most --n-train ({args.n_train}); got {args.batch_size}")
    if args.ema_epochs * (args.n_train // args.batch_size) < 1:
        p.error("argument --ema-epochs: the EMA timescale must be at least one step")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    data = load_data(args.n_train, args.label_noise)
    train, info = make_train(args, data)
    start = time.perf_counter()
    history = jax.jit(jax.vmap(train))(jnp.arange(args.seeds))
    history = jax.tree.map(np.asarray, history)
    seconds = time.perf_counter() - start
    result = summarize(history, info, args)
    print(
        f"\n{args.seeds} seeds × {args.epochs} epochs in one jit(vmap(train)) call: {seconds:.1f} s"
    )
    path = os.path.join(args.out, "weight_averaging.png")
    plot(history, args, path)
    print(f"saved {path}")
    return {**result, "history": history, "figure": path}


if __name__ == "__main__":
    main()
