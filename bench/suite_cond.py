"""Suite 8: what a statistic costs by what it reads, skipped behind a ``lax.cond`` or not.

``metrics_every = k`` computes a statistic behind ``lax.cond(count % k == 0, ...)``. On the
skipped steps the branch does nothing, but its *operand* must still exist as a buffer. This suite
times one donated Adam step (written out in ``jax.numpy``, as XLA sees ``optax.adamw``) on a tree
of ``(768, 3072)`` float32 leaves, alone and with a skipped conditional ``Σa²`` over one array
``a`` per leaf: the gradient (an input), the new first moment (a state output, written anyway),
the parameters (donated: updated in place after the conditional reads them) or the update ``u``
(an intermediate that the parameter update would otherwise fuse away, what ``track`` placed after
the optimizer sees), and ``Σu²`` on every step without a conditional. Two more rows give the
floor of any exact statistic on XLA:CPU, where a reduction is never fused into the loop that
writes the parameters: ``Σg²`` on every step (one plain pass over an input, the cheapest
statistic there is) and ``Σg², Σθ²`` in one pass on every step (what ``track`` placed first must
read; θ ordered before its in-place update, as optareg does). Reported: the ratio to the plain
step, the minor page faults per call (fresh temporaries) and the params-sized buffers the
compiled step copies or materializes.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from bench._common import Context, Section, StepRunner, ratio_rows, time_interleaved
from bench.suite_stats import LEAVES, SHAPE
from optareg import _numerics

SKIP_EVERY = 1_000_000  # the conditional's predicate is false on every timed step


def _adam(p, mu, nu, g):
    mu = 0.9 * mu + 0.1 * g
    nu = 0.999 * nu + 0.001 * g * g
    u = -1e-3 * (mu / (jnp.sqrt(nu) + 1e-8) + 0.1 * p)
    return u, mu, nu


def _input_stat(p, g, operand: str):
    """A statistic of the step's inputs on every step; returns it and ``p`` (ordered after it)."""
    if operand == "g":
        return jnp.sum(g * g), p
    sums = _numerics.fused_sums([g * g, p * p])  # "gp": one pass over g and θ
    return sums[0] + sums[1], _numerics.after(p, *sums)


def _step(operand: str | None, every_step: bool = False) -> Callable:
    """One step over all leaves; ``operand`` names the array the statistic reads."""

    def step(carry, grads):
        params, mus, nus, count, stat = carry
        out_p, out_mu, out_nu = [], [], []
        on = count % SKIP_EVERY == 0
        for p, mu, nu, g in zip(params, mus, nus, grads, strict=True):
            if every_step and operand in ("g", "gp"):
                s, p = _input_stat(p, g, operand)
                stat = stat + s
            u, mu, nu = _adam(p, mu, nu, g)
            if every_step and operand == "u":
                stat = stat + jnp.sum(u * u)
            elif operand is not None and not every_step:
                a = {"g": g, "mu": mu, "p": p, "u": u}[operand]
                stat = stat + jax.lax.cond(on, lambda a: jnp.sum(a * a), lambda a: 0.0 * a[0, 0], a)
            out_p.append(p + u), out_mu.append(mu), out_nu.append(nu)
        return out_p, out_mu, out_nu, count + 1, stat

    return step


# (row, what the statistic reads, operand, every_step)
ROWS: list[tuple[str, str, str | None, bool]] = [
    ("adam step", "reference: no statistic", None, False),
    ("+ cond(Σg²), skipped", "the gradient: an input, not donated", "g", False),
    ("+ cond(Σμ²), skipped", "the new first moment: written anyway", "mu", False),
    ("+ cond(Σθ²), skipped", "the donated parameters, updated in place after", "p", False),
    ("+ cond(Σu²), skipped", "the update, otherwise fused into θ + u", "u", False),
    ("+ Σu² every step", "the update, no conditional", "u", True),
    ("+ Σg² every step", "floor: one plain pass over an input, no conditional", "g", True),
    ("+ Σg², Σθ² every step", "floor of track first: g and θ in one pass, θ ordered", "gp", True),
]


def _big_buffers(text: str, shape: tuple[int, ...]) -> str:
    """Params-sized copies and fusions in the entry computation of the compiled step."""
    entry = text[text.index("ENTRY") :]
    dims = ",".join(str(d) for d in shape)
    big = re.compile(rf"= f32\[{dims}\]\S* (copy|fusion)\(")
    kinds = [m.group(1) for m in big.finditer(entry)]
    return f"{kinds.count('copy')} copies, {kinds.count('fusion')} fusions"


def _runner(operand: str | None, every_step: bool, leaves: list[Any]) -> StepRunner:
    zeros = [jnp.zeros_like(x) for x in leaves]
    carry = (
        [x + 0 for x in leaves],
        zeros,
        [z + 1e-3 for z in zeros],
        jnp.int32(1),
        jnp.float32(0),
    )
    grads = [1e-3 * x for x in leaves]
    return StepRunner(_step(operand, every_step), carry, (grads,))


def run(ctx: Context) -> list[Section]:
    n_leaves, shape = LEAVES[ctx.size], SHAPE[ctx.size]
    rng = np.random.default_rng(0)
    leaves = [jnp.asarray(rng.standard_normal(shape, dtype=np.float32)) for _ in range(n_leaves)]
    entries = n_leaves * int(np.prod(shape))
    ctx.log(f"[cond] {n_leaves} leaves of {shape}: {entries / 1e6:.1f}M entries")
    runners = []
    for name, _, operand, every_step in ROWS:
        ctx.log(f"[cond] {name}")
        runners.append(_runner(operand, every_step, leaves))
    times = time_interleaved(runners, ctx.reps, ctx.warmup)
    rows = ratio_rows(
        [(name, what) for name, what, _, _ in ROWS],
        runners,
        times,
        lambda runner: _big_buffers(runner.hlo_text(), shape),
    )
    notes = [
        f"{n_leaves} float32 leaves of {shape} ({entries / 1e6:.1f}M entries); params, moments, "
        f"step count and statistic donated; {ctx.reps} timed steps per row after {ctx.warmup} "
        f"warm-up steps, interleaved; JAX backend {jax.default_backend()}.",
        "The plain step already holds one fusion per moment and one for θ + u per leaf; every "
        "further params-sized fusion or copy is a buffer written and read again (on CPU, fresh "
        "pages on every call unless the allocator reuses them: see the page faults).",
    ]
    return [
        Section(
            title=(
                "8. What a statistic reads: a skipped lax.cond, and the floor of any statistic "
                "(ratio to the plain step)"
            ),
            headers=[
                "step",
                "the statistic reads",
                "time median [min–max]",
                "ratio to the plain step",
                "page faults / call",
                "params-sized buffers in the compiled step",
            ],
            rows=rows,
            intro=__doc__.split("\n\n")[1].replace("\n", " "),
            notes=notes,
        )
    ]


__all__ = ["ROWS", "run"]
