"""A character-level transformer without layer norm: AdamW + weight decay against Muon + the
spectral soft cap, and QK-Clip holding the attention logits under τ.

The model (pure JAX, no normalization anywhere): a token embedding table, ``--layers`` residual
blocks ``h ← h + A(h)``, ``h ← h + M(h)`` with causal multi-head attention ``A`` (square
``query`` / ``key`` / ``value`` / ``out`` kernels, heads split from the output axis) and a ReLU
MLP ``M`` (``d → 4d → d``), and an unembedding matrix. The text is Python's own standard-library
source (``inspect.getsource``: it ships with every Python; nothing is downloaded), 90 % for
training and 10 % for validation (next-character accuracy).

Runs (same initialization, same batches):

* ``adamw``: ``optax.adamw(lr, weight_decay=--wd)``, no constraint;
* ``muon+soft_cap``: ``optax.contrib.muon(lr)`` (Muon on every matrix, Adam on the rest) and
  ``optareg.spectral_clip(c, method="soft_cap")`` on every weight matrix (the embedding table is
  not one: it is a lookup, the paper treats it separately), coupled to Muon's step
  (``max_update_norm`` = η·√max(1, fan_out/fan_in), Newhouse et al. 2025, §3);
* ``muon`` and ``muon+qk_clip``: Muon at ``--qk-lr`` without spectral control, whose largest
  attention logit grows, and the same with ``optareg.qk_clip(τ)`` fed the per-head maximum
  logits of each step (Kimi K2, 2025). As in Kimi K2's algorithm the logits come from the
  forward pass of the step, i.e. of the weights *before* the update, and the rescale acts on
  the updated weights; so the logit logged at each step (the forward pass's) can exceed τ by
  what one step (and, without layer norm, the growth of the residual stream, which QK-Clip does
  not control) adds. What it shows at this size, default flags (2-core CPU): the Muon run's
  largest logit ~17 against ~12 with τ = 10; the soft-capped run ~14, with every matrix at
  σ ≤ 0.97 and a bound ~8 against ~10⁵ for AdamW at equal or better validation accuracy
  (~0.35 after 200 steps: a tiny model on a short run; the paper's gap is at 2M parameters).

The Lipschitz bound printed is stated the way Newhouse et al. state theirs, as a product of
per-layer bounds with respect to the ℓ2 norm of the residual stream: a residual block
``h + f(h)`` is ``(1 + Lip f)``-Lipschitz; the MLP's ``Lip ≤ ‖W₁‖₂‖W₂‖₂`` (ReLU is 1-Lipschitz);
for attention we use the value path ``‖W_v‖₂‖W_o‖₂`` and say plainly that this leaves out
the softmax's dependence on the queries and keys (the paper bounds it through its own
attention scaling and bounded inputs, which this small model does not adopt); the unembedding
contributes ``‖W_U‖₂``. So ``L = ‖W_U‖₂·∏(1 + ‖W_v‖‖W_o‖)(1 + ‖W₁‖‖W₂‖)`` is the bound of the
map from the embedded tokens to the logits *with the attention pattern held fixed*.

Saves ``lipschitz_transformer.png`` in ``--out`` (default ``examples/out``): validation accuracy
per run, and the largest attention logit per step of the two QK-Clip runs with τ.

Run: ``python examples/lipschitz_transformer.py`` (``--steps``, ``--d-model``, ``--cap``, ...).
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import math
import time

import _cli
import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import optax

import optareg

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

FIG = "lipschitz_transformer.png"  # written to --out
MODULES = ("textwrap", "string", "bisect", "heapq", "colorsys", "fnmatch")
RUNS = ("adamw", "muon+soft_cap", "muon", "muon+qk_clip")
COLORS = dict(zip(RUNS, ("C0", "C1", "C2", "C3"), strict=True))  # one colour per run, both panels


def load_text(max_chars: int) -> tuple[np.ndarray, int]:
    """Character ids of standard-library source (ASCII only) and the vocabulary size."""
    text = "\n".join(inspect.getsource(importlib.import_module(m)) for m in MODULES)
    text = "".join(c for c in text if 32 <= ord(c) < 127 or c == "\n")[:max_chars]
    chars = sorted(set(text))
    lookup = {c: i for i, c in enumerate(chars)}
    return np.array([lookup[c] for c in text], np.int32), len(chars)


def init_params(key, vocab, d, layers, scale):
    """Orthogonal-ish kernels scaled to spectral norm ``scale`` (inside the cap), zero out
    projections (as the paper's zero-initialized output layers)."""
    keys = iter(jax.random.split(key, 6 * layers + 2))

    def kernel(shape, s=scale):
        w = jax.random.normal(next(keys), shape) / math.sqrt(shape[0])
        return s * w / jnp.linalg.norm(w, 2)

    blocks = {}
    for i in range(layers):
        blocks[f"block{i}"] = {
            "attn": {
                "query": {"kernel": kernel((d, d))},
                "key": {"kernel": kernel((d, d))},
                "value": {"kernel": kernel((d, d))},
                "out": {"kernel": jnp.zeros((d, d))},
            },
            "mlp": {
                "fc1": {"kernel": kernel((d, 4 * d))},
                "fc2": {"kernel": jnp.zeros((4 * d, d))},
            },
        }
        next(keys)
    return {
        "embedding": jax.random.normal(next(keys), (vocab, d)),
        **blocks,
        "unembed": {"kernel": kernel((d, vocab))},
    }


def attention(p, h, heads):
    """Causal attention; returns the output and the per-head max logit (no gradient)."""
    b, t, d = h.shape
    hd = d // heads
    q, k, v = ((h @ p[n]["kernel"]).reshape(b, t, heads, hd) for n in ("query", "key", "value"))
    causal = jnp.tril(jnp.ones((t, t), bool))
    s_max = optareg.attention_max_logits(q, k, mask=causal)
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(hd)
    weights = jax.nn.softmax(jnp.where(causal, logits, -jnp.inf), axis=-1)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, t, d)
    return out @ p["out"]["kernel"], s_max


def forward(params, x, heads):
    h = params["embedding"][x]
    maxes = {}
    for name in sorted(k for k in params if k.startswith("block")):
        blk = params[name]
        a, maxes[f"{name}/attn"] = attention(blk["attn"], h, heads)
        h = h + a
        h = h + jax.nn.relu(h @ blk["mlp"]["fc1"]["kernel"]) @ blk["mlp"]["fc2"]["kernel"]
    return h @ params["unembed"]["kernel"], maxes


def lipschitz_bound(params) -> float:
    """``‖W_U‖·∏(1 + ‖W_v‖‖W_o‖)(1 + ‖W₁‖‖W₂‖)`` by float64 SVDs (see the module docstring)."""

    def s(w):
        return float(np.linalg.svd(np.asarray(w, np.float64), compute_uv=False)[0])

    bound = s(params["unembed"]["kernel"])
    for name in (k for k in params if k.startswith("block")):
        a, m = params[name]["attn"], params[name]["mlp"]
        bound *= 1 + s(a["value"]["kernel"]) * s(a["out"]["kernel"])
        bound *= 1 + s(m["fc1"]["kernel"]) * s(m["fc2"]["kernel"])
    return bound


def max_sigma(params) -> float:
    norms = optareg.spectral_norms({k: v for k, v in params.items() if k != "embedding"})
    return max(float(jnp.max(n)) for n in jax.tree.leaves(norms))


def make_tx(run, args, d):
    if run == "adamw":
        return optax.adamw(args.lr, weight_decay=args.wd)
    lr = args.qk_lr if run in ("muon", "muon+qk_clip") else args.lr
    muon = optax.contrib.muon(lr)
    if run == "muon":
        return muon
    if run == "muon+qk_clip":
        return optareg.chain(muon, optareg.qk_clip(args.tau))
    step = lr * math.sqrt(4.0)  # Muon's largest step norm: η·√max(1, fan_out/fan_in), fc1 d→4d
    return optareg.chain(
        muon, optareg.spectral_clip(args.cap, method="soft_cap", max_update_norm=step)
    )


def train(run, args, data, vocab):
    d, heads = args.d_model, args.heads
    params = init_params(jax.random.key(args.seed), vocab, d, args.layers, min(args.cap, 1.0))
    tx = make_tx(run, args, d)
    state = tx.init(params)
    train_ids, val_ids = data

    def loss_fn(p, x, y):
        logits, maxes = forward(p, x, heads)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), maxes

    @jax.jit
    def step(params, state, x, y):
        (loss, maxes), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, x, y)
        extra = {"max_logits": maxes} if run == "muon+qk_clip" else {}
        updates, state = tx.update(grads, state, params, **extra)
        top = jnp.max(jnp.stack([jnp.max(v) for v in maxes.values()]))
        return optax.apply_updates(params, updates), state, loss, top

    @jax.jit
    def accuracy(params, x, y):
        logits, _ = forward(params, x, heads)
        return jnp.mean(jnp.argmax(logits, -1) == y)

    rng = np.random.default_rng(args.seed)
    ctx = args.context
    starts = np.arange(0, len(val_ids) - ctx - 1, ctx)
    vx = np.stack([val_ids[s : s + ctx] for s in starts])
    vy = np.stack([val_ids[s + 1 : s + ctx + 1] for s in starts])
    hist = {"step": [], "val_acc": [], "max_logit": []}
    for i in range(args.steps):
        idx = rng.integers(0, len(train_ids) - ctx - 1, args.batch_size)
        x = np.stack([train_ids[j : j + ctx] for j in idx])
        y = np.stack([train_ids[j + 1 : j + ctx + 1] for j in idx])
        params, state, loss, top = step(params, state, x, y)
        hist["max_logit"].append(float(top))
        if (i + 1) % args.eval_every == 0 or i + 1 == args.steps:
            hist["step"].append(i + 1)
            hist["val_acc"].append(float(accuracy(params, vx, vy)))
    return {
        "run": run,
        "val_acc": hist["val_acc"][-1],
        "bound": lipschitz_bound(params),
        "sigma_max": max_sigma(params),
        "max_logit": max(hist["max_logit"][-max(1, args.steps // 10) :]),
        "hist": hist,
        "loss": float(loss),
    }


def plot(results, args, path):
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    for r in results:
        a1.plot(
            r["hist"]["step"],
            r["hist"]["val_acc"],
            marker="o",
            ms=3,
            label=r["run"],
            color=COLORS[r["run"]],
        )
    a1.set(xlabel="step", ylabel="validation next-character accuracy")
    a1.set_title("accuracy (higher is better)")
    a1.legend()
    for r in results:
        if r["run"] in ("muon", "muon+qk_clip"):
            a2.plot(
                np.arange(1, len(r["hist"]["max_logit"]) + 1),
                r["hist"]["max_logit"],
                label=r["run"],
                color=COLORS[r["run"]],
            )
    a2.axhline(args.tau, color="k", ls="--", lw=1, label=f"τ = {args.tau:g}")
    a2.set(xlabel="step", ylabel="largest attention logit of the step")
    a2.set_title(f"QK-Clip (Muon at lr {args.qk_lr:g})")
    a2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _runs(text: str) -> tuple[str, ...]:
    names = tuple(t.strip() for t in text.split(",") if t.strip())
    bad = [n for n in names if n not in RUNS]
    if not names or bad:
        raise argparse.ArgumentTypeError(f"runs must be among {', '.join(RUNS)}; got {text!r}")
    return names


def main(argv=None):
    p = _cli.parser(__doc__)
    p.add_argument("--steps", type=_cli.positive_int, default=200, help="training steps per run")
    p.add_argument(
        "--eval-every", type=_cli.positive_int, default=50, help="steps between evaluations"
    )
    p.add_argument("--d-model", type=_cli.int_at_least(4), default=64, help="model width")
    p.add_argument(
        "--heads", type=_cli.positive_int, default=4, help="attention heads (divide --d-model)"
    )
    p.add_argument("--layers", type=_cli.positive_int, default=2, help="residual blocks")
    p.add_argument(
        "--context", type=_cli.int_at_least(2), default=32, help="characters per sequence"
    )
    p.add_argument("--batch-size", type=_cli.positive_int, default=32, help="sequences per step")
    p.add_argument(
        "--max-chars",
        type=_cli.int_at_least(1000),
        default=60000,
        help="characters of text used (90 %% train)",
    )
    p.add_argument(
        "--lr",
        type=_cli.positive_float,
        default=0.02,
        help="learning rate of adamw and of muon+soft_cap",
    )
    p.add_argument("--wd", type=_cli.nonnegative_float, default=0.1, help="adamw's weight decay")
    p.add_argument(
        "--cap",
        type=_cli.positive_float,
        default=1.0,
        help="spectral bound c of every matrix (soft cap)",
    )
    p.add_argument(
        "--qk-lr",
        type=_cli.positive_float,
        default=0.03,
        help="Muon learning rate of the QK-Clip runs",
    )
    p.add_argument("--tau", type=_cli.positive_float, default=10.0, help="QK-Clip threshold τ")
    p.add_argument(
        "--seed", type=_cli.nonnegative_int, default=0, help="initialization and batch seed"
    )
    p.add_argument(
        "--runs",
        type=_runs,
        default=",".join(RUNS),
        help=f"comma-separated runs, a subset of {','.join(RUNS)}",
    )
    _cli.add_out(p)
    args = p.parse_args(argv)
    if args.d_model % args.heads:
        p.error("argument --heads: must divide --d-model")
    ids, vocab = load_text(args.max_chars)
    split = int(0.9 * len(ids))
    if len(ids) - split < 2 * args.context + 2:
        p.error("argument --context: the validation split needs at least two contexts")
    data = (ids[:split], ids[split:])
    print(
        f"{len(ids)} characters, vocabulary {vocab}, {args.layers} blocks of width "
        f"{args.d_model}, {args.steps} steps per run"
    )
    results = []
    for run in args.runs:
        t0 = time.perf_counter()
        results.append(train(run, args, data, vocab))
        results[-1]["seconds"] = time.perf_counter() - t0
    print(
        f"\n{'run':<15}{'val acc':>9}{'Lipschitz bound':>17}{'max σ':>8}"
        f"{'max logit (last 10%)':>22}{'s':>6}"
    )
    for r in results:
        print(
            f"{r['run']:<15}{r['val_acc']:>9.3f}{r['bound']:>17.3g}{r['sigma_max']:>8.3f}"
            f"{r['max_logit']:>22.2f}{r['seconds']:>6.1f}"
        )
    by = {r["run"]: r for r in results}
    if {"muon+soft_cap", "adamw"} <= set(by):
        print(
            f"\nmuon+soft_cap keeps every matrix at σ ≤ {by['muon+soft_cap']['sigma_max']:.3f} "
            f"(cap {args.cap:g}); adamw ends at σ_max {by['adamw']['sigma_max']:.2f}."
        )
    if {"muon+qk_clip", "muon"} <= set(by):
        print(
            f"QK-Clip: max logit {by['muon+qk_clip']['max_logit']:.2f} with τ = {args.tau:g} "
            f"against {by['muon']['max_logit']:.2f} without."
        )
    path = _cli.figure_path(args.out, FIG)
    plot(results, args, path)
    print(f"saved {path}")
    return {"runs": results, "tau": args.tau, "cap": args.cap}


if __name__ == "__main__":
    main()
