"""Suite 3: spectral clipping of one matrix — exact vs Newton–Schulz vs a plain SVD clip.

``optareg.operators.spectral_clip_matrix(W, c, method)`` for ``method`` in ``"exact"`` and
``"newton_schulz"`` beside the textbook projection ``U·diag(min(σ, c))·Vᵀ`` with
``jnp.linalg.svd`` (float32), all jitted, interleaved, on ``W = G·2/(√m + √n)`` with Gaussian
``G`` (singular values spread over about ``[0, 2]``, so about half are clipped) and ``c = 1``.
Errors are measured in float64 NumPy against the SVD projection ``P`` of the same ``W``:
``σ_max(R)/c − 1`` and ``‖R − P‖_F / ‖P‖_F`` for each result ``R``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from bench._common import (
    Context,
    PureRunner,
    Section,
    fmt_stats,
    ratios,
    time_interleaved,
    try_build,
)

C = 1.0

SHAPES = {
    "tiny": [(32, 32), (64, 64), (32, 128)],
    "small": [(256, 256), (512, 512), (256, 1024)],
    "full": [(512, 512), (1024, 1024), (1024, 4096)],
}


def shapes_for(ctx: Context) -> list[tuple[int, int]]:
    shapes = list(SHAPES[ctx.size])
    if ctx.size == "full" and ctx.platform == "gpu":
        shapes.append((4096, 4096))
    return shapes


def svd_clip(x: jax.Array, c: float = C) -> jax.Array:
    u, s, vt = jnp.linalg.svd(x, full_matrices=False)
    return (u * jnp.minimum(s, c)) @ vt


def _methods():
    from optareg.operators import spectral_clip_matrix

    return [
        ("jnp.linalg.svd clip", svd_clip),
        ("spectral_clip_matrix exact", lambda x: spectral_clip_matrix(x, C, "exact")),
        (
            "spectral_clip_matrix newton_schulz",
            lambda x: spectral_clip_matrix(x, C, "newton_schulz"),
        ),
    ]


def _reference(w: np.ndarray) -> np.ndarray:
    u, s, vt = np.linalg.svd(w.astype(np.float64), full_matrices=False)
    return (u * np.minimum(s, C)) @ vt


def _errors(r: np.ndarray, p: np.ndarray) -> tuple[str, str]:
    r = np.asarray(r, dtype=np.float64)
    smax = np.linalg.svd(r, compute_uv=False)[0]
    frob = np.linalg.norm(r - p) / np.linalg.norm(p)
    return f"{smax / C - 1:+.1e}", f"{frob:.1e}"


def run(ctx: Context) -> list[Section]:
    rows: list[list[str]] = []
    for m, n in shapes_for(ctx):
        ctx.log(f"[spectral] {m}x{n}")
        g = jax.random.normal(jax.random.key(m * 7919 + n), (m, n), jnp.float32)
        w = g * (2.0 / (np.sqrt(m) + np.sqrt(n)))
        p_ref = _reference(np.asarray(w))
        built, labels = [], []
        for label, fn in _methods():
            r, err = try_build(lambda f=fn: PureRunner(f, w), ctx.log)
            if err is None:
                built.append(r)
                labels.append(label)
            else:
                rows.append([f"{m}×{n}", label, err, "—", "—", "—"])
        if not built:
            continue
        times = time_interleaved(built, ctx.reps, ctx.warmup)
        svd_t = times[0] if labels[0] == "jnp.linalg.svd clip" else None
        for label, r, t in zip(labels, built, times, strict=True):
            es, ef = _errors(np.asarray(r.out), p_ref)
            ratio = (
                "1 (reference)"
                if t is svd_t
                else (fmt_stats(ratios(t, svd_t), "ratio") if svd_t is not None else "—")
            )
            rows.append([f"{m}×{n}", label, fmt_stats(t), ratio, es, ef])
    # keep the rows of one shape together, in method order
    return [
        Section(
            title="3. Spectral clipping methods (one matrix, c = 1)",
            headers=[
                "shape",
                "method",
                "time median [min–max]",
                "ratio to SVD clip",
                "σ_max(R)/c − 1",
                "‖R − P‖_F/‖P‖_F",
            ],
            rows=rows,
            intro=" ".join(__doc__.split("\n\n")[1].split()),
            notes=[
                f"{ctx.reps} timed calls per method after {ctx.warmup} warm-up calls; float32 "
                "inputs; the float32 SVD clip's own error shows the float32 floor.",
            ],
        )
    ]


__all__ = ["run", "svd_clip"]
