"""AdamW on a small character-level transformer: decay masks, conventions, equilibrium norms.

Data: the source code of a few standard-library modules (read with ``inspect``, so it ships with
every Python; no download), as characters over a 96-symbol alphabet; first 90 % train, last 10 %
validation. Model: a decoder-only pre-LayerNorm transformer in Flax NNX (token and position
embeddings, causal self-attention, GELU MLP, LayerNorm before the head; biases only in the MLP's
first layer and the head). Schedule: warmup-stable-decay (linear warmup over 10 % to ``η``,
constant, linear decay to 0 over the last 20 %). Three runs, from the same weights and on the
same batches:

* ``pytorch + decay_mask``:     AdamW, decay ``η_t·λ`` per step on the leaves of
  ``optareg.masks.decay_mask`` (no decay on biases, LayerNorm scales, embeddings);
* ``pytorch, decay all``:       the same decay on every leaf: the LayerNorm gains and the
  embeddings shrink;
* ``independent + decay_mask``: ``decay_schedule(λ·η_max, η, "independent")``: the same decay
  per step at the peak learning rate (``λ·η_max``: the same *effective* decay ``η·λ`` as the
  first run in the stable phase) but constant, so it keeps decaying during the warmup and the
  final decay, while the first run's decay ``η_t·λ`` follows the learning rate.

Every run is the same chain, ``optareg.chain(track(name="raw"), scale_by_adam(),
scale_by_learning_rate(η), decoupled_weight_decay(λ_t, mask=decay_mask),
decoupled_weight_decay(λ'_t, mask=not decay_mask), track(name="step", per_leaf=True))``, with the
per-step decays ``λ_t``, ``λ'_t`` tabulated from ``optareg.decay_schedule`` and passed *as data*:
the three runs train in one ``jax.jit`` program, ``jax.vmap``-ed over the tables (one compile
instead of three). The script checks that the first two chains are ``optax.adamw(η, λ,
mask=decay_mask)`` and ``optax.adamw(η, λ)`` (max |Δθ| after 3 steps, float32 rounding).

``track(name="raw")`` before the optimizer records the gradient norm (``raw/grad_norm``),
``track(name="step", per_leaf=True)`` after it the per-layer ``‖θ‖`` and ``‖Δθ‖/‖θ‖``
(``step/param_norm/<layer>``, ``step/update_ratio/<layer>``), read with
``optareg.metrics(opt_state)`` at every step inside the jitted ``lax.scan``; the validation loss
is computed every ``--log-every`` steps, at the end of each jitted chunk.

**The equilibrium.** With a decay ``d`` per step (``d = ηλ`` for AdamW) a weight matrix of ``C``
entries evolves as ``θ ← (1 − d)·θ − η·m̂/√v̂``. In the random-walk model of Kosson et al. (2024)
(normalized gradients ``g/√v`` of unit variance per coordinate, uncorrelated across steps and
with θ), θ is a geometrically weighted sum of the steps, and ``E‖θ‖² → η²·C·Σ_k (1 − d)^{2k} ≈
η²·C/(2d)`` (momentum redistributes each gradient over later steps but keeps its total):

    RMS(θ)* = ‖θ‖*/√C ≈ η/√(2d) = √(η/(2λ))                       (AdamW)

reached at the rate ``e^{−2dt}`` (time constant ``1/(2ηλ)`` steps); the per-step update is
smaller than ``η`` per coordinate by Adam's momentum, ``√((1 − β₁)/(1 + β₁))``, so

    ‖Δθ‖/‖θ‖* ≈ √(2d·(1 − β₁)/(1 + β₁)) = √(2ηλ·(1 − β₁)/(1 + β₁)).

Both are the small-``d`` limits of the model's exact stationary values (a 2×2 discrete Lyapunov
equation for ``(θ, m)``, solved in :func:`random_walk_equilibrium`; within 4 % here). The decay is
strong (``ηλ = 8·10⁻³``: time constant 62 steps) so that the equilibrium is reached within a
CPU-minute run; at GPT-2 settings (``η = 6·10⁻⁴``, ``λ = 0.1``) the same takes ~10⁴ steps. The
script prints, per decayed matrix, the measured RMS and ``‖Δθ‖/‖θ‖`` averaged over the end of the
stable phase next to the predictions: how close they are measures how far real gradients are
from the random-walk model (they carry signal, correlated across steps).

Saves ``transformer_weight_decay.png`` in ``--out`` (default ``examples/out``): train loss raw and smoothed (EMA) side
by side with the validation loss, the per-layer weight RMS against ``√(η_t/(2λ))``, the norms of
the leaves ``decay_mask`` leaves out (mask vs decay all), the two conventions against their
equilibria ``η_t/√(2λ_t)``, and the per-layer ``‖Δθ‖/‖θ‖``.

Run: ``python examples/transformer_weight_decay.py`` (``--steps``, ``--d-model``, ``--layers``,
``--heads``, ``--context``, ``--batch-size``, ``--lr``, ``--weight-decay``, ``--log-every``,
``--out``).

References:
  Kosson, Messmer & Jaggi, "Rotational Equilibrium: How Weight Decay Balances Learning Across
  Neural Networks", ICML 2024.
  Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019.
  Wortsman et al., "Small-scale proxies for large-scale Transformer training instabilities"
  (independent weight decay), ICLR 2024.
"""

from __future__ import annotations

import importlib
import inspect
import time

import _cli
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import optareg

FIG = "transformer_weight_decay.png"  # written to --out
MODULES = ("textwrap", "functools", "heapq", "fractions", "shlex", "string", "bisect", "random")
LOGGED = ("raw/grad_norm", "step/param_norm", "step/update_ratio")  # what the tables and plots use
VOCAB = 96  # "\n" and the 95 printable ASCII characters; anything else becomes "?"
RUNS = ("pytorch + decay_mask", "pytorch, decay all", "independent + decay_mask")


# --------------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------------


def load_corpus(max_chars: int) -> np.ndarray:
    """Standard-library source as int32 character ids (0 = newline, 1..95 = ' '..'~')."""
    text = "\n".join(inspect.getsource(importlib.import_module(m)) for m in MODULES)
    codes = np.frombuffer(text[:max_chars].encode("ascii", "replace"), np.uint8).astype(np.int32)
    ids = np.where((codes >= 32) & (codes < 127), codes - 31, ord("?") - 31)
    return np.where(codes == 10, 0, ids).astype(np.int32)


# --------------------------------------------------------------------------------------------
# model
# --------------------------------------------------------------------------------------------


class Block(nnx.Module):
    """Pre-LayerNorm block: x + attn(ln1(x)), then x + mlp(ln2(x)).

    As in many recent LMs, only the MLP's first layer has a bias (fewer leaves: a cheaper
    compile); the head has one too, so ``decay_mask`` still has biases to leave out.
    """

    def __init__(self, d: int, heads: int, *, rngs: nnx.Rngs):
        self.heads = heads
        self.ln1 = nnx.LayerNorm(d, use_bias=False, rngs=rngs)
        self.qkv = nnx.Linear(d, 3 * d, use_bias=False, rngs=rngs)
        self.proj = nnx.Linear(d, d, use_bias=False, rngs=rngs)
        self.ln2 = nnx.LayerNorm(d, use_bias=False, rngs=rngs)
        self.fc = nnx.Linear(d, 4 * d, rngs=rngs)
        self.out = nnx.Linear(4 * d, d, use_bias=False, rngs=rngs)

    def __call__(self, x):
        b, t, d = x.shape
        q, k, v = jnp.split(self.qkv(self.ln1(x)), 3, axis=-1)
        heads = [a.reshape(b, t, self.heads, d // self.heads) for a in (q, k, v)]
        att = jax.nn.dot_product_attention(*heads, is_causal=True).reshape(b, t, d)
        x = x + self.proj(att)
        return x + self.out(jax.nn.gelu(self.fc(self.ln2(x))))


class CharTransformer(nnx.Module):
    """Decoder-only character language model."""

    def __init__(self, d: int, layers: int, heads: int, context: int, *, rngs: nnx.Rngs):
        self.embed = nnx.Embed(VOCAB, d, rngs=rngs)
        self.pos_embedding = nnx.Param(0.02 * jax.random.normal(rngs.params(), (context, d)))
        self.blocks = nnx.List([Block(d, heads, rngs=rngs) for _ in range(layers)])
        self.ln_f = nnx.LayerNorm(d, use_bias=False, rngs=rngs)
        self.head = nnx.Linear(d, VOCAB, rngs=rngs)

    def __call__(self, ids):
        x = self.embed(ids) + self.pos_embedding[: ids.shape[-1]]
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


# --------------------------------------------------------------------------------------------
# optimizers
# --------------------------------------------------------------------------------------------


def wsd_schedule(lr: float, steps: int) -> optax.Schedule:
    """Warmup (10 %) – stable – linear decay to 0 (last 20 %)."""
    warm, decay = max(1, steps // 10), max(1, steps // 5)
    return optax.join_schedules(
        [
            optax.linear_schedule(0.0, lr, warm),
            optax.constant_schedule(lr),
            optax.linear_schedule(lr, 0.0, decay),
        ],
        [warm, steps - decay],
    )


def no_decay_mask(params):
    """The complement of ``decay_mask``: biases, LayerNorm scales, embeddings."""
    return jax.tree.map(lambda keep: not keep, optareg.masks.decay_mask(params))


def optimizer(lr, decay, b1, b2, *, track=True) -> optax.GradientTransformationExtraArgs:
    """Adam, then decoupled decay ``λ_t`` on the matrices and ``λ'_t`` on everything else.

    ``decay`` is a ``[2, steps]`` table: row 0 is λ_t for the leaves of ``decay_mask``, row 1 is
    λ'_t for the others (0 = not decayed), built with :func:`optareg.decay_schedule`. It enters
    as data, so every run is the same program and ``jax.vmap`` trains them all at once. With
    row 0 = ``decay_schedule(λ, η, "pytorch")`` and row 1 = 0 this *is*
    ``optax.adamw(η, λ, mask=decay_mask)`` (checked by :func:`check_adamw`).
    """
    decay = jnp.asarray(decay, jnp.float32)
    last = decay.shape[-1] - 1

    def table(row):
        return lambda count: decay[row, jnp.minimum(count, last)]

    core = (
        optax.scale_by_adam(b1=b1, b2=b2),
        optax.scale_by_learning_rate(lr),
        optareg.decoupled_weight_decay(table(0), mask=optareg.masks.decay_mask),
        optareg.decoupled_weight_decay(table(1), mask=no_decay_mask),
    )
    if not track:
        return optareg.chain(*core)
    # track before the optimizer sees the raw gradients; after it, the final step Δθ
    return optareg.chain(
        optareg.track(name="raw"), *core, optareg.track(name="step", per_leaf=True)
    )


def decay_tables(lr, wd: float, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """``[run, 2, steps]`` decay tables of :data:`RUNS`, and the learning rate per step."""
    t = jnp.arange(steps)
    eta = np.asarray(jax.vmap(lr)(t))
    pytorch = np.asarray(jax.vmap(optareg.decay_schedule(wd, lr, "pytorch"))(t))
    # the same decay per step at the peak learning rate: λ_independent = λ·η_max
    independent = optareg.decay_schedule(wd * eta.max(), lr, "independent")
    indep = np.asarray(jax.vmap(independent)(t))
    zero = np.zeros(steps)
    tables = np.stack(
        [
            [pytorch, zero],  # RUNS[0]: decay_mask
            [pytorch, pytorch],  # RUNS[1]: every leaf decayed
            [indep, zero],  # RUNS[2]: independent convention, decay_mask
        ]
    )
    return tables.astype(np.float32), eta


def check_adamw(params, lr, wd, b1, b2, tables, steps=3) -> dict[str, float]:
    """max |Δθ| after ``steps`` identical updates: the first two runs' chains vs ``optax.adamw``."""
    pairs = {
        RUNS[0]: optax.adamw(lr, b1=b1, b2=b2, weight_decay=wd, mask=optareg.masks.decay_mask),
        RUNS[1]: optax.adamw(lr, b1=b1, b2=b2, weight_decay=wd),
    }
    ours = [optimizer(lr, tables[i], b1, b2, track=False) for i in range(len(pairs))]

    @jax.jit
    def gaps():
        out = []
        for reference, mine in zip(pairs.values(), ours, strict=True):
            a = b = params
            sa, sb = reference.init(a), mine.init(b)
            for t in range(steps):
                g = jax.tree.map(lambda x, t=t: jnp.cos(37.0 * x + t), a)  # any gradient will do
                ua, sa = reference.update(g, sa, a)
                ub, sb = mine.update(g, sb, b)
                a, b = optax.apply_updates(a, ua), optax.apply_updates(b, ub)
            diffs = jax.tree.map(lambda x, y: jnp.max(jnp.abs(x - y)), a, b)
            out.append(jnp.max(jnp.stack(jax.tree.leaves(diffs))))
        return jnp.stack(out)

    return dict(zip(pairs, map(float, gaps()), strict=True))


# --------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------


def make_chunk(graphdef, lr, b1, b2, train_ids, val_x, val_y, *, batch, context, length):
    """``chunk(params, opt_state, key, decay)``: ``length`` steps of every run (``lax.scan`` over
    steps of a step ``jax.vmap``-ed over the runs: the runs share each batch), then the
    validation loss of every run. Arguments and results carry a leading run axis."""

    def loss_fn(params, x, y):
        logits = nnx.merge(graphdef, params)(x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    def run_step(params, opt_state, decay, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, opt_state = optimizer(lr, decay, b1, b2).update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        metrics = optareg.metrics(opt_state)
        logged = {k: v for k, v in metrics.items() if k.startswith(LOGGED)}
        return params, opt_state, {"loss": loss, **logged}

    all_runs = jax.vmap(run_step, in_axes=(0, 0, 0, None, None))

    def chunk(params, opt_state, key, decay):
        def step(carry, k):
            start = jax.random.randint(k, (batch,), 0, train_ids.shape[0] - context - 1)
            idx = start[:, None] + jnp.arange(context)
            params, opt_state, logged = all_runs(*carry, decay, train_ids[idx], train_ids[idx + 1])
            return (params, opt_state), logged

        keys = jax.random.split(key, length)
        (params, opt_state), trace = jax.lax.scan(step, (params, opt_state), keys)
        val = jax.vmap(loss_fn, in_axes=(0, None, None))(params, val_x, val_y)
        return params, opt_state, jax.tree.map(lambda x: x.T, trace), val  # trace: [run, step]

    return chunk


def train(chunk, init_tx, params, tables, *, steps, log_every, seed):
    """All runs at once, in jitted chunks of ``log_every`` steps.

    Every run starts from ``params`` and sees the same batches. Returns the per-run final
    params, per-step histories ``{key: [run, step]}``, validation losses ``[run, log]`` and the
    (wall, CPU) times of the first chunk (compilation included) and of the whole loop.
    """
    tables = jnp.asarray(tables)
    n = tables.shape[0]
    params = jax.tree.map(lambda x: jnp.broadcast_to(x, (n, *x.shape)), params)
    opt_state = jax.vmap(lambda tab, p: init_tx(tab).init(p))(tables, params)
    fn = jax.jit(chunk)
    key = jax.random.key(seed)
    traces, val, t_first = [], [], None
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(steps // log_every):
        params, opt_state, trace, v = fn(params, opt_state, jax.random.fold_in(key, i), tables)
        traces.append(jax.device_get(trace))
        val.append(np.asarray(v))
        if t_first is None:
            t_first = (time.perf_counter() - t0, time.process_time() - c0)
    history = {k: np.concatenate([t[k] for t in traces], axis=1) for k in traces[0]}
    t_all = (time.perf_counter() - t0, time.process_time() - c0)
    return params, history, np.stack(val, axis=1), t_first, t_all


def init_model(args):
    """``(graphdef, params)`` of a fresh model (initialized in one jitted call: faster)."""

    @nnx.jit
    def make():
        return CharTransformer(
            args.d_model, args.layers, args.heads, args.context, rngs=nnx.Rngs(args.seed)
        )

    return nnx.split(make(), nnx.Param)


def run_all(args):
    ids = load_corpus(args.max_chars)
    n_train = int(0.9 * len(ids))
    train_ids, val_ids = jnp.asarray(ids[:n_train]), ids[n_train:]
    n_val = min(64, (len(val_ids) - 1) // args.context)
    starts = np.arange(n_val) * args.context
    val_x = jnp.asarray(np.stack([val_ids[s : s + args.context] for s in starts]))
    val_y = jnp.asarray(np.stack([val_ids[s + 1 : s + args.context + 1] for s in starts]))

    graphdef, params = init_model(args)
    lr = wsd_schedule(args.lr, args.steps)
    tables, eta = decay_tables(lr, args.weight_decay, args.steps)
    chunk = make_chunk(
        graphdef,
        lr,
        args.b1,
        args.b2,
        train_ids,
        val_x,
        val_y,
        batch=args.batch_size,
        context=args.context,
        length=args.log_every,
    )
    out = train(
        chunk,
        lambda tab: optimizer(lr, tab, args.b1, args.b2),
        params,
        tables,
        steps=args.steps,
        log_every=args.log_every,
        seed=args.seed,
    )
    t0, c0 = time.perf_counter(), time.process_time()
    gaps = check_adamw(params, lr, args.weight_decay, args.b1, args.b2, tables)
    t_check = (time.perf_counter() - t0, time.process_time() - c0)
    return out, gaps, t_check, tables, eta, params


# --------------------------------------------------------------------------------------------
# analysis
# --------------------------------------------------------------------------------------------


def ema(x: np.ndarray, beta: float) -> np.ndarray:
    """Debiased exponential moving average (what dashboards call "smoothing")."""
    out, m = np.empty(len(x)), 0.0
    for i, v in enumerate(np.asarray(x, np.float64)):
        m = beta * m + (1 - beta) * v
        out[i] = m / (1 - beta ** (i + 1))
    return out


def kernel_layers(params) -> dict[str, int]:
    """The decayed matrices (what ``decay_mask`` keeps) and their sizes, by metric path."""
    names = jax.tree.leaves(optareg.masks.path_names(params))
    keep = jax.tree.leaves(optareg.masks.decay_mask(params))
    sizes = [int(np.size(x)) for x in jax.tree.leaves(params)]
    return {n: c for n, k, c in zip(names, keep, sizes, strict=True) if k}


def excluded_layers(params) -> list[str]:
    """The LayerNorm scales and embeddings: the leaves ``decay_mask`` leaves out (biases aside)."""
    names = jax.tree.leaves(optareg.masks.path_names(params))
    return [n for n in names if n.endswith("scale") or "embed" in n]


def random_walk_equilibrium(eta: float, decay: float, b1: float) -> tuple[float, float]:
    """Exact stationary ``(RMS(θ), ‖Δθ‖/‖θ‖)`` of the random-walk model, per unit-variance coordinate.

    ``θ_{t+1} = (1 − d)·θ_t − η·m_t``, ``m_t = β₁·m_{t−1} + (1 − β₁)·ξ_t`` with white ``ξ`` of unit
    variance: ``z_t = (θ_t, m_{t−1})`` follows ``z_{t+1} = A z_t + b ξ_t``; its stationary
    covariance solves ``P = A P Aᵀ + b bᵀ`` (``vec P = (I − A⊗A)⁻¹ vec(b bᵀ)``).
    """
    a = np.array([[1 - decay, -eta * b1], [0.0, b1]])
    b = np.array([-eta * (1 - b1), 1 - b1])
    p = np.linalg.solve(np.eye(4) - np.kron(a, a), np.outer(b, b).ravel()).reshape(2, 2)
    c = np.array([-decay, -eta * b1])  # Δθ_t = −dθ_t − ηβ₁m_{t−1} − η(1 − β₁)ξ_t
    step = c @ p @ c + (eta * (1 - b1)) ** 2
    return float(np.sqrt(p[0, 0])), float(np.sqrt(step / p[0, 0]))


def equilibrium_table(history, layers, eta, decay, b1, window):
    """Per decayed matrix: measured vs predicted RMS(θ) and ‖Δθ‖/‖θ‖, averaged over ``window``."""
    lo, hi = window
    rows = []
    for path, size in layers.items():
        rms = history[f"step/param_norm/{path}"][lo:hi] / np.sqrt(size)
        ratio = history[f"step/update_ratio/{path}"][lo:hi]
        d = decay[lo:hi]
        rms_pred = eta[lo:hi] / np.sqrt(2 * d)
        ratio_pred = np.sqrt(2 * d * (1 - b1) / (1 + b1))
        rows.append((path, size, rms.mean(), rms_pred.mean(), ratio.mean(), ratio_pred.mean()))
    return rows


def run_rows(params, history, val, layers, excluded, beta):
    """One summary row per run (final values)."""
    rows = []
    for r, name in enumerate(RUNS):
        norm = {
            k[len("step/param_norm/") :]: v[r, -1]
            for k, v in history.items()
            if k.startswith("step/param_norm/")
        }
        kernel_rms = np.mean([norm[p] / np.sqrt(c) for p, c in layers.items()])
        ln = np.sqrt(sum(norm[p] ** 2 for p in excluded if p.endswith("scale")))
        emb = np.sqrt(sum(norm[p] ** 2 for p in excluded if "embed" in p))
        rows.append(
            dict(
                run=name,
                train=float(ema(history["loss"][r], beta)[-1]),
                val=float(val[r, -1]),
                val_best=float(val[r].min()),
                kernel_rms=float(kernel_rms),
                ln_norm=float(ln),
                embed_norm=float(emb),
                grad_norm=float(history["raw/grad_norm"][r, -1]),
            )
        )
    return rows


def print_tables(rows, eq, gaps, timings, args):
    print(
        f"char transformer: d={args.d_model}, {args.layers} layers, {args.heads} heads, context "
        f"{args.context}, batch {args.batch_size}, {args.steps} steps, warmup-stable-decay "
        f"η={args.lr:g}, λ={args.weight_decay:g} (ηλ = {args.lr * args.weight_decay:.1e} per step)"
    )
    header = (
        f"{'run':<25} {'train EMA':>9} {'val last':>8} {'val best':>8} {'kernel RMS':>10} "
        f"{'‖LN scales‖':>11} {'‖embeddings‖':>12} {'‖g‖ last':>8}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['run']:<25} {r['train']:9.4f} {r['val']:8.4f} {r['val_best']:8.4f} "
            f"{r['kernel_rms']:10.4f} {r['ln_norm']:11.3f} {r['embed_norm']:12.3f} {r['grad_norm']:8.3f}"
        )
    print("-" * len(header))
    print("losses in nats/char; kernel RMS = mean over the decayed matrices of ‖θ‖/√C, at the end")
    for name, g in gaps.items():
        ref = "optax.adamw(η, λ, mask=decay_mask)" if "mask" in name else "optax.adamw(η, λ)"
        print(f"{name!r} vs {ref}: max |Δθ| after 3 steps = {g:.1e}")

    (lo, hi), eq_rows = eq
    print()
    print(
        f"equilibrium ({RUNS[0]}, steps {lo}-{hi}, η constant): RMS* = √(η/(2λ)) = "
        f"{eq_rows[0][3]:.4f}, ‖Δθ‖/‖θ‖* = √(2ηλ(1−β₁)/(1+β₁)) = {eq_rows[0][5]:.4f}"
    )
    header2 = (
        f"{'layer':<22} {'C':>6} {'RMS':>7} {'RMS*':>7} {'meas/pred':>9} "
        f"{'‖Δθ‖/‖θ‖':>9} {'pred':>7} {'meas/pred':>9}"
    )
    print(header2)
    print("-" * len(header2))
    for path, size, rms, rms_p, ur, ur_p in eq_rows:
        print(
            f"{path:<22} {size:6d} {rms:7.4f} {rms_p:7.4f} {rms / rms_p:9.2f} "
            f"{ur:9.4f} {ur_p:7.4f} {ur / ur_p:9.2f}"
        )
    print("-" * len(header2))
    rms_exact, ratio_exact = random_walk_equilibrium(args.lr, args.lr * args.weight_decay, args.b1)
    print(
        f"exact stationary values of the random-walk model (Lyapunov): RMS* = {rms_exact:.4f}, "
        f"‖Δθ‖/‖θ‖* = {ratio_exact:.4f} (the closed forms above are their small-ηλ limits)"
    )
    r_rms = np.array([r[2] / r[3] for r in eq_rows])
    r_ur = np.array([r[4] / r[5] for r in eq_rows])
    print(
        f"measured/predicted: RMS {r_rms.min():.2f}–{r_rms.max():.2f} (median {np.median(r_rms):.2f}),"
        f" ‖Δθ‖/‖θ‖ {r_ur.min():.2f}–{r_ur.max():.2f} (median {np.median(r_ur):.2f})"
    )
    t_first, t_all, t_check = timings
    print(
        f"time, wall (CPU): {len(RUNS)} runs in one jitted program {t_all[0]:.1f} s "
        f"({t_all[1]:.1f} s), of which the first chunk with the compilation {t_first[0]:.1f} s "
        f"({t_first[1]:.1f} s); optax.adamw check {t_check[0]:.1f} s ({t_check[1]:.1f} s)"
    )


# --------------------------------------------------------------------------------------------
# figure
# --------------------------------------------------------------------------------------------


def plot(history, val, layers, excluded, eta, tables, args, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    beta = args.smoothing
    steps = np.arange(1, args.steps + 1)
    val_steps = np.arange(1, val.shape[1] + 1) * args.log_every
    colors = ["C0", "C3", "C1"]
    layer_color = [plt.cm.viridis(i / max(1, len(layers) - 1)) for i in range(len(layers))]
    fig, axes = plt.subplots(2, 3, figsize=(17, 11))

    def legend_below(ax, ncol):  # outside the axes: inside, every corner holds some curve
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=ncol, fontsize=9)

    ax = axes[0, 0]
    for r, name in enumerate(RUNS):
        ax.plot(steps, history["loss"][r], lw=0.6, color=colors[r], label=name)
    ax.set(title="train loss, raw (per step)", xlabel="step", ylabel="cross-entropy (nats/char)")
    legend_below(ax, 1)
    ax = axes[0, 1]
    for r, name in enumerate(RUNS):
        ax.plot(steps, ema(history["loss"][r], beta), color=colors[r], label=f"{name}: train")
        ax.plot(val_steps, val[r], "o", ms=3, color=colors[r])
    ax.plot([], [], "ko", ms=3, label="validation")
    ax.set(title=f"smoothed train loss (EMA β={beta}) and validation loss", xlabel="step")
    low = float(np.min(val))
    ax.set_ylim(low - 0.15, low + 1.2)
    legend_below(ax, 2)

    ax = axes[0, 2]
    for c, (p, size) in zip(layer_color, layers.items(), strict=True):
        ax.plot(steps, history[f"step/param_norm/{p}"][0] / np.sqrt(size), lw=1, color=c, label=p)
    ax.plot(
        steps,
        eta / np.sqrt(2 * np.maximum(tables[0, 0], 1e-12)),
        "k--",
        lw=1.5,
        label="√(η_t/(2λ))",
    )
    ax.set(title=f"{RUNS[0]}: per-layer RMS(θ) = ‖θ‖/√C", xlabel="step", yscale="log")
    ax.set_ylim(0.015, 0.3)
    legend_below(ax, 3)

    ax = axes[1, 0]
    for r in (0, 1):
        for p in excluded:
            ls = "-" if p.endswith("scale") else ":"
            ax.plot(steps, history[f"step/param_norm/{p}"][r], color=colors[r], ls=ls, lw=1)
        ax.plot([], [], color=colors[r], label=RUNS[r])
    ax.plot([], [], "k-", label="LayerNorm scales")
    ax.plot([], [], "k:", label="embeddings")
    ax.set(title="the leaves decay_mask leaves out: ‖θ‖", xlabel="step", yscale="log")
    legend_below(ax, 2)

    ax = axes[1, 1]
    for r in (0, 2):
        rms = np.mean(
            [history[f"step/param_norm/{p}"][r] / np.sqrt(c) for p, c in layers.items()], axis=0
        )
        ax.plot(steps, rms, color=colors[r], label=f"{RUNS[r]}: mean RMS(θ)")
        ref = eta / np.sqrt(2 * np.maximum(tables[r, 0], 1e-12))
        ax.plot(
            steps, ref, color=colors[r], ls="--", lw=1, label="η_t/√(2λ_t), λ_t = decay per step"
        )
    ax.set(title="conventions at the same peak decay per step", xlabel="step", yscale="log")
    ax.set_ylim(0.005, 0.3)
    legend_below(ax, 1)
    ax2 = ax.twinx()
    ax2.plot(steps, tables[0, 0], color=colors[0], lw=0.8, alpha=0.4)
    ax2.plot(steps, tables[2, 0], color=colors[2], lw=0.8, alpha=0.4)
    ax2.set_ylabel("decay per step λ_t (thin lines)", fontsize=8)
    ax2.set_ylim(0, 2.5 * tables[:, 0].max())

    ax = axes[1, 2]
    for c, p in zip(layer_color, layers, strict=True):
        ax.plot(steps, ema(history[f"step/update_ratio/{p}"][0], beta), lw=1, color=c)
    pred = np.sqrt(2 * tables[0, 0] * (1 - args.b1) / (1 + args.b1))
    ax.plot(steps, pred, "k--", lw=1.5, label="√(2η_tλ(1−β₁)/(1+β₁))")
    ax.set(
        title=f"{RUNS[0]}: per-layer ‖Δθ‖/‖θ‖ (EMA; layer colors as above)",
        xlabel="step",
        yscale="log",
    )
    legend_below(ax, 1)

    fig.suptitle("AdamW weight decay on a character-level transformer (optareg.track, per layer)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# --------------------------------------------------------------------------------------------


def main(argv=None):
    parser = _cli.parser(__doc__)
    parser.add_argument(
        "--steps", type=_cli.positive_int, default=400, help="steps (a multiple of --log-every)"
    )
    parser.add_argument(
        "--d-model", type=_cli.positive_int, default=48, help="model width (a multiple of --heads)"
    )
    parser.add_argument("--layers", type=_cli.positive_int, default=2, help="transformer blocks")
    parser.add_argument("--heads", type=_cli.positive_int, default=4, help="attention heads")
    parser.add_argument(
        "--context", type=_cli.positive_int, default=32, help="characters per sequence"
    )
    parser.add_argument(
        "--batch-size", type=_cli.positive_int, default=16, help="sequences per step"
    )
    parser.add_argument("--lr", type=_cli.positive_float, default=4e-3, help="peak learning rate η")
    parser.add_argument(
        "--weight-decay",
        type=_cli.nonnegative_float,
        default=2.0,
        help="AdamW λ (decay η·λ per step)",
    )
    parser.add_argument("--b1", type=_cli.decay_rate, default=0.9, help="Adam's β₁, in [0, 1)")
    parser.add_argument("--b2", type=_cli.decay_rate, default=0.99, help="Adam's β₂, in [0, 1)")
    parser.add_argument(
        "--log-every",
        type=_cli.positive_int,
        default=25,
        help="steps per jitted chunk / validation",
    )
    parser.add_argument(
        "--max-chars",
        type=_cli.int_at_least(1000),
        default=300_000,
        help="characters of the corpus used (90 %% train, 10 %% validation)",
    )
    parser.add_argument(
        "--smoothing", type=_cli.decay_rate, default=0.95, help="EMA coefficient β, in [0, 1)"
    )
    parser.add_argument("--seed", type=_cli.nonnegative_int, default=0, help="random seed")
    _cli.add_out(parser)
    args = parser.parse_args(argv)
    if args.steps % args.log_every:
        parser.error("argument --steps: must be a multiple of --log-every")
    if args.d_model % args.heads:
        parser.error("argument --d-model: must be a multiple of --heads")
    if args.context >= args.max_chars // 10 - 1:  # one validation sequence at least
        parser.error("argument --context: must be below a tenth of --max-chars minus 1")
    t0, c0 = time.perf_counter(), time.process_time()

    run = run_all(args)
    (params, history, val, t_first, t_all), gaps, t_check, tables, eta, params0 = run
    layers, excluded = kernel_layers(params0), excluded_layers(params0)
    rows = run_rows(params, history, val, layers, excluded, args.smoothing)
    window = (args.steps // 2, args.steps - args.steps // 5)  # end of the stable phase
    first = {k: v[0] for k, v in history.items()}
    eq = window, equilibrium_table(first, layers, eta, tables[0, 0], args.b1, window)
    print_tables(rows, eq, gaps, (t_first, t_all, t_check), args)
    path = _cli.figure_path(args.out, FIG)
    plot(history, val, layers, excluded, eta, tables, args, path)
    print(
        f"saved {path}; done in {time.perf_counter() - t0:.1f} s wall, "
        f"{time.process_time() - c0:.1f} s CPU (this process, imports excluded)"
    )
    return {"runs": rows, "equilibrium": eq[1], "adamw_gap": gaps}


if __name__ == "__main__":
    main()
