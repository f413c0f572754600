"""Penalty <-> constraint: the Lasso path is the L1-ball path; dropout + max-norm on an MLP.

Part 1 (duality). On scikit-learn's diabetes data (442 x 10, standardized, centered target),
``Lasso(alpha=λ)`` minimizes ``½·mean((Xw − y)²) + λ‖w‖₁``. Its solution ``w_λ`` also solves the
constrained problem ``min ½·mean((Xw − y)²) s.t. ‖w‖₁ ≤ r`` with the matched radius
``r = ‖w_λ‖₁``. We solve the constrained problem by projected gradient descent,
``optareg.chain(optax.sgd(1/L), optareg.project(l1_ball(r)))`` with optax's L1-ball projection,
for every radius at once (``jax.vmap``, float64), and print both coefficient vectors side by side.

Part 2 (max-norm, Srivastava et al. 2014). A 64-H-H-10 MLP on scikit-learn's digits with
dropout (0.2 on the inputs, 0.5 on the hidden units) and SGD with momentum, trained twice from
the same initialization: dropout alone, and dropout + ``optareg.max_norm(3.0)`` on the two hidden
layers (the incoming weights of every hidden unit, a column of ``w1`` / ``w2``, kept in the ball
of radius 3, as in the paper). We plot the per-unit norms of both runs and log
``max_norm/on_boundary`` (the fraction of units sitting on the constraint) through
``optareg.metrics``.

Writes ``constraint_equivalence.png`` to ``--out`` (default ``examples/out``).
Run: ``python examples/constraint_equivalence.py [--pgd-steps 20000] [--mlp-steps 1500]``
"""

from __future__ import annotations

import time

import _cli
import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import optax
from sklearn.datasets import load_diabetes, load_digits
from sklearn.linear_model import Lasso
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

import optareg

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

FIGURE = "constraint_equivalence.png"  # written to --out
MAX_NORM = 3.0


# --------------------------------------------------------------------------------------------
# Part 1: the Lasso path and the L1-ball path
# --------------------------------------------------------------------------------------------


def diabetes():
    x, y = load_diabetes(return_X_y=True)
    return StandardScaler().fit_transform(x), y - y.mean()


def lasso_path(x, y, alphas):
    """scikit-learn's Lasso solutions (no intercept: the data are centered)."""
    return np.stack(
        [
            Lasso(alpha=a, fit_intercept=False, tol=1e-12, max_iter=1_000_000).fit(x, y).coef_
            for a in alphas
        ]
    )


def l1_ball_path(x, y, radii, steps):
    """Projected gradient descent onto ``{‖w‖₁ ≤ r}`` for every radius (vmapped, float64)."""
    with jax.enable_x64(True):
        gram, xty = jnp.asarray(x.T @ x / len(y)), jnp.asarray(x.T @ y / len(y))
        lr = 1.0 / float(np.linalg.eigvalsh(x.T @ x / len(y)).max())  # 1/L of the loss

        def solve(radius):
            ball = lambda t: optax.projections.projection_l1_ball(t, radius)  # noqa: E731
            tx = optareg.chain(optax.sgd(lr), optareg.project(ball))
            w = jnp.zeros(x.shape[1])

            def step(carry, _):
                w, state = carry
                updates, state = tx.update(gram @ w - xty, state, w)  # ∇ ½·mean((Xw − y)²)
                return (optax.apply_updates(w, updates), state), None

            (w, state), _ = jax.lax.scan(step, (w, tx.init(w)), None, length=steps)
            return w, optareg.metrics(state)["project/on_boundary"]

        w, on_boundary = jax.jit(jax.vmap(solve))(jnp.asarray(radii))
        return np.asarray(w), np.asarray(on_boundary)


def part1(pgd_steps):
    x, y = diabetes()
    alphas = np.array([30.0, 15.0, 8.0, 4.0, 2.0, 1.0, 0.5, 0.1])
    w_lasso = lasso_path(x, y, alphas)
    radii = np.abs(w_lasso).sum(axis=1)
    w_ball, on_boundary = l1_ball_path(x, y, radii, pgd_steps)
    print(f"Part 1: diabetes (standardized), Lasso(alpha) vs PGD on the L1 ball, {pgd_steps} steps")
    print(
        f"{'alpha':>6} | {'radius ‖w‖₁':>11} | {'nnz':>3} | {'max |w_lasso − w_ball|':>22} | active"
    )
    print("-" * 64)
    for a, r, wl, wb, ob in zip(alphas, radii, w_lasso, w_ball, on_boundary, strict=True):
        diff = np.abs(wl - wb).max()
        print(f"{a:6.1f} | {r:11.3f} | {np.sum(wl != 0):3d} | {diff:22.2e} | {ob:6.0f}")
    print("coefficients (alpha = 2): lasso", np.round(w_lasso[4], 3))
    print("                          ball ", np.round(w_ball[4], 3))
    return radii, w_lasso, w_ball


# --------------------------------------------------------------------------------------------
# Part 2: dropout with and without max-norm
# --------------------------------------------------------------------------------------------


def init_mlp(key, hidden):
    sizes = [64, hidden, hidden, 10]
    keys = jax.random.split(key, len(sizes) - 1)
    params = {}
    for i, (k, n_in, n_out) in enumerate(zip(keys, sizes[:-1], sizes[1:], strict=True)):
        params[f"w{i + 1}"] = jax.random.normal(k, (n_in, n_out)) * np.sqrt(2.0 / n_in)
        params[f"b{i + 1}"] = jnp.zeros(n_out)
    return params


def forward(params, x, key=None):
    """MLP with (inverted) dropout 0.2 on the inputs and 0.5 on the hidden units when ``key``."""

    def dropout(h, rate, k):
        if key is None:
            return h
        keep = jax.random.bernoulli(k, 1 - rate, h.shape)
        return jnp.where(keep, h / (1 - rate), 0)

    keys = jax.random.split(key, 3) if key is not None else [None] * 3
    h = dropout(x, 0.2, keys[0])
    h = dropout(jax.nn.relu(h @ params["w1"] + params["b1"]), 0.5, keys[1])
    h = dropout(jax.nn.relu(h @ params["w2"] + params["b2"]), 0.5, keys[2])
    return h @ params["w3"] + params["b3"]


def unit_norms(params):
    """The norm of every unit's incoming weights (columns of each kernel), per layer."""
    return {k: np.linalg.norm(np.asarray(v), axis=0) for k, v in params.items() if k[0] == "w"}


# Srivastava et al. constrain the incoming weights of every *hidden* unit (not the output layer).
HIDDEN = {"w1": True, "b1": False, "w2": True, "b2": False, "w3": False, "b3": False}


def train_mlp(x, y, *, constrained, hidden, steps, lr, batch, seed=0):
    x, y = jnp.asarray(x, jnp.float32), jnp.asarray(y)
    params = init_mlp(jax.random.PRNGKey(seed), hidden)
    sgd = optax.sgd(optax.cosine_decay_schedule(lr, steps), momentum=0.9)
    if constrained:
        tx = optareg.chain(sgd, optareg.max_norm(MAX_NORM, mask=HIDDEN))
    else:
        tx = optareg.chain(sgd)

    def loss(p, xb, yb, key):
        logits = forward(p, xb, key)
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, yb))

    def step(carry, key):
        p, state = carry
        k_batch, k_drop = jax.random.split(key)
        idx = jax.random.choice(k_batch, x.shape[0], (batch,), replace=False)
        grads = jax.grad(loss)(p, x[idx], y[idx], k_drop)
        updates, state = tx.update(grads, state, p)
        p = optax.apply_updates(p, updates)
        boundary = optareg.metrics(state).get("max_norm/on_boundary", jnp.zeros([]))
        top = jnp.max(jnp.linalg.norm(p["w1"], axis=0))
        return (p, state), (boundary, top)

    keys = jax.random.split(jax.random.PRNGKey(seed + 1), steps)
    run = jax.jit(lambda p: jax.lax.scan(step, (p, tx.init(p)), keys))
    (params, _), curves = run(params)
    return params, jax.tree.map(np.asarray, curves)


def accuracy(params, x, y):
    return float(np.mean(np.argmax(np.asarray(forward(params, jnp.asarray(x))), -1) == y))


def part2(hidden, steps, lr, batch):
    x, y = load_digits(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(x / 16.0, y, test_size=0.3, random_state=0)
    runs = {}
    for constrained in (False, True):
        runs[constrained] = train_mlp(
            x_tr, y_tr, constrained=constrained, hidden=hidden, steps=steps, lr=lr, batch=batch
        )
    print(
        f"\nPart 2: digits MLP 64-{hidden}-{hidden}-10, dropout 0.2/0.5, {steps} SGD steps "
        f"(lr {lr} cosine-decayed, momentum 0.9, batch {batch})"
    )
    print(f"{'run':>22} | {'test acc':>8} | {'max unit norm w1/w2/w3':>24} | on boundary")
    print("-" * 76)
    for constrained, (params, (boundary, _)) in runs.items():
        norms = unit_norms(params)
        label = f"dropout + max_norm({MAX_NORM:g})" if constrained else "dropout"
        top = "/".join(f"{norms[k].max():.2f}" for k in ("w1", "w2", "w3"))
        acc = accuracy(params, x_te, y_te)
        print(f"{label:>22} | {acc:8.3f} | {top:>24} | {boundary[-1]:.3f}")
    return runs


# --------------------------------------------------------------------------------------------
# figure
# --------------------------------------------------------------------------------------------


def plot(radii, w_lasso, w_ball, runs, path):
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    ax = axes[0]
    order = np.argsort(radii)
    for j in range(w_lasso.shape[1]):
        (line,) = ax.plot(radii[order], w_lasso[order, j], lw=1.5)
        ax.plot(radii[order], w_ball[order, j], "o", ms=5, mfc="none", color=line.get_color())
    ax.plot([], [], "k-", label="Lasso(alpha) (scikit-learn)")
    ax.plot([], [], "ko", mfc="none", label="PGD on the L1 ball, r = ‖w_alpha‖₁")
    ax.set(xlabel="radius r = ‖w‖₁", ylabel="coefficient", title="Penalty path = constraint path")
    ax.legend(fontsize=8, loc="upper left")

    ax = axes[1]
    for constrained, (params, _) in runs.items():
        norms = np.sort(unit_norms(params)["w1"])[::-1]
        label = f"dropout + max_norm({MAX_NORM:g})" if constrained else "dropout alone"
        ax.plot(norms, lw=2 if constrained else 1.5, label=label)
    ax.axhline(MAX_NORM, color="k", ls=":", lw=1, label=f"c = {MAX_NORM:g}")
    ax.set(
        xlabel="hidden unit (layer 1), sorted by norm",
        ylabel="‖incoming weights‖₂",
        title="Per-unit norms after training",
    )
    ax.legend(fontsize=8)

    ax = axes[2]
    for constrained, (_, (_, top)) in runs.items():
        label = "dropout + max_norm" if constrained else "dropout alone"
        ax.plot(top, label=f"{label}: max unit norm (layer 1)")
    ax.axhline(MAX_NORM, color="k", ls=":", lw=1)
    ax.set(xlabel="step", ylabel="max unit norm", title="Training")
    ax2 = ax.twinx()
    ax2.plot(runs[True][1][0], color="tab:green", lw=1, alpha=0.7, label="max_norm/on_boundary")
    ax2.set_ylabel("fraction of units on the boundary", color="tab:green")
    ax2.set_ylim(0, 1.05)
    lines = ax.get_legend_handles_labels()
    extra = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + extra[0], lines[1] + extra[1], fontsize=8, loc="center right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    parser = _cli.parser(__doc__)
    parser.add_argument(
        "--pgd-steps", type=_cli.positive_int, default=20_000, help="PGD steps per radius"
    )
    parser.add_argument(
        "--mlp-steps", type=_cli.positive_int, default=1500, help="SGD steps per MLP run"
    )
    parser.add_argument(
        "--hidden", type=_cli.positive_int, default=128, help="hidden units per layer"
    )
    parser.add_argument(
        "--lr", type=_cli.positive_float, default=0.3, help="peak learning rate (cosine decay)"
    )
    parser.add_argument(
        "--batch", type=_cli.positive_int, default=128, help="minibatch size (at most 1257)"
    )
    parser.add_argument("--no-plot", action="store_true", help="do not save the figure")
    _cli.add_out(parser)
    args = parser.parse_args(argv)
    if args.batch > 1257:  # the 70 % training split of the 1797 digits, drawn without replacement
        parser.error(
            f"argument --batch: must be at most 1257 (the training images), got {args.batch}"
        )
    t0, c0 = time.perf_counter(), time.process_time()
    radii, w_lasso, w_ball = part1(args.pgd_steps)
    runs = part2(args.hidden, args.mlp_steps, args.lr, args.batch)
    if not args.no_plot:
        path = _cli.figure_path(args.out, FIGURE)
        plot(radii, w_lasso, w_ball, runs, path)
        print(f"\nwrote {path}")
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(f"wall time: {wall:.1f} s (CPU time of this process: {cpu:.1f} s)")
    return {"radii": radii, "w_lasso": w_lasso, "w_ball": w_ball, "runs": runs}


if __name__ == "__main__":
    main()
