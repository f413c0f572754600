"""Quickstart: an AdamW-style optimizer built from optareg pieces, on a Flax NNX MLP.

Data: scikit-learn's bundled handwritten digits (1797 images of 8x8 pixels, 10 classes), split
into 80% train / 20% validation (stratified, fixed seed). Model: a two-layer Flax NNX MLP.

The optimizer is SAM + AdamW written as a chain of pieces, with diagnostics around it::

    optareg.chain(                                 # optax.chain that checks the order
        optareg.track(name="raw"),                 # records the raw gradients' norm
        optareg.sam_perturb(ρ),                    # SAM: the gradient at θ + ε (goes first)
        optax.scale_by_adam(),
        optareg.add_decayed_weights(λ, mask=optareg.masks.decay_mask),  # kernels only
        optax.scale_by_learning_rate(η),           # decay applied: η·λ·θ (PyTorch convention)
        optareg.track(name="step"),                # records ‖Δθ‖, ‖θ‖, ‖Δθ‖/‖θ‖, sparsity
    )

SAM needs ``grad_fn``, the gradient at other weights on the same batch. For an NNX model it is
``optareg.nnx_sam_grad_fn(loss_fn, model)``, built *before* the clean pass (it snapshots
BatchNorm statistics and Dropout RNG state, so both passes see the same ones)::

    grad_fn = optareg.nnx_sam_grad_fn(loss_fn, model)
    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads, grad_fn=grad_fn)

``--rho 0`` drops SAM (plain AdamW, one gradient per step).

Each epoch prints the train loss, the validation accuracy, the parameter norm and the
update/parameter ratio ‖Δθ‖/‖θ‖ of the last step, all read from the optimizer state with
``optareg.metrics``. A jit-able ``optareg.early_stopping`` (Keras semantics) watches the
validation accuracy and restores the best weights at the end.

Optional post-step regularizers: ``--l1 λ`` adds ``optareg.prox_l1`` (exact zeros; a ``zeros``
column shows the sparsity of θ) and ``--max-sigma c`` adds ``optareg.spectral_clip`` (every weight
matrix kept at spectral norm ≤ c; a ``max σ`` column shows the largest estimate).

Run: ``python examples/quickstart.py`` (about 10 s on 2 CPU cores; ``--epochs``, ``--hidden``,
``--batch-size``, ``--lr``, ``--weight-decay``, ``--rho``, ``--patience``, ``--l1``,
``--max-sigma``).
"""

from __future__ import annotations

import time

import _cli
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import optareg


def load_data(seed: int = 0):
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)  # pixel intensities are 0..16
    x_tr, x_va, y_tr, y_va = train_test_split(x, y, test_size=0.2, random_state=seed, stratify=y)
    return x_tr, x_va, y_tr.astype(np.int32), y_va.astype(np.int32)


class MLP(nnx.Module):
    def __init__(self, d_in: int, hidden: int, d_out: int, rngs: nnx.Rngs):
        self.dense1 = nnx.Linear(d_in, hidden, rngs=rngs)
        self.dense2 = nnx.Linear(hidden, d_out, rngs=rngs)

    def __call__(self, x):
        return self.dense2(jax.nn.relu(self.dense1(x)))


def make_optimizer(
    lr: float, weight_decay: float, l1: float = 0.0, max_sigma: float = 0.0, rho: float = 0.0
) -> optax.GradientTransformation:
    # SAM (an extra-args transform) goes first, after the raw-gradient track; update() then
    # needs grad_fn. Post-step regularizers (optional, off by default) go after the learning
    # rate, before the last track so that it measures the step actually applied.
    sam = [optareg.sam_perturb(rho)] if rho > 0 else []
    post = []
    if l1 > 0:
        post.append(optareg.prox_l1(l1, lr, mask=optareg.masks.decay_mask))  # exact zeros
    if max_sigma > 0:
        post.append(optareg.spectral_clip(max_sigma, method="power"))  # ‖W‖₂ ≤ max_sigma
    return optareg.chain(
        optareg.track(name="raw"),
        *sam,
        optax.scale_by_adam(),
        optareg.add_decayed_weights(weight_decay, mask=optareg.masks.decay_mask),
        optax.scale_by_learning_rate(lr),
        *post,
        optareg.track(name="step"),
    )


def main(argv=None):
    parser = _cli.parser(__doc__)
    parser.add_argument("--epochs", type=_cli.positive_int, default=20, help="training epochs")
    parser.add_argument("--hidden", type=_cli.positive_int, default=64, help="hidden units")
    parser.add_argument("--batch-size", type=_cli.positive_int, default=64, help="minibatch size")
    parser.add_argument("--lr", type=_cli.positive_float, default=3e-3, help="AdamW learning rate")
    parser.add_argument(
        "--weight-decay", type=_cli.nonnegative_float, default=1e-2, help="AdamW's weight decay"
    )
    parser.add_argument(
        "--rho", type=_cli.nonnegative_float, default=0.05, help="SAM radius (0: no SAM)"
    )
    parser.add_argument(
        "--patience", type=_cli.positive_int, default=5, help="early stopping, in epochs"
    )
    parser.add_argument(
        "--l1", type=_cli.nonnegative_float, default=0.0, help="prox_l1 strength, e.g. 0.1 (0: off)"
    )
    parser.add_argument(
        "--max-sigma",
        type=_cli.nonnegative_float,
        default=0.0,
        help="spectral_clip bound, e.g. 3 (0: off)",
    )
    parser.add_argument("--seed", type=_cli.nonnegative_int, default=0, help="random seed")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()

    x_tr, x_va, y_tr, y_va = load_data(args.seed)
    if args.batch_size > len(x_tr):
        parser.error(f"argument --batch-size: must be at most {len(x_tr)} (the training set)")
    model = MLP(x_tr.shape[1], args.hidden, 10, nnx.Rngs(args.seed))
    tx = make_optimizer(args.lr, args.weight_decay, args.l1, args.max_sigma, args.rho)
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
    stopper = optareg.early_stopping(args.patience, mode="max")
    es_update = jax.jit(stopper.update)
    es_state = stopper.init(nnx.state(model, nnx.Param))

    @nnx.jit
    def train_step(model, optimizer, x, y):
        def loss_fn(model):
            return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()

        extra = {}
        if args.rho > 0:  # SAM's grad_fn, built before the clean pass (see the docstring)
            extra["grad_fn"] = optareg.nnx_sam_grad_fn(loss_fn, model)
        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads, **extra)
        return loss, optareg.metrics(optimizer.opt_state)

    @nnx.jit
    def accuracy(model, x, y):
        return jnp.mean(jnp.argmax(model(x), -1) == y)

    rng = np.random.default_rng(args.seed)
    n_batches = len(x_tr) // args.batch_size
    header = (
        f"{'epoch':>5} {'train loss':>10} {'val acc':>8} {'‖θ‖':>8} {'‖Δθ‖/‖θ‖':>9} "
        f"{'raw ‖g‖':>8} {'non-finite':>10}"
        + (f" {'SAM cos':>7}" if args.rho > 0 else "")
        + (f" {'zeros':>6}" if args.l1 > 0 else "")
        + (f" {'max σ':>6}" if args.max_sigma > 0 else "")
    )
    print(header)
    print("-" * len(header))
    for epoch in range(args.epochs):
        perm = rng.permutation(len(x_tr))
        losses = []
        for b in range(n_batches):
            idx = perm[b * args.batch_size : (b + 1) * args.batch_size]
            loss, m = train_step(model, optimizer, x_tr[idx], y_tr[idx])
            losses.append(loss)
        m = jax.device_get(m)  # the metrics of the epoch's last step, as numbers
        val_acc = accuracy(model, x_va, y_va)
        es_state = es_update(es_state, val_acc, nnx.state(model, nnx.Param))
        print(
            f"{epoch:5d} {float(np.mean(jax.device_get(losses))):10.4f} {float(val_acc):8.4f} "
            f"{m['step/param_norm']:8.3f} {m['step/update_ratio']:9.2e} "
            f"{m['raw/grad_norm']:8.3f} {int(m['raw/nonfinite']):10d}"
            + (f" {m['sam_perturb/cos']:7.3f}" if args.rho > 0 else "")
            + (f" {m['step/sparsity']:6.3f}" if args.l1 > 0 else "")
            + (f" {m['spectral_clip/sigma_max']:6.3f}" if args.max_sigma > 0 else "")
        )
        if es_state.should_stop:
            print(f"early stopping at epoch {epoch} (patience {args.patience})")
            break

    nnx.update(model, es_state.best_params)
    best = float(accuracy(model, x_va, y_va))
    print(
        f"restored the weights of epoch {int(es_state.best_step)}: validation accuracy "
        f"{best:.4f} (best seen {float(es_state.best_value):.4f})"
    )
    print(f"done in {time.perf_counter() - t0:.1f} s")
    return best


if __name__ == "__main__":
    main()
