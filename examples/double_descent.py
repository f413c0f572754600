"""Double descent in random-features ridge regression, and how weight decay removes the peak.

Data: scikit-learn's bundled diabetes regression set (442 patients, 10 standardized features),
``n_train`` random patients to fit, the rest to test, repeated over ``--seeds`` random splits and
random feature draws. Model: ``p`` random ReLU features ``φ(x) = relu(xW + b)/√p`` (W, b fixed)
and a learned linear read-out ``w``, fitted by minimizing the mean-loss objective

    L(w) = 1/(2n) Σ_i (φ(x_i)·w − y_i)² + (λ/2)‖w‖²,

whose minimizer is ``w = (ΦᵀΦ + nλI)⁻¹Φᵀy = Φᵀ(ΦΦᵀ + nλI)⁻¹y``; at ``λ → 0`` it is the
minimum-norm least-squares solution (the interpolator once ``p ≥ n``).

What it shows:

* with ``λ ≈ 0`` the test error peaks at the interpolation threshold ``p = n_train``, where the
  smallest singular values of ``Φ`` go to zero and the interpolator blows up on the noise, then
  falls again as ``p`` grows (double descent);
* with weight decay (``λ = 1e-2`` in the mean-loss convention) the peak disappears;
* the curves come from the closed form; the script checks at three widths that gradient descent
  with ``optareg.chain(optareg.add_decayed_weights(λ), optax.sgd(η))`` lands on the same read-out,
  and that plain gradient descent from zero (no decay) stays in the row space of the features,
  so that it converges to the minimum-norm interpolator (the implicit regularization of gradient
  descent; in 3000 steps it is still on its way there).

Saves ``double_descent.png`` in ``--out`` (default ``examples/out``); ``scripts/figures.sh``
regenerates the copy the docs show, ``examples/figures/double_descent.png``.

Run: ``python examples/double_descent.py`` (about 10 s on 2 CPU cores).
"""

from __future__ import annotations

import time

import _cli
import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn.datasets import load_diabetes
from threadpoolctl import threadpool_limits

import optareg

FIG = "double_descent.png"  # written to --out


def load_data():
    X, y = load_diabetes(return_X_y=True)
    X = (X - X.mean(0)) / X.std(0)
    y = (y - y.mean()) / y.std()
    return X, y


def features(X, p, rng):
    """Random ReLU features, scaled by 1/√p so the kernel ΦΦᵀ/p stays O(1) as p grows."""
    W = rng.normal(size=(X.shape[1], p)) / np.sqrt(X.shape[1])
    b = 0.5 * rng.normal(size=p)
    return np.maximum(X @ W + b, 0.0) / np.sqrt(p)


def ridge(A, y, lam):
    """argmin 1/(2n)‖Aw − y‖² + (λ/2)‖w‖²; λ = 0 gives the minimum-norm least-squares solution."""
    return A.T @ ridge_dual(A @ A.T, y, [lam])[0]


def ridge_dual(K, y, lams):
    """Dual coefficients α = (K + nλI)⁺y for each λ from one eigendecomposition of K = AAᵀ.

    ``w = Aᵀα`` is the ridge solution for every width p (also p < n), and at λ = 0 it is the
    minimum-norm least-squares solution ``A⁺y`` (eigenvalues below the lstsq cutoff dropped).
    """
    n = K.shape[0]
    s, U = np.linalg.eigh(K)
    Uy = U.T @ y
    cutoff = max(s.max(), 0.0) * n * np.finfo(np.float64).eps
    out = []
    for lam in lams:
        d = s + n * lam
        inv = np.where(s > cutoff, 1.0 / np.where(s > cutoff, d, 1.0), 0.0)
        out.append(U @ (inv * Uy))
    return out


def split(n_total, n_train, rng):
    perm = rng.permutation(n_total)
    return perm[:n_train], perm[n_train:]


def test_errors(X, y, widths, lams, n_train, seeds):
    """errs[λ][i, s]: test MSE at width widths[i] for split/feature draw s."""
    errs = {lam: np.zeros((len(widths), seeds)) for lam in lams}
    for i, p in enumerate(widths):
        for s in range(seeds):
            rng = np.random.default_rng(1000 * s + 7)
            tr, te = split(len(y), n_train, rng)
            F = features(X, p, rng)
            A, B = F[tr], F[te]
            alphas = ridge_dual(A @ A.T, y[tr], lams)
            KB = B @ A.T  # test predictions are KB @ α
            for lam, alpha in zip(lams, alphas, strict=True):
                errs[lam][i, s] = np.mean((KB @ alpha - y[te]) ** 2)
    return errs


def fit_with_optareg(A, y, lam, steps):
    """Full-batch gradient descent on ½·mean((Aw − y)²) with optareg's weight decay."""
    A, y = jnp.asarray(A, jnp.float32), jnp.asarray(y, jnp.float32)
    n = A.shape[0]
    smax = float(jnp.linalg.norm(A, ord=2))
    lr = 1.0 / (smax**2 / n + lam)  # 1/L of the penalized objective
    tx = optareg.chain(optareg.add_decayed_weights(lam), optax.sgd(lr))

    def loss(w):
        return 0.5 * jnp.mean((A @ w - y) ** 2)

    def step(carry, _):
        w, state = carry
        updates, state = tx.update(jax.grad(loss)(w), state, w)
        return (optax.apply_updates(w, updates), state), None

    w0 = jnp.zeros(A.shape[1], jnp.float32)
    (w, _), _ = jax.lax.scan(step, (w0, tx.init(w0)), None, length=steps)
    return np.asarray(w, np.float64)


def check_gradient_descent(X, y, n_train, lam, steps):
    """Gradient descent with optareg lands on the closed-form read-outs used for the curves."""
    rows = []
    for p in (n_train // 2, n_train, 4 * n_train):
        rng = np.random.default_rng(7)
        tr, te = split(len(y), n_train, rng)
        F = features(X, p, rng)
        w_ref = ridge(F[tr], y[tr], lam)
        w_gd = fit_with_optareg(F[tr], y[tr], lam, steps)
        rel = np.linalg.norm(w_gd - w_ref) / np.linalg.norm(w_ref)
        mse_ref = np.mean((F[te] @ w_ref - y[te]) ** 2)
        mse_gd = np.mean((F[te] @ w_gd - y[te]) ** 2)
        rows.append((p, rel, mse_ref, mse_gd))
    return rows


def implicit_bias(X, y, n_train, steps):
    """Plain gradient descent from w = 0 (no decay) never leaves the row space of Φ.

    Every gradient Φᵀ(Φw − y)/n lies in the row space, so the iterates do too, and the only
    interpolator there is the minimum-norm one: the limit of GD is the λ → 0 curve.
    Returns the fraction of ‖w‖ outside the row space and the train MSE after ``steps``.
    """
    rng = np.random.default_rng(7)
    tr, _ = split(len(y), n_train, rng)
    A = features(X, 4 * n_train, rng)[tr]
    w = fit_with_optareg(A, y[tr], 0.0, steps)
    w_row = np.linalg.pinv(A) @ (A @ w)
    return np.linalg.norm(w - w_row) / np.linalg.norm(w), np.mean((A @ w - y[tr]) ** 2)


def plot(widths, errs, n_train, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    colors = ["tab:red", "tab:blue", "tab:green"]
    for (lam, e), c in zip(errs.items(), colors, strict=False):
        med = np.median(e, axis=1)
        lo, hi = np.percentile(e, 25, axis=1), np.percentile(e, 75, axis=1)
        label = "λ = 0 (minimum-norm)" if lam == 0.0 else f"weight decay λ = {lam:g}"
        ax.plot(widths, med, "o-", ms=3, color=c, label=label)
        ax.fill_between(widths, lo, hi, color=c, alpha=0.15)
    ax.axvline(n_train, color="gray", ls="--", lw=1)
    ax.text(n_train * 1.05, ax.get_ylim()[1] * 0.5, "p = n_train", color="gray")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("number of random features p")
    ax.set_ylabel("test MSE (median, IQR band)")
    ax.set_title("Random-features regression on diabetes: double descent")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    parser = _cli.parser(__doc__)
    parser.add_argument(
        "--n-train", type=_cli.int_at_least(2), default=80, help="training patients (of 442)"
    )
    parser.add_argument(
        "--seeds", type=_cli.positive_int, default=20, help="random splits / feature draws"
    )
    parser.add_argument(
        "--lam", type=_cli.positive_float, default=1e-2, help="weight decay (mean-loss λ)"
    )
    parser.add_argument(
        "--gd-steps", type=_cli.positive_int, default=3000, help="steps of the optareg check"
    )
    parser.add_argument("--no-plot", action="store_true", help="do not save the figure")
    _cli.add_out(parser)
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    X, y = load_data()
    n = args.n_train
    if not 2 <= n <= len(y) - 2:  # a test set of at least 2 patients
        parser.error(f"--n-train must be in [2, {len(y) - 2}] (the set has {len(y)}); got {n}")
    rel = [0.125, 0.25, 0.5, 0.75, 0.875, 0.9375, 1.0, 1.0625, 1.125, 1.25, 1.5, 2, 3, 5, 10, 20]
    widths = sorted({max(2, round(r * n)) for r in rel})
    lams = [0.0, 1e-3, args.lam]
    with threadpool_limits(1):  # tiny matrices: BLAS threads only add contention
        errs = test_errors(X, y, widths, lams, n, args.seeds)

    print(f"diabetes: n_train={n}, n_test={len(y) - n}, {args.seeds} splits; median test MSE")
    print(f"{'p':>6} {'p/n':>6} " + " ".join(f"{f'λ={lam:g}':>10}" for lam in lams))
    for i, p in enumerate(widths):
        row = " ".join(f"{np.median(errs[lam][i]):10.3f}" for lam in lams)
        print(f"{p:6d} {p / n:6.2f} {row}")

    med0 = np.median(errs[0.0], axis=1)
    med_wd = np.median(errs[args.lam], axis=1)
    peak = int(np.argmax(med0))
    print(
        f"\nλ=0: peak test MSE {med0[peak]:.2f} at p={widths[peak]} (interpolation threshold "
        f"p=n_train={n}); {med0[peak] / med0[0]:.0f}x the error at p={widths[0]}."
    )
    print(
        f"λ={args.lam:g}: max/min of the median curve = {med_wd.max() / med_wd.min():.2f} "
        f"(no peak); at p=n_train: {med_wd[widths.index(n)]:.3f} vs {med0[widths.index(n)]:.2f}."
    )

    print(
        f"\ngradient descent, optareg.chain(optareg.add_decayed_weights({args.lam:g}), optax.sgd(1/L)):"
    )
    print(f"{'p':>6} {'‖w_gd−w*‖/‖w*‖':>16} {'MSE closed':>11} {'MSE GD':>9}")
    for p, r, m_ref, m_gd in check_gradient_descent(X, y, n, args.lam, args.gd_steps):
        print(f"{p:6d} {r:16.2e} {m_ref:11.4f} {m_gd:9.4f}")
    out, train_mse = implicit_bias(X, y, n, args.gd_steps)
    reached = "reached" if train_mse < 1e-6 else f"not yet reached in {args.gd_steps} steps"
    print(
        f"no decay, p={4 * n}, GD from 0: fraction of ‖w‖ outside the row space of Φ = {out:.1e} "
        f"(train MSE {train_mse:.1e}):\n  gradient descent's implicit bias: it never leaves the "
        f"row space, so the interpolator it converges to ({reached}) is the minimum-norm one, "
        "the λ = 0 curve."
    )

    if not args.no_plot:
        path = _cli.figure_path(args.out, FIG)
        plot(widths, errs, n, path)
        print(f"\nsaved {path}")
    print(f"wall time {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
