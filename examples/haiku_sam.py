"""The SAM training step written with Haiku: ``optareg.sam_perturb`` is framework-neutral.

``sam_perturb`` only sees pytrees and a ``grad_fn(params) -> grads`` closure. With
``tx = optareg.chain(optareg.sam_perturb(rho), optax.sgd(lr, momentum=0.9))`` the Haiku step
(this script) and the Flax NNX step are::

    # Haiku (any pytree of parameters)
    grads = jax.grad(loss)(params, x, y)
    updates, opt_state = tx.update(grads, opt_state, params,
                                   grad_fn=lambda p: jax.grad(loss)(p, x, y))
    params = optax.apply_updates(params, updates)

    # Flax NNX (optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param), inside nnx.jit)
    grad_fn = optareg.nnx_sam_grad_fn(loss_fn, model, x, y)  # before the clean pass
    grads = nnx.grad(loss_fn)(model, x, y)
    optimizer.update(model, grads, grad_fn=grad_fn)

``nnx_sam_grad_fn`` snapshots BatchNorm statistics and Dropout RNG state before the clean pass,
so the perturbed pass draws the same dropout mask and leaves the statistics alone (see
``docs/families/sam.md``). A Haiku model with state (``hk.transform_with_state``) does the same
by hand: ``grad_fn`` uses the state of the clean pass's start and drops the new state.

Data: scikit-learn's bundled digits (pixels scaled to [0, 1], 2/3 – 1/3 split). Model:
``hk.nets.MLP([128, 128, 10])``. It trains the same network with plain SGD, with SAM and with
LookSAM (``reuse_every=5``: one extra gradient every 5 steps), and prints test accuracy, the
final training loss, the SAM metrics kept in the optimizer state (:func:`optareg.metrics`) and
the wall time per step relative to SGD, timed over the whole run as one compiled ``lax.scan``.

Run: ``python examples/haiku_sam.py`` (about 15 s of CPU time on 2 cores).
"""

from __future__ import annotations

import time

import _cli
import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn.datasets import load_digits

import optareg


def load_data(seed=0):
    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32)
    perm = np.random.default_rng(seed).permutation(len(y))
    n_train = 2 * len(y) // 3
    return X[perm[:n_train]], y[perm[:n_train]], X[perm[n_train:]], y[perm[n_train:]]


def main(argv=None):
    ap = _cli.parser(__doc__)
    ap.add_argument("--steps", type=_cli.positive_int, default=600, help="training steps")
    ap.add_argument("--batch", type=_cli.positive_int, default=64, help="minibatch size")
    ap.add_argument("--lr", type=_cli.positive_float, default=0.05, help="SGD learning rate")
    ap.add_argument("--rho", type=_cli.positive_float, default=0.3, help="SAM radius ρ")
    ap.add_argument("--seed", type=_cli.nonnegative_int, default=0, help="random seed")
    args = ap.parse_args(argv)

    Xtr, ytr, Xte, yte = load_data(args.seed)
    if args.batch > len(ytr):  # minibatches are drawn without replacement
        ap.error(f"argument --batch: must be at most {len(ytr)} (the training images)")
    net = hk.without_apply_rng(hk.transform(lambda x: hk.nets.MLP([128, 128, 10])(x)))
    params0 = net.init(jax.random.PRNGKey(args.seed), jnp.asarray(Xtr[:1]))

    def loss(params, x, y):
        return optax.softmax_cross_entropy_with_integer_labels(net.apply(params, x), y).mean()

    rng = np.random.default_rng(args.seed + 1)
    idx = np.stack([rng.choice(len(ytr), args.batch, replace=False) for _ in range(args.steps)])
    xs, ys = jnp.asarray(Xtr[idx]), jnp.asarray(ytr[idx])

    base = lambda: optax.sgd(args.lr, momentum=0.9)  # noqa: E731
    runs = {
        "SGD": (base(), False),
        "SAM": (optareg.chain(optareg.sam_perturb(args.rho), base()), True),
        "LookSAM k=5": (
            optareg.chain(optareg.sam_perturb(args.rho, reuse_every=5), base()),
            True,
        ),
    }
    print(f"Haiku MLP 64-128-128-10 on digits, {args.steps} steps of batch {args.batch}")
    print(
        f"{'method':<12} {'test acc':>9} {'train loss':>11} {'‖g‖':>8} {'cos(g,g_out)':>13} "
        f"{'cost/step vs SGD':>17}"
    )
    sgd_sec = None
    for name, (tx, uses_grad_fn) in runs.items():

        def train_step(carry, batch, tx=tx, uses_grad_fn=uses_grad_fn):
            (params, opt_state), (x, y) = carry, batch
            grads = jax.grad(loss)(params, x, y)
            extra = {"grad_fn": lambda p: jax.grad(loss)(p, x, y)} if uses_grad_fn else {}
            updates, opt_state = tx.update(grads, opt_state, params, **extra)
            return (optax.apply_updates(params, updates), opt_state), None

        # the whole run is one compiled lax.scan: its time is the steps' compute, not Python's
        # dispatch of hundreds of tiny calls (which would make every method cost about the same)
        def train(carry, xs, ys, train_step=train_step):
            return jax.lax.scan(train_step, carry, (xs, ys))[0]

        carry = (params0, tx.init(params0))
        run = jax.jit(train).lower(carry, xs, ys).compile()
        t0 = time.perf_counter()
        params, opt_state = jax.block_until_ready(run(carry, xs, ys))
        sec = (time.perf_counter() - t0) / args.steps
        sgd_sec = sgd_sec or sec
        acc = float(jnp.mean(jnp.argmax(net.apply(params, jnp.asarray(Xte)), -1) == yte))
        train_loss = float(loss(params, jnp.asarray(Xtr), jnp.asarray(ytr)))
        m = optareg.metrics(opt_state)
        gn = f"{float(m['sam_perturb/grad_norm']):8.4f}" if m else f"{'-':>8}"
        cos = f"{float(m['sam_perturb/cos']):13.4f}" if m else f"{'-':>13}"
        print(f"{name:<12} {acc:>9.4f} {train_loss:>11.4f} {gn} {cos} {sec / sgd_sec:>16.2f}x")


if __name__ == "__main__":
    main()
