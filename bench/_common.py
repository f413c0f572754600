"""Shared pieces of the benchmark suites: timing, stateful step runners, trees, formatting.

Timing method (every suite): each candidate is jit-compiled ahead of time, warmed up, then timed
for ``reps`` repetitions with ``jax.block_until_ready`` after each; candidates are *interleaved*
(A, B, A, B, ... with the order reversed on every other repetition, so that neither side always
runs first), and ratios are computed pair by pair: ``ratio_i = t_B,i / t_A,i``, reported as the
median and the min–max over ``i``. Stateful steps (optimizer updates) donate their carry
(parameters and optimizer state) in both A and B, so both update in place.
"""

from __future__ import annotations

import dataclasses
import math
import resource
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

NA_NOT_IMPLEMENTED = "n/a (not implemented)"


@dataclasses.dataclass
class Section:
    """One table of the report."""

    title: str
    headers: list[str]
    rows: list[list[str]]
    intro: str = ""
    notes: list[str] = dataclasses.field(default_factory=list)

    def markdown(self) -> str:
        out = [f"### {self.title}", ""]
        if self.intro:
            out += [self.intro, ""]
        out.append(markdown_table(self.headers, self.rows))
        if self.notes:
            out.append("")
            out += [f"- {n}" for n in self.notes]
        return "\n".join(out) + "\n"


@dataclasses.dataclass
class Context:
    """What every suite receives from the command line."""

    size: str  # "tiny" | "small" | "full"
    reps: int
    warmup: int = 2
    dump_hlo: str | None = None
    log: Callable[[str], None] = print
    cache: dict = dataclasses.field(default_factory=dict)  # objects shared between suites
    exclude: tuple[str, ...] = ()  # suite-1 rows whose name contains one of these are skipped

    def excluded(self, name: str) -> bool:
        return any(e and e in name for e in self.exclude)

    @property
    def platform(self) -> str:
        return jax.default_backend()


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for r in rows:
        cells = [str(c).replace("|", "\\|").replace("\n", " ") for c in r]
        cells += [""] * (len(headers) - len(cells))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# formatting
# ------------------------------------------------------------------------------------------------


def fmt_time(seconds: float) -> str:
    """Seconds as a short human string with 3 significant digits."""
    if not math.isfinite(seconds):
        return "nan"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def fmt_stats(x: np.ndarray, kind: str = "time") -> str:
    """``median [min–max]`` of times or ratios."""
    x = np.asarray(x, dtype=np.float64)
    if kind == "time":
        return f"{fmt_time(np.median(x))} [{fmt_time(x.min())}–{fmt_time(x.max())}]"
    return f"{np.median(x):.3f} [{x.min():.3f}–{x.max():.3f}]"


def fmt_bytes(n: float) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{int(n)} B"


def describe_error(e: BaseException) -> str:
    """A table cell for a row whose transform could not run."""
    if isinstance(e, NotImplementedError):
        return NA_NOT_IMPLEMENTED
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"error: {type(e).__name__}: {msg[:120]}"


def try_build(factory: Callable[[], Any], log: Callable[[str], None]) -> tuple[Any, str | None]:
    """Call ``factory``; return ``(value, None)`` or ``(None, table cell describing the error)``."""
    try:
        return factory(), None
    except Exception as e:  # noqa: BLE001 - a failing row must not stop the report
        if not isinstance(e, NotImplementedError):
            log(traceback.format_exc())
        return None, describe_error(e)


# ------------------------------------------------------------------------------------------------
# pytrees
# ------------------------------------------------------------------------------------------------


def tree_bytes(tree: Any) -> int:
    """Exact bytes of every array leaf (arrays or ``ShapeDtypeStruct``)."""
    total = 0
    for leaf in jax.tree.leaves(tree):
        if hasattr(leaf, "shape") and hasattr(leaf, "dtype"):
            total += int(np.prod(leaf.shape, dtype=np.int64)) * np.dtype(leaf.dtype).itemsize
    return total


def tree_size(tree: Any) -> int:
    return sum(int(np.prod(leaf.shape, dtype=np.int64)) for leaf in jax.tree.leaves(tree))


def unalias(tree: Any) -> Any:
    """Copy every leaf whose buffer is already used by an earlier leaf (so it can be donated)."""
    seen: set[int] = set()

    def f(x):
        if isinstance(x, jax.Array):
            try:
                ptr = x.unsafe_buffer_pointer()
            except Exception:  # noqa: BLE001 - sharded or deleted: leave as is
                return x
            if ptr in seen:
                return jnp.array(x, copy=True)
            seen.add(ptr)
        return x

    return jax.tree.map(f, tree)


def fresh_copy(tree: Any) -> Any:
    """A copy of ``tree`` on fresh buffers."""
    return jax.tree.map(lambda x: jnp.array(x, copy=True), tree)


# ------------------------------------------------------------------------------------------------
# runners and timing
# ------------------------------------------------------------------------------------------------


class StepRunner:
    """A jit-compiled ``carry = fn(carry, *consts)`` step that donates its carry.

    ``carry`` is owned by the runner (donated at every call); ``consts`` are read only.
    Compilation happens ahead of time in ``__init__`` and is timed (``compile_s``).
    """

    def __init__(self, fn: Callable, carry: Any, consts: Sequence[Any] = (), donate: bool = True):
        self.consts = tuple(consts)
        self.carry = unalias(carry)
        jitted = jax.jit(fn, donate_argnums=(0,) if donate else ())
        t0 = time.perf_counter()
        self.lowered = jitted.lower(self.carry, *self.consts)
        self.compiled = self.lowered.compile()
        self.compile_s = time.perf_counter() - t0
        self.calls = 0

    def __call__(self) -> None:
        self.carry = self.compiled(self.carry, *self.consts)
        jax.block_until_ready(self.carry)
        self.calls += 1

    def hlo_text(self) -> str:
        return self.compiled.as_text()


class PureRunner:
    """A jit-compiled pure function ``fn(*args)`` evaluated on fixed inputs (nothing donated)."""

    def __init__(self, fn: Callable, *args: Any):
        self.args = args
        t0 = time.perf_counter()
        self.compiled = jax.jit(fn).lower(*args).compile()
        self.compile_s = time.perf_counter() - t0
        self.out = None

    def __call__(self) -> None:
        self.out = self.compiled(*self.args)
        jax.block_until_ready(self.out)


def time_interleaved(
    fns: Sequence[Callable[[], None]], reps: int, warmup: int = 2, inner: int = 1
) -> list[np.ndarray]:
    """Per-repetition times (seconds per call) of each ``fn``, interleaved.

    Every ``fn`` runs ``warmup`` times first. Then, for each of ``reps`` repetitions, every ``fn``
    is timed once over ``inner`` consecutive calls (the time is divided by ``inner``); the order
    of the candidates alternates between forward and reverse on successive repetitions.
    """
    for f in fns:
        for _ in range(warmup):
            f()
    times: list[list[float]] = [[] for _ in fns]
    order = list(range(len(fns)))
    for r in range(reps):
        for i in order if r % 2 == 0 else order[::-1]:
            f = fns[i]
            t0 = time.perf_counter()
            for _ in range(inner):
                f()
            times[i].append((time.perf_counter() - t0) / inner)
    return [np.asarray(t) for t in times]


def ratios(t_b: np.ndarray, t_a: np.ndarray) -> np.ndarray:
    """Pairwise ratios ``t_B,i / t_A,i``."""
    return np.asarray(t_b) / np.asarray(t_a)


def minor_faults_per_call(runner: Callable[[], None], calls: int = 3) -> float:
    """Minor page faults per call of ``runner`` (fresh pages of its temporaries, 4 KiB each)."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(calls):
        runner()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / calls


def ratio_rows(
    labels: Sequence[Sequence[str]],
    runners: Sequence[Any],
    times: Sequence[np.ndarray],
    describe: Callable[[Any], str],
) -> list[list[str]]:
    """One row per candidate: its labels, time, pairwise ratio to the first candidate, minor page
    faults per call and ``describe(runner)`` (e.g. what its compiled HLO holds)."""
    return [
        [
            *label,
            fmt_stats(t),
            fmt_stats(ratios(t, times[0]), "ratio"),
            f"{minor_faults_per_call(runner):.0f}",
            describe(runner),
        ]
        for label, runner, t in zip(labels, runners, times, strict=True)
    ]


# ------------------------------------------------------------------------------------------------
# the GPT-2-shaped parameter tree
# ------------------------------------------------------------------------------------------------

GPT2_SIZES = {
    # vocabulary, context, width, layers
    "tiny": dict(vocab=64, ctx=16, d=16, layers=1),  # smoke test only
    "small": dict(vocab=16384, ctx=512, d=256, layers=8),  # ≈ 10.7M params
    "full": dict(vocab=50257, ctx=1024, d=768, layers=12),  # ≈ 124.4M params (GPT-2 small)
}


def gpt2_shapes(size: str, dtype=jnp.float32) -> dict:
    """The GPT-2 parameter tree (as ``ShapeDtypeStruct`` leaves) for a size name."""
    cfg = GPT2_SIZES[size]
    v, t, d, n = cfg["vocab"], cfg["ctx"], cfg["d"], cfg["layers"]

    def s(*shape):
        return jax.ShapeDtypeStruct(shape, dtype)

    def dense(i, o):
        return {"kernel": s(i, o), "bias": s(o)}

    def ln():
        return {"scale": s(d), "bias": s(d)}

    block = lambda: {  # noqa: E731
        "ln_1": ln(),
        "attn": {"c_attn": dense(d, 3 * d), "c_proj": dense(d, d)},
        "ln_2": ln(),
        "mlp": {"c_fc": dense(d, 4 * d), "c_proj": dense(4 * d, d)},
    }
    return {
        "wte": {"embedding": s(v, d)},
        "wpe": {"embedding": s(t, d)},
        "h": {str(i): block() for i in range(n)},
        "ln_f": ln(),
    }


def random_like(shapes: Any, seed: int, scale: float) -> Any:
    """Normal(0, scale²) arrays with the shapes of ``shapes`` (drawn with NumPy, no compilation)."""
    rng = np.random.default_rng(seed)

    def draw(leaf):
        x = rng.standard_normal(leaf.shape, dtype=np.float32)
        x *= np.float32(scale)
        return jnp.array(x, dtype=leaf.dtype, copy=True)

    return jax.tree.map(draw, shapes)
