"""Entry point of the optareg benchmarks: ``python -m bench`` (or ``python bench/run.py``).

Runs the selected suites, prints one markdown report and writes it (default ``bench/RESULTS.md``)
with the machine (CPU model, cores, JAX device kind), the jax/jaxlib/optax versions, the date and
the exact command. Suites:

1. ``overhead`` — each optareg transform chained to ``optax.adamw``, as a time ratio.
2. ``roofline`` — minimum bytes per step / time, as a fraction of the measured copy bandwidth.
3. ``spectral`` — ``spectral_clip_matrix`` exact / Newton–Schulz vs a plain SVD clip.
3b. ``spectral_step`` — ``adamw`` + ``spectral_clip`` per method on 768×3072 kernels, as a ratio.
3c. ``spectral_control`` — soft cap, hammer, spectral weight decay, QK-Clip after muon / adamw.
4. ``sam`` — a training step with SGD, ``sam_perturb`` (reuse 1, 5), ``optax.contrib.sam``.
5. ``memory`` — optimizer-state bytes as a multiple of parameter bytes.
6. ``low_precision`` — ``low_precision_updates`` (kahan, stochastic) on bf16 params vs adamw.
7. ``stats`` — each form of a per-step statistic (sums, exact counts) on its own, vs ``Σx²``.

Examples::

    python -m bench --size small --reps 20            # everything, ≈10M-param tree
    python -m bench --size full --suites 1,2,5         # GPT-2-small-sized tree
    python -m bench --size tiny --reps 2 --out /tmp/r.md   # smoke test
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import shlex
import sys
import time

if __package__ in (None, ""):  # `python bench/run.py`: make `bench` and `optareg` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SUITES = {
    "1": "overhead",
    "2": "roofline",
    "3": "spectral",
    "3b": "spectral_step",
    "3c": "spectral_control",
    "4": "sam",
    "5": "memory",
    "6": "low_precision",
    "7": "stats",
    "8": "cond",
}

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(HERE, "RESULTS.md")
ANALYSIS = os.path.join(HERE, "ANALYSIS.md")


def parse_suites(text: str) -> list[str]:
    """``"1,3,sam"`` -> ``["overhead", "spectral", "sam"]`` (in the canonical order)."""
    names = set()
    for tok in (t.strip() for t in text.split(",")):
        if not tok:
            continue
        if tok == "all":
            names.update(SUITES.values())
        elif tok in SUITES:
            names.add(SUITES[tok])
        elif tok in SUITES.values():
            names.add(tok)
        else:
            raise argparse.ArgumentTypeError(
                f"unknown suite {tok!r}; choose from {', '.join(SUITES)} or {', '.join(SUITES.values())}"
            )
    return [s for s in SUITES.values() if s in names]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="optareg benchmarks: overhead over optax, roofline, spectral methods, SAM, memory.",
    )
    p.add_argument(
        "--size",
        choices=("tiny", "small", "full"),
        default="small",
        help="problem size: full = GPT-2-small-shaped tree (124M params), small ≈ 10M, tiny = smoke test",
    )
    p.add_argument(
        "--reps",
        type=int,
        default=20,
        help="timed repetitions per candidate (≥ 20 for reported numbers)",
    )
    p.add_argument("--warmup", type=int, default=2, help="untimed warm-up calls per candidate")
    p.add_argument(
        "--suites",
        type=parse_suites,
        default=parse_suites("all"),
        help="comma list of suite numbers (1, 2, 3, 3b, 4-8) / names / all",
    )
    p.add_argument(
        "--out", default=DEFAULT_OUT, help="markdown file to write (default bench/RESULTS.md)"
    )
    p.add_argument(
        "--label", default="", help="a free-text label for the run, printed in the header"
    )
    p.add_argument(
        "--dump-hlo",
        default=None,
        metavar="DIR",
        help="write the optimized HLO of every suite-1 step to DIR",
    )
    p.add_argument(
        "--exclude",
        default="",
        help='comma list of substrings: suite-1 rows whose name contains one are skipped (e.g. "exact,newton_schulz")',
    )
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return p


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# Variables that change the timings: the allocator (on CPU, fresh temporaries cost page faults;
# glibc's transparent huge pages make them ~500x fewer) and XLA's flags.
_ENV_THAT_MATTERS = ("GLIBC_TUNABLES", "MALLOC_ARENA_MAX", "XLA_FLAGS", "LD_PRELOAD")


def machine_info() -> list[tuple[str, str]]:
    import jax
    import jaxlib
    import numpy
    import optax

    import optareg

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    dev = jax.devices()[0]
    try:
        load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        load = "?"
    env = [f"{k}={os.environ[k]}" for k in _ENV_THAT_MATTERS if os.environ.get(k)]
    return [
        ("CPU", _cpu_model()),
        ("cores", f"{os.cpu_count()} logical, {usable} usable by this process"),
        ("load average (1, 5, 15 min) at start", load),
        (
            "JAX backend / device",
            f"{jax.default_backend()} / {dev.device_kind} ×{jax.device_count()}",
        ),
        ("python", platform.python_version()),
        (
            "versions",
            f"jax {jax.__version__}, jaxlib {jaxlib.__version__}, optax {optax.__version__}, "
            f"numpy {numpy.__version__}, optareg {optareg.__version__}",
        ),
        ("environment (allocator, XLA)", ", ".join(f"`{e}`" for e in env) or "defaults"),
    ]


def command_line() -> str:
    return "python -m bench " + shlex.join(sys.argv[1:])


def report(header: list[tuple[str, str]], sections, args, elapsed: float) -> str:
    from bench._common import markdown_table

    lines = ["# optareg benchmark results", ""]
    if args.label:
        lines += [f"**{args.label}**", ""]
    lines += [
        markdown_table(["", ""], header + [("wall time of the run", f"{elapsed:.0f} s")]),
        "",
        "Method: every candidate is jit-compiled, warmed up, then timed with `block_until_ready` "
        f"for {args.reps} repetitions; candidates are interleaved (order reversed every other "
        "repetition) and ratios are computed pair by pair (`t_B,i / t_A,i`), reported as "
        "median [min–max]. Optimizer steps donate parameters and state in both A and B.",
        "",
    ]
    for s in sections:
        lines.append(s.markdown())
    if os.path.exists(ANALYSIS):
        with open(ANALYSIS) as f:
            lines += ["", f.read().strip(), ""]
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.reps < 1:
        raise SystemExit("--reps must be >= 1")
    started = _dt.datetime.now(_dt.timezone.utc)
    header = [
        ("date (UTC)", started.strftime("%Y-%m-%d %H:%M")),
        ("command", f"`{command_line()}`"),
    ]
    header += machine_info()
    header.append(("size / reps / suites", f"{args.size} / {args.reps} / {', '.join(args.suites)}"))

    import importlib

    from bench._common import Context

    def log(msg: str) -> None:
        if not args.quiet:
            print(msg, file=sys.stderr, flush=True)

    ctx = Context(
        size=args.size,
        reps=args.reps,
        warmup=args.warmup,
        dump_hlo=args.dump_hlo,
        log=log,
        exclude=tuple(e.strip() for e in args.exclude.split(",") if e.strip()),
    )
    t0 = time.perf_counter()
    sections = []
    for name in args.suites:
        mod = importlib.import_module(f"bench.suite_{name}")
        ts = time.perf_counter()
        sections += mod.run(ctx)
        log(f"[{name}] done in {time.perf_counter() - ts:.1f} s")
    text = report(header, sections, args, time.perf_counter() - t0)
    print(text)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            f.write(text)
        log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
