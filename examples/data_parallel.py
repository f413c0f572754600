"""Data-parallel training with SAM (m-sharpness), spectral_clip and prox_l1 on every device.

An MLP on scikit-learn's digits, trained on a 1-D ``("data",)`` mesh: the parameters and the
optimizer state are replicated, each batch is split over the devices. On CPU the script simulates
8 devices (it sets ``XLA_FLAGS=--xla_force_host_platform_device_count=8`` before importing jax,
unless a count is already forced); on GPU/TPU it uses the real devices.

One step:

1. inside ``jax.shard_map``, every device computes the gradient of its own micro-batch and
   ``optareg.sam_perturb(axis_name="data")`` perturbs with that **local** gradient
   (m-sharpness); the SAM gradients are then averaged with ``jax.lax.pmean``.
   The parameters are made device-varying first with ``jax.lax.pcast(params, "data",
   to="varying")``: without it, the gradient with respect to the replicated parameters is
   already summed over the devices and m-sharpness silently becomes plain SAM (the script prints
   the difference on the first batch);
2. outside, under ``jax.jit`` on the replicated gradient: SGD with momentum, then the post-step
   ``optareg.spectral_clip`` (power iteration, every weight matrix's spectral norm ≤ ``--max-norm``)
   and ``optareg.prox_l1`` (exact zeros), and ``optareg.track`` last to watch the final step.

Every metric the transforms record is read back with ``optareg.metrics``.

Run::

    python examples/data_parallel.py            # fast CPU defaults, 8 simulated devices
    python examples/data_parallel.py --steps 600 --batch 256
"""

from __future__ import annotations

import os

if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    # Only the host (CPU) platform reads this flag: with GPUs/TPUs present they are used instead.
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    ).strip()

import time  # noqa: E402
from functools import partial  # noqa: E402

import _cli  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.sharding import Mesh, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

import optareg  # noqa: E402

FIGURE = "data_parallel.png"  # written to --out


def init_mlp(key, sizes):
    params = {}
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        key, sub = jax.random.split(key)
        params[f"dense{i + 1}"] = {
            "kernel": jax.random.normal(sub, (n_in, n_out)) * np.sqrt(2.0 / n_in),
            "bias": jnp.zeros((n_out,)),
        }
    return params


def forward(params, x):
    n = len(params)
    for i in range(1, n + 1):
        layer = params[f"dense{i}"]
        x = x @ layer["kernel"] + layer["bias"]
        if i < n:
            x = jax.nn.relu(x)
    return x


def loss_fn(params, x, y):
    return optax.softmax_cross_entropy_with_integer_labels(forward(params, x), y).mean()


def accuracy(params, x, y):
    return jnp.mean(jnp.argmax(forward(params, x), -1) == y)


def _pmean_floats(tree, axis):
    """Average the per-device float statistics (SAM's norms and cosine); counters stay."""
    return jax.tree.map(
        lambda x: jax.lax.pmean(x, axis) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree
    )


def make_train_step(mesh, sam, opt, *, pcast=True):
    """The jitted step: per-device SAM inside shard_map, the rest on the averaged gradient."""

    @partial(
        jax.shard_map,
        mesh=mesh,
        in_specs=(P(), P(), P("data"), P("data")),
        out_specs=(P(), P(), P()),
    )
    def sam_gradient(params, sam_state, x, y):
        if pcast:  # device-varying params: jax.grad gives each device its LOCAL gradient
            params = jax.lax.pcast(params, "data", to="varying")
        grad_fn = lambda p: jax.grad(loss_fn)(p, x, y)  # noqa: E731 - closes over the micro-batch
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        grads, sam_state = sam.update(grads, sam_state, params, grad_fn=grad_fn)
        return (
            jax.lax.pmean(grads, "data"),
            _pmean_floats(sam_state, "data"),
            jax.lax.pmean(loss, "data"),
        )

    @jax.jit
    def train_step(params, sam_state, opt_state, x, y):
        grads, sam_state, loss = sam_gradient(params, sam_state, x, y)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), sam_state, opt_state, loss

    return train_step, jax.jit(sam_gradient)


def table(rows, header):
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(header)]
    line = "  ".join(str(h).rjust(w) for h, w in zip(header, widths, strict=True))
    print(line)
    print("-" * len(line))
    for r in rows:
        print("  ".join(str(c).rjust(w) for c, w in zip(r, widths, strict=True)))


def main(argv=None):
    parser = _cli.parser(__doc__)
    parser.add_argument("--steps", type=_cli.positive_int, default=150, help="training steps")
    parser.add_argument(
        "--batch",
        type=_cli.positive_int,
        default=128,
        help="global batch size (a multiple of the device count, at most 1400)",
    )
    parser.add_argument("--hidden", type=_cli.positive_int, default=64, help="hidden units")
    parser.add_argument("--lr", type=_cli.positive_float, default=0.05, help="SGD learning rate")
    parser.add_argument("--rho", type=_cli.positive_float, default=0.05, help="SAM radius")
    parser.add_argument("--l1", type=_cli.nonnegative_float, default=1e-3, help="prox_l1 strength")
    parser.add_argument(
        "--max-norm", type=_cli.positive_float, default=3.0, help="spectral_clip bound"
    )
    parser.add_argument(
        "--log-every", type=_cli.positive_int, default=50, help="steps between table rows"
    )
    parser.add_argument("--no-plot", action="store_true", help="do not save the PNG")
    _cli.add_out(parser)
    args = parser.parse_args(argv)
    if args.batch > 1400:  # the training images, drawn without replacement
        parser.error(
            f"argument --batch: must be at most 1400 (the training images), got {args.batch}"
        )

    devices = jax.devices()
    n_dev = len(devices)
    if args.batch % n_dev:
        parser.error(f"--batch {args.batch} must be divisible by the {n_dev} devices")
    mesh = Mesh(np.asarray(devices), ("data",))
    replicated = NamedSharding(mesh, P())
    batch_sharding = NamedSharding(mesh, P("data"))
    print(
        f"devices: {n_dev} x {devices[0].platform} | global batch {args.batch} | "
        f"per-device batch {args.batch // n_dev}"
    )

    digits = load_digits()
    x_all = (digits.data / 16.0).astype(np.float32)
    y_all = digits.target.astype(np.int32)
    perm = np.random.default_rng(0).permutation(len(x_all))
    n_train = 1400
    x_tr, y_tr = x_all[perm[:n_train]], y_all[perm[:n_train]]
    x_te, y_te = x_all[perm[n_train:]], y_all[perm[n_train:]]

    params = init_mlp(jax.random.PRNGKey(0), [64, args.hidden, args.hidden, 10])
    sam = optareg.sam_perturb(args.rho, axis_name="data")
    opt = optareg.chain(
        optax.sgd(args.lr, momentum=0.9),
        optareg.spectral_clip(args.max_norm, method="power"),
        optareg.prox_l1(args.l1, args.lr),
        optareg.track(),
    )
    params = jax.device_put(params, replicated)
    # init under jit: one compiled program instead of many small eager ops on 8 devices.
    sam_state = jax.jit(sam.init, out_shardings=replicated)(params)
    opt_state = jax.jit(opt.init, out_shardings=replicated)(params)
    train_step, sam_gradient = make_train_step(mesh, sam, opt)

    # The pcast trap, on the first batch: without pcast, SAM sees the all-device gradient.
    x0 = jax.device_put(x_tr[: args.batch], batch_sharding)
    y0 = jax.device_put(y_tr[: args.batch], batch_sharding)
    g_local = sam_gradient(params, sam_state, x0, y0)[0]
    _, trap_gradient = make_train_step(mesh, sam, opt, pcast=False)
    g_trap = trap_gradient(params, sam_state, x0, y0)[0]
    g_trap = jax.tree.map(lambda g: g / n_dev, g_trap)  # the psum-ed gradient, per device
    diff = optax.tree.norm(jax.tree.map(jnp.subtract, g_local, g_trap)) / optax.tree.norm(g_local)
    print(
        f"m-sharpness check, first batch: |g_SAM(pcast) - g_SAM(no pcast)/{n_dev}| / |g_SAM| "
        f"= {float(diff):.3f} (0 would mean plain SAM)"
    )

    rng = np.random.default_rng(1)
    rows, history = [], {"step": [], "loss": [], "test_acc": [], "sparsity": []}
    eval_acc = jax.jit(accuracy)
    t0 = time.perf_counter()
    for step in range(1, args.steps + 1):
        idx = rng.choice(n_train, args.batch, replace=False)
        xb = jax.device_put(x_tr[idx], batch_sharding)
        yb = jax.device_put(y_tr[idx], batch_sharding)
        params, sam_state, opt_state, loss = train_step(params, sam_state, opt_state, xb, yb)
        if step % args.log_every == 0 or step == args.steps:
            m = jax.device_get(optareg.metrics((sam_state, opt_state)))
            acc = float(eval_acc(params, x_te, y_te))
            rows.append(
                (
                    step,
                    f"{float(loss):.4f}",
                    f"{acc:.3f}",
                    f"{m['sam_perturb/grad_norm']:.3f}",
                    f"{m['sam_perturb/cos']:.3f}",
                    f"{m['spectral_clip/sigma_max']:.3f}",
                    f"{m['prox_l1/zeros_fraction']:.3f}",
                    f"{m['optareg/update_ratio']:.2e}",
                )
            )
            history["step"].append(step)
            history["loss"].append(float(loss))
            history["test_acc"].append(acc)
            history["sparsity"].append(float(m["prox_l1/zeros_fraction"]))
    wall = time.perf_counter() - t0

    print()
    table(
        rows,
        ("step", "loss", "test acc", "‖g‖", "cos(g,g_sam)", "σ_max", "zeros", "‖Δθ‖/‖θ‖"),
    )
    print(f"\n{args.steps} steps in {wall:.1f} s (including compilation)\n")
    print("all metrics after the last step (optareg.metrics):")
    final = jax.device_get(optareg.metrics((sam_state, opt_state)))
    table([(k, f"{float(v):.4g}") for k, v in final.items()], ("metric", "value"))

    sigmas = {
        name: float(np.linalg.norm(np.asarray(layer["kernel"]), 2))
        for name, layer in params.items()
    }
    print("\nexact spectral norms:", {k: round(v, 3) for k, v in sigmas.items()})

    if not args.no_plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        panels = (
            ("loss", "training loss", "minibatch loss (cross-entropy)"),
            ("test_acc", "test accuracy", "accuracy on held-out digits"),
            ("sparsity", "prox_l1 sparsity", "prox_l1/zeros_fraction"),
        )
        fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
        for ax, (key, title, ylabel) in zip(axes, panels, strict=True):
            ax.plot(history["step"], history[key], marker="o")
            ax.set(title=title, xlabel="step", ylabel=ylabel)
            ax.grid(alpha=0.3)
        fig.suptitle(f"data-parallel SAM + spectral_clip + prox_l1 on {n_dev} devices")
        fig.tight_layout()
        path = _cli.figure_path(args.out, FIGURE)
        fig.savefig(path, dpi=100)
        print(f"saved {path}")


if __name__ == "__main__":
    main()
