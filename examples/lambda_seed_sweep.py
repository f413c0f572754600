"""A regularization sweep in one jitted call: ``jax.vmap`` over λ and over seeds.

Data: scikit-learn's bundled digits (1797 images of 8×8 pixels, 10 classes), pixels scaled to
[0, 1], one fixed stratified split: 300 training images (small, so the network overfits), 600
for validation (choosing λ and early stopping) and the remaining 897 as the test set (never used
for a choice). Model: an MLP 64 → 256 → 10 (ReLU), Adam (``η = 3·10⁻³``), mini-batches of 32.

Two regularizers, each swept over a grid of λ (plus λ = 0) and ``--seeds`` seeds (weights and
mini-batch order), with the strength *traced* through ``optax.inject_hyperparams`` so that every
(λ, seed) run is the same program:

* weight decay (PyTorch/AdamW convention, the decay per step is ``η·λ``)::

      optareg.chain(optax.scale_by_adam(),
                    optax.inject_hyperparams(optareg.add_decayed_weights,
                                             static_args=("mask",))(λ, mask=decay_mask),
                    optax.scale_by_learning_rate(η))

* L1 by its proximal step (exact zeros)::

      optareg.chain(optax.adam(η),
                    optax.inject_hyperparams(optareg.prox_l1,
                                             static_args=("mask", "metrics_every"))(
                        λ, η, mask=decay_mask))

  ``static_args`` matters: ``inject_hyperparams`` treats every *callable* argument as a
  schedule, so without ``"mask"`` the mask function is called with the step count and masks
  every leaf out — silently, λ then does nothing. It also turns every numeric argument,
  defaults included, into a traced hyperparameter: a static ``metrics_every`` keeps
  ``prox_l1``'s statistics free of a per-step ``lax.cond``.

Each training run is a ``lax.scan``; every ``--eval-every`` steps it computes the validation loss
and feeds it to ``optareg.early_stopping`` (Keras semantics, best weights kept); the run's result
is the restored ``best_params``. Under ``vmap`` nothing stops early — a run whose patience ran
out keeps stepping, but its early-stopping state is frozen, so what it returns is what a stopped
run would return. The whole grid of one regularizer is **one** call of
``jax.jit(jax.vmap(jax.vmap(train, seeds), λ))``.

Printed: validation error (mean ± std over seeds, min–max) and test error per λ, the λ chosen
on the seed-averaged validation error, the λ each single seed would have chosen and what that
choice costs on the test set, and the wall time of the vmapped call against the same runs in a
Python loop (one jitted run, compiled once since λ and the seed are arguments), with the compiled
program's memory. Saves ``lambda_seed_sweep.png`` in ``--out`` (default ``examples/out``).

Run: ``python examples/lambda_seed_sweep.py`` (``--seeds``, ``--num-lambdas``, ``--steps``,
``--hidden``, ``--label-noise``, ``--eval-every``, ``--patience``, ``--families``, ``--loop``,
``--out``).
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

FIG = "lambda_seed_sweep.png"  # written to --out
FAMILIES = ("weight decay", "L1 (prox)")


def load_data(n_train: int = 300, n_val: int = 600, label_noise: float = 0.25, seed: int = 0):
    """Train / validation / test arrays; ``label_noise`` of the training labels are random."""
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    y = y.astype(np.int32)
    x_tr, x_rest, y_tr, y_rest = train_test_split(
        x, y, train_size=n_train, random_state=seed, stratify=y
    )
    rng = np.random.default_rng(seed)
    noisy = rng.random(n_train) < label_noise
    y_tr = np.where(noisy, rng.integers(0, 10, n_train), y_tr).astype(np.int32)
    x_va, x_te, y_va, y_te = train_test_split(
        x_rest, y_rest, train_size=n_val, random_state=seed, stratify=y_rest
    )
    return tuple(jnp.asarray(a) for a in (x_tr, y_tr, x_va, y_va, x_te, y_te))


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


def error(params, x, y):
    return jnp.mean(jnp.argmax(mlp(params, x), -1) != y)


def optimizer(family: str, lr: float):
    """The chain of ``family``, and where its traced strength sits: ``(chain index, name)``.

    ``static_args`` keeps the mask function (and ``prox_l1``'s ``metrics_every``) out of the
    injected hyperparameters: ``inject_hyperparams`` treats every callable argument as a
    schedule, so ``mask=decay_mask`` would be *called with the step count* and mask everything
    out, silently.
    """
    mask = optareg.masks.decay_mask
    if family == FAMILIES[0]:
        inject = optax.inject_hyperparams(optareg.add_decayed_weights, static_args=("mask",))
        tx = optareg.chain(
            optax.scale_by_adam(), inject(0.0, mask=mask), optax.scale_by_learning_rate(lr)
        )
        return tx, (1, "weight_decay")
    inject = optax.inject_hyperparams(optareg.prox_l1, static_args=("mask", "metrics_every"))
    return optareg.chain(optax.adam(lr), inject(0.0, lr, mask=mask)), (1, "l1")


def make_train(family, data, *, lr, hidden, steps, batch, eval_every, patience):
    """``train(λ, seed) -> {metric: scalar}`` of one whole run, and ``init(λ, seed)``."""
    x_tr, y_tr, x_va, y_va, x_te, y_te = data
    tx, (position, hp) = optimizer(family, lr)
    es = optareg.early_stopping(patience)

    def init(lam, seed):
        """The state a run carries: parameters, optimizer state (λ in it), early stopping."""
        params = init_mlp(jax.random.fold_in(jax.random.key(seed), 0), x_tr.shape[1], hidden, 10)
        opt_state = tx.init(params)
        opt_state[position].hyperparams[hp] = lam  # λ is traced: one program for every λ
        return params, opt_state, es.init(params)

    def train(lam, seed):
        key = jax.random.key(seed)
        params, opt_state, es_state = init(lam, seed)

        def step(carry, k):
            params, opt_state = carry
            idx = jax.random.randint(k, (batch,), 0, x_tr.shape[0])
            grads = jax.grad(loss_fn)(params, x_tr[idx], y_tr[idx])
            updates, opt_state = tx.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), None

        def block(carry, k):
            params, opt_state, es_state = carry
            keys = jax.random.split(k, eval_every)
            (params, opt_state), _ = jax.lax.scan(step, (params, opt_state), keys)
            es_state = es.update(es_state, loss_fn(params, x_va, y_va), params)
            return (params, opt_state, es_state), None

        keys = jax.random.split(jax.random.fold_in(key, 1), steps // eval_every)
        (params, _, es_state), _ = jax.lax.scan(block, (params, opt_state, es_state), keys)
        best = es_state.best_params
        kernels = [params["dense1"]["kernel"], params["dense2"]["kernel"]]
        zeros = sum(jnp.sum(k == 0) for k in kernels) / sum(k.size for k in kernels)
        return {
            "val": error(params, x_va, y_va),  # the final weights
            "test": error(params, x_te, y_te),
            "zeros": zeros,
            "val_es": error(best, x_va, y_va),  # the early-stopped (best) weights
            "test_es": error(best, x_te, y_te),
            "best_step": (es_state.best_step + 1) * eval_every,
        }

    return train, init


class Clock:
    """Wall-clock and process (CPU) time of a block: ``with Clock() as c: ...; c.wall, c.cpu``."""

    def __enter__(self):
        self._w, self._c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self._w
        self.cpu = time.process_time() - self._c


def sweep(train, lambdas, seeds):
    """``{metric: [λ, seed]}`` of every run from one jitted call, its timings and memory."""
    fn = jax.jit(jax.vmap(jax.vmap(train, in_axes=(None, 0)), in_axes=(0, None)))
    lam, sd = jnp.asarray(lambdas, jnp.float32), jnp.asarray(seeds, jnp.int32)
    with Clock() as compile_time:
        compiled = fn.lower(lam, sd).compile()
    with Clock() as run_time:
        out = jax.block_until_ready(compiled(lam, sd))
    out = {k: np.asarray(v) for k, v in out.items()}
    return out, compile_time, run_time, compiled.memory_analysis()


def loop(train, lambdas, seeds):
    """The same runs one at a time, from a Python loop over one jitted run (compiled once)."""
    fn = jax.jit(train)
    with Clock() as first:  # compiles, then runs (λ₀, seed₀)
        jax.block_until_ready(fn(jnp.float32(lambdas[0]), jnp.int32(seeds[0])))
    with Clock() as rest:
        val = [[float(fn(jnp.float32(lam), jnp.int32(s))["val"]) for s in seeds] for lam in lambdas]
    return np.array(val), first, rest


def summarize(family, lambdas, seeds, r):
    """Print the table of one sweep; returns the choices."""
    val, test = r["val"], r["test"]
    print(
        f"\n{family}: error of the final weights (and of the early-stopped ones), {len(seeds)} seeds"
    )
    header = (
        f"{'λ':>9} | {'val mean':>8} {'± std':>6} {'min':>6} {'max':>6} | {'test mean':>9} | "
        f"{'val ES':>6} {'test ES':>7} {'ES step':>7} | {'zeros':>5}"
    )
    print(header)
    print("-" * len(header))
    for i, lam in enumerate(lambdas):
        print(
            f"{lam:9.2e} | {val[i].mean():8.4f} {val[i].std():6.4f} {val[i].min():6.4f} "
            f"{val[i].max():6.4f} | {test[i].mean():9.4f} | {r['val_es'][i].mean():6.4f} "
            f"{r['test_es'][i].mean():7.4f} {r['best_step'][i].mean():7.0f} | "
            f"{r['zeros'][i].mean():5.3f}"
        )
    print("-" * len(header))
    best = int(np.argmin(val.mean(axis=1)))
    per_seed = np.argmin(val, axis=0)  # the λ each seed alone would pick (ties: the smallest)
    test_mean = test.mean(axis=1)
    regret = test_mean[per_seed] - test_mean[best]
    print(
        f"best λ on the seed-averaged validation error: {lambdas[best]:.2e} (val "
        f"{val[best].mean():.4f} ± {val[best].std():.4f}, test {test_mean[best]:.4f}); "
        f"λ = 0: test {test_mean[0]:.4f}"
    )
    print("a single seed would pick λ = " + ", ".join(f"{lambdas[j]:.1e}" for j in per_seed))
    print(
        f"  test error of a single seed's pick minus that of the seed-averaged pick: "
        f"{regret.min():+.4f} … {regret.max():+.4f} (mean {regret.mean():+.4f})"
    )
    own = np.mean(val[per_seed, np.arange(len(seeds))])
    pooled = np.mean(val[per_seed].mean(axis=1))
    verdict = "is optimistic" if own < pooled else "is not optimistic here"  # all seeds agree
    print(
        f"  the val error a single seed reports at its pick, {own:.4f} on average, {verdict}: "
        f"the seed mean at those λ is {pooled:.4f}"
    )
    return {"best": best, "per_seed": per_seed, "regret": regret}


def state_bytes(init) -> int:
    """Bytes of the state one run carries through its ``lax.scan`` (from shapes only)."""
    shapes = jax.eval_shape(init, jnp.float32(0), jnp.int32(0))
    return int(sum(np.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(shapes)))


def plot(results, path, setting: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4.2), squeeze=False)
    for ax, (family, r) in zip(axes[0], results.items(), strict=True):
        lam, val, test = r["lambdas"], r["val"], r["test"]
        x = np.where(lam > 0, lam, lam[lam > 0].min() / 3)  # λ = 0 drawn at the left edge
        for s in range(val.shape[1]):
            ax.plot(
                x, val[:, s], "-", color="0.75", lw=0.8, label="one seed (val)" if s == 0 else None
            )
        m, sd = val.mean(axis=1), val.std(axis=1)
        ax.fill_between(x, m - sd, m + sd, color="C0", alpha=0.2)
        ax.plot(x, m, "o-", color="C0", label="validation, mean ± std over seeds")
        ax.plot(x, test.mean(axis=1), "s--", color="C1", label="test, mean over seeds")
        ax.plot(x, r["test_es"].mean(axis=1), ":", color="C2", label="test, early-stopped weights")
        b = r["choice"]["best"]
        ax.axvline(x[b], color="C0", ls=":", lw=1)
        picks, counts = np.unique(r["choice"]["per_seed"], return_counts=True)
        for j, n in zip(picks, counts, strict=True):
            ax.plot(x[j], val[j].min(), "v", color="C3", ms=4 + 2 * n)
        ax.plot([], [], "v", color="C3", label="λ a single seed picks (size: how many seeds)")
        ax.set_xscale("log")
        ax.set_xticks(x)
        ax.set_xticklabels(["0"] + [f"{v:.0e}" for v in lam[1:]], rotation=45, fontsize=7)
        ax.set(title=family, xlabel="λ", ylabel="classification error (final weights)")
        # every point in view, the largest λ included; a log axis keeps the minimum readable
        lo = min(val.min(), test.mean(axis=1).min(), r["test_es"].mean(axis=1).min())
        ax.set_yscale("log")
        ax.set_ylim(0.85 * lo, 1.3 * max(val.max(), test.mean(axis=1).max()))
        ax.legend(fontsize=7, loc="upper left")
    fig.suptitle(f"λ × seed sweep, one jit(vmap(vmap(train))) call per regularizer ({setting})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None):
    parser = _cli.parser(__doc__)
    parser.add_argument("--seeds", type=_cli.positive_int, default=5, help="seeds per λ")
    parser.add_argument(
        "--num-lambdas", type=_cli.int_at_least(2), default=8, help="grid size (λ = 0 added)"
    )
    parser.add_argument(
        "--steps",
        type=_cli.positive_int,
        default=400,
        help="training steps (a multiple of --eval-every)",
    )
    parser.add_argument("--hidden", type=_cli.positive_int, default=256, help="hidden units")
    parser.add_argument(
        "--batch-size", type=_cli.positive_int, default=32, help="minibatch size (with replacement)"
    )
    parser.add_argument("--lr", type=_cli.positive_float, default=3e-3, help="Adam learning rate")
    parser.add_argument(
        "--label-noise",
        type=_cli.probability,
        default=0.25,
        help="fraction of training labels replaced by random ones",
    )
    parser.add_argument(
        "--eval-every", type=_cli.positive_int, default=25, help="steps between evaluations"
    )
    parser.add_argument(
        "--patience", type=_cli.positive_int, default=4, help="early stopping, in evaluations"
    )
    parser.add_argument(
        "--families",
        nargs="+",
        choices=("wd", "l1"),
        default=["wd", "l1"],
        help="the sweeps to run: weight decay, L1",
    )
    parser.add_argument(
        "--loop",
        choices=("none", "first", "all"),
        default="first",
        help="time the same runs in a Python loop for the first sweep, all sweeps or none",
    )
    _cli.add_out(parser)
    args = parser.parse_args(argv)
    if args.steps % args.eval_every:
        parser.error("--steps must be a multiple of --eval-every")
    t0 = time.perf_counter()

    data = load_data(label_noise=args.label_noise)
    seeds = np.arange(args.seeds)
    grids = {
        FAMILIES[0]: np.concatenate([[0.0], np.geomspace(1e-2, 30.0, args.num_lambdas)]),
        FAMILIES[1]: np.concatenate([[0.0], np.geomspace(1e-3, 3.0, args.num_lambdas)]),
    }
    chosen = {"wd": FAMILIES[0], "l1": FAMILIES[1]}
    grids = {f: g for f, g in grids.items() if f in {chosen[c] for c in args.families}}
    kw = dict(
        lr=args.lr,
        hidden=args.hidden,
        steps=args.steps,
        batch=args.batch_size,
        eval_every=args.eval_every,
        patience=args.patience,
    )
    print(
        f"digits: {data[0].shape[0]} train ({args.label_noise:.0%} random labels) / "
        f"{data[2].shape[0]} val / {data[4].shape[0]} test; "
        f"MLP 64-{args.hidden}-10, Adam η={args.lr:g}, {args.steps} steps of {args.batch_size}; "
        f"early stopping (ES) on the val loss every {args.eval_every} steps, patience "
        f"{args.patience}"
    )
    results, timing = {}, []
    for k, (family, lambdas) in enumerate(grids.items()):
        train, init = make_train(family, data, **kw)
        r, t_compile, t_run, mem = sweep(train, lambdas, seeds)
        r["choice"] = summarize(family, lambdas, seeds, r)
        results[family] = dict(r, lambdas=lambdas)
        row = dict(family=family, runs=r["val"].size, compile=t_compile, run=t_run)
        row.update(temp=mem.temp_size_in_bytes, state=state_bytes(init) * r["val"].size)
        if args.loop == "all" or (args.loop == "first" and k == 0):
            val_loop, first, rest = loop(train, lambdas, seeds)
            row.update(loop_first=first, loop=rest, gap=float(np.abs(val_loop - r["val"]).max()))
        timing.append(row)
    print_timing(timing)
    setting = (
        f"digits MLP, {data[0].shape[0]} training images, {args.label_noise:.0%} random labels"
    )
    path = _cli.figure_path(args.out, FIG)
    plot(results, path, setting)
    print(f"saved {path}; done in {time.perf_counter() - t0:.1f} s")
    return {"results": results, "timing": timing}


def print_timing(timing):
    print("\ntiming: wall clock s (CPU s), the machine's other load included")
    header = (
        f"{'sweep':<12} {'runs':>4} | {'vmap compile':>13} {'vmap run':>12} | "
        f"{'loop compile+1':>14} {'loop rest':>12} {'loop/vmap':>9} | {'temp MiB':>8} "
        f"{'state MiB':>9} {'|Δval|':>6}"
    )
    print(header)
    print("-" * len(header))
    for t in timing:
        c, r = t["compile"], t["run"]
        cols = f"{c.wall:6.1f} ({c.cpu:4.1f}) {r.wall:5.1f} ({r.cpu:4.1f})"
        if "loop" in t:
            f, rest = t["loop_first"], t["loop"]
            ratio = (f.wall + rest.wall) / (c.wall + r.wall)
            loop_cols = (
                f"{f.wall:7.1f} ({f.cpu:4.1f}) {rest.wall:5.1f} ({rest.cpu:4.1f}) {ratio:9.2f}"
            )
            gap = f"{t['gap']:6.0e}"
        else:
            loop_cols, gap = f"{'-':>14} {'-':>12} {'-':>9}", f"{'-':>6}"
        print(
            f"{t['family']:<12} {t['runs']:4d} | {cols} | {loop_cols} | {t['temp'] / 2**20:8.1f} "
            f"{t['state'] / 2**20:9.2f} {gap}"
        )
    print("-" * len(header))
    print(
        "loop/vmap = wall time of (compile + every run) in a loop over that of the one vmapped "
        "call; temp = XLA scratch memory of the vmapped program (memory_analysis()); state = "
        "what all runs carry (params, Adam moments, λ, early-stopping best params); |Δval| = "
        "max difference of the validation errors, vmap vs loop"
    )


if __name__ == "__main__":
    main()
