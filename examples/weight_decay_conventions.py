"""Weight decay in each convention: PyTorch/optax, the AdamW paper, "independent", AdamC, L2-SP.

Data: scikit-learn's bundled 8×8 digits (1797 images, 10 classes), pixels scaled to [0, 1], a
fixed 2/3 – 1/3 train/validation split. Model: a Flax linen MLP 64 → 128 → 128 → 10 (ReLU),
trained full-batch with Adam and a warmup-cosine learning rate (peak ``η_max``). Biases are not
decayed (``mask=optareg.masks.decay_mask``). The runs differ only in how the decay is expressed:

* ``pytorch``:     ``chain(scale_by_adam(), add_decayed_weights(λ), scale_by_learning_rate(η))``
  — decay ``η_t·λ`` per step, what ``optax.adamw`` and ``torch.optim.AdamW`` do.
* ``paper``:       ``decoupled_weight_decay(decay_schedule(λ·η_max, η, "paper"))`` last in the
  chain — decay ``λ_p·η_t/η_max``; with ``λ_p = λ·η_max`` it is the same run as ``pytorch``
  (the two differ only by float32 rounding, which full-batch Adam slowly amplifies).
* ``independent``: ``decoupled_weight_decay(λ·η_max)`` — the same peak decay, but constant: it
  keeps decaying during the warmup and the cosine tail, so the weights end up smaller.
* ``adamc``:       ``decay_schedule(λ·η_max, η, "adamc")`` — decay ``∝ η_t²``, lighter.

Then L2-SP: a model "pretrained" on 1000 training images is fine-tuned on 60 others with strong
decay toward its pretrained weights (``reference="init"``) versus the same decay toward zero.

Prints the final validation accuracy and parameter norm per run, and saves
``weight_decay_conventions.png`` in ``--out`` (default ``examples/out``): parameter norm over steps per convention, and
the distance from the pretrained weights during fine-tuning.

Run: ``python examples/weight_decay_conventions.py`` (about 20 s of CPU time on 2 cores).
"""

from __future__ import annotations

import time

import _cli
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn.datasets import load_digits

import optareg

FIG = "weight_decay_conventions.png"  # written to --out


class MLP(nn.Module):
    width: int = 128

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(self.width)(x))
        x = nn.relu(nn.Dense(self.width)(x))
        return nn.Dense(10)(x)


def load_data(seed=0):
    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32)
    perm = np.random.default_rng(seed).permutation(len(X))
    n_train = 2 * len(X) // 3
    tr, va = perm[:n_train], perm[n_train:]
    return (jnp.asarray(X[tr]), jnp.asarray(y[tr])), (jnp.asarray(X[va]), jnp.asarray(y[va]))


def param_norm(params):
    return jnp.sqrt(sum(jnp.sum(x**2) for x in jax.tree.leaves(params)))


def distance(a, b):
    return param_norm(jax.tree.map(lambda x, y: x - y, a, b))


def train(model, tx, params, data, steps):
    """Full-batch training under ``lax.scan``; returns final params and the norm history."""
    x, y = data

    def loss(p):
        logits = model.apply(p, x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    def step(carry, _):
        p, s = carry
        g = jax.grad(loss)(p)
        u, s = tx.update(g, s, p)
        p = optax.apply_updates(p, u)
        return (p, s), (param_norm(p), distance(p, params))

    run = jax.jit(lambda p: jax.lax.scan(step, (p, tx.init(p)), None, length=steps))
    (p, _), (norms, dists) = run(params)
    return p, np.asarray(norms), np.asarray(dists)


def accuracy(model, params, data):
    x, y = data
    return float(jnp.mean(jnp.argmax(model.apply(params, x), -1) == y))


def conventions(lr, peak, lam):
    """The four convention runs; λ is the PyTorch/optax weight decay."""
    mask = optareg.masks.decay_mask
    lam_peak = lam * peak  # the per-step decay at the peak lr, in every convention

    def decoupled(wd):
        return optareg.chain(
            optax.scale_by_adam(),
            optax.scale_by_learning_rate(lr),
            optareg.decoupled_weight_decay(wd, mask=mask),
        )

    return {
        "pytorch": optareg.chain(
            optax.scale_by_adam(),
            optareg.add_decayed_weights(lam, mask=mask),
            optax.scale_by_learning_rate(lr),
        ),
        "paper": decoupled(optareg.decay_schedule(lam_peak, lr, "paper")),
        "independent": decoupled(optareg.decay_schedule(lam_peak, lr, "independent")),
        "adamc": decoupled(optareg.decay_schedule(lam_peak, lr, "adamc")),
    }


def main(argv=None):
    ap = _cli.parser(__doc__)
    ap.add_argument(
        "--steps", type=_cli.positive_int, default=400, help="training steps per convention"
    )
    ap.add_argument("--width", type=_cli.positive_int, default=128, help="hidden width of the MLP")
    ap.add_argument("--lr", type=_cli.positive_float, default=3e-3, help="peak learning rate η_max")
    ap.add_argument(
        "--weight-decay", type=_cli.nonnegative_float, default=1.0, help="PyTorch-convention λ"
    )
    ap.add_argument(
        "--finetune-steps", type=_cli.positive_int, default=200, help="L2-SP fine-tuning steps"
    )
    ap.add_argument("--no-plot", action="store_true", help="do not save the figure")
    _cli.add_out(ap)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()

    train_data, val_data = load_data()
    model = MLP(args.width)
    params0 = model.init(jax.random.key(0), train_data[0][:1])
    lr = optax.warmup_cosine_decay_schedule(0.0, args.lr, args.steps // 10, args.steps, 0.0)

    rows, histories = [], {}
    for name, tx in conventions(lr, args.lr, args.weight_decay).items():
        p, norms, _ = train(model, tx, params0, train_data, args.steps)
        histories[name] = norms
        rows.append((name, accuracy(model, p, val_data), float(param_norm(p))))
    gap = float(np.max(np.abs(histories["paper"] / histories["pytorch"] - 1.0)))

    # L2-SP: pretrain on 1000 images, fine-tune on 60 others, decaying toward the start or zero.
    (x, y) = train_data
    pre_lr = optax.warmup_cosine_decay_schedule(0.0, args.lr, args.steps // 10, args.steps, 0.0)
    pre_tx = optax.adam(pre_lr)
    pretrained, _, _ = train(model, pre_tx, params0, (x[:1000], y[:1000]), args.steps)
    small = (x[1000:1060], y[1000:1060])
    ft_warmup = min(10, args.finetune_steps // 2)  # 10 unless the fine-tuning is very short
    ft_lr = optax.warmup_cosine_decay_schedule(0.0, 1e-3, ft_warmup, args.finetune_steps, 0.0)
    ft_rows, ft_hist = [], {}
    for name, ref in (("L2-SP (toward init)", "init"), ("decay toward 0", None)):
        tx = optareg.chain(
            optax.adam(ft_lr),
            optareg.decoupled_weight_decay(
                optareg.decay_schedule(1e-2, ft_lr, "paper"), reference=ref
            ),
        )
        p, norms, dists = train(model, tx, pretrained, small, args.finetune_steps)
        ft_hist[name] = dists
        ft_rows.append((name, accuracy(model, p, val_data), float(param_norm(p)), dists[-1]))

    print(
        f"digits MLP, Adam + warmup-cosine (η_max={args.lr}), {args.steps} steps, λ={args.weight_decay}"
    )
    print(f"{'convention':<14}{'val acc':>9}{'‖θ‖':>9}")
    for name, acc, norm in rows:
        print(f"{name:<14}{acc:>9.4f}{norm:>9.3f}")
    print(
        f"paper vs pytorch (same decay, two conventions): max relative gap in ‖θ‖ {gap:.1e} "
        "(float32 rounding amplified by Adam)"
    )
    print(
        f"\nfine-tuning from a pretrained start (val acc {accuracy(model, pretrained, val_data):.4f},"
        f" ‖θ‖ {float(param_norm(pretrained)):.3f}) on 60 images, {args.finetune_steps} steps"
    )
    print(f"{'run':<22}{'val acc':>9}{'‖θ‖':>9}{'‖θ−θ_pre‖':>12}")
    for name, acc, norm, dist in ft_rows:
        print(f"{name:<22}{acc:>9.4f}{norm:>9.3f}{dist:>12.3f}")

    if not args.no_plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for (name, norms), ls in zip(histories.items(), ("-", "--", "-", "-"), strict=True):
            axes[0].plot(norms, ls, label=name)
        axes[0].set(xlabel="step", ylabel="‖θ‖", title="parameter norm per convention")
        axes[0].legend()
        for name, dists in ft_hist.items():
            axes[1].plot(dists, label=name)
        axes[1].set(xlabel="fine-tuning step", ylabel="‖θ − θ_pretrained‖", title="L2-SP")
        axes[1].legend()
        fig.tight_layout()
        path = _cli.figure_path(args.out, FIG)
        fig.savefig(path, dpi=110)
        print(f"\nsaved {path}")
    print(f"total time {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
