"""Spectral kernels: matrix sign, the spectral-norm projection, power iteration.

Implementation module; :func:`msign` and :func:`spectral_clip_matrix` are public in
:mod:`optareg.operators`, the rest is used by :mod:`optareg.spectral`. Every kernel acts on the
last two axes and batches over the leading ones, runs in (at least) float32 and rescales by
``max|x|`` first (:func:`optareg._numerics.max_abs_scale`), so that no Gram matrix, square or
matrix-vector product can overflow.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from optareg import _numerics
from optareg._numerics import compute_dtype, div_by_scale, matrix_transpose, max_abs_scale

__all__ = [
    "clip_exact",
    "clip_newton_schulz",
    "landing_pull",
    "msign",
    "normalize",
    "power_iterate",
    "scaled_norm",
    "sigma_max",
    "soft_cap",
    "soft_cap_alpha",
    "soft_cap_gain",
    "spectral_clip_matrix",
    "start_vectors",
]

# Polar Express, degree 5 (Amsel, Persson, Musco & Gower 2025, Algorithm 1): the optimal odd
# quintic p_t(x) = a x + b x^3 + c x^5 for each step t, designed for singular values in
# [1e-3, 1] after Frobenius normalisation. Steps beyond the table repeat the last polynomial
# (the classical Newton-Schulz quintic, p(1) = 1, p'(1) = p''(1) = 0).
_PE_COEFFS = (
    (8.28721201814563, -23.595886519098837, 17.300387312530933),
    (4.107059111542203, -2.9478499167379106, 0.5448431082926601),
    (3.9486908534822946, -2.908902115962949, 0.5518191394370137),
    (3.3184196573706015, -2.488488024314874, 0.51004894012372),
    (2.300652019954817, -1.6689039845747493, 0.4188073119525673),
    (1.891301407787398, -1.2679958271945868, 0.37680408948524835),
    (1.8750014808534479, -1.2500016453999487, 0.3750001645474248),
    (1.875, -1.25, 0.375),
)
_SAFETY = 1.01  # the paper's safety factor, applied to all but the last polynomial
_PE_SAFE = tuple((a / _SAFETY, b / _SAFETY**3, c / _SAFETY**5) for a, b, c in _PE_COEFFS[:-1]) + (
    _PE_COEFFS[-1],
)

_METHODS = ("exact", "newton_schulz")
_mT = matrix_transpose


def _check_matrix(x: jax.Array, name: str) -> None:
    if x.ndim < 2:
        raise ValueError(
            f"{name}: expects a matrix or a batch of matrices (ndim >= 2); got shape {x.shape}."
        )


# --------------------------------------------------------------------------------------------
# matrix sign
# --------------------------------------------------------------------------------------------


def _msign_wide(x: jax.Array, steps: int) -> jax.Array:
    """Polar Express on a matrix with rows <= columns (the Gram ``X Xᵀ`` is the small one)."""
    x = div_by_scale(x, max_abs_scale(x))  # ‖x‖_F can't overflow
    norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=(-2, -1), keepdims=True))
    x = x / (norm * _SAFETY + 1e-7)

    def body(x, abc):  # one scanned step: compiled once, whatever `steps` is
        gram = x @ _mT(x)
        poly = abc[1] * gram + abc[2] * (gram @ gram)
        return abc[0] * x + poly @ x, None

    if not isinstance(steps, int):  # traced (optax.inject_hyperparams): a dynamic trip count
        coeffs = jnp.asarray(_PE_SAFE, x.dtype)
        last = len(_PE_SAFE) - 1
        return jax.lax.fori_loop(0, steps, lambda t, x: body(x, coeffs[jnp.minimum(t, last)])[0], x)
    table = [_PE_SAFE[min(t, len(_PE_SAFE) - 1)] for t in range(steps)]
    x, _ = jax.lax.scan(body, x, jnp.asarray(table, x.dtype))  # (steps, 3) coefficients
    return x


def msign(x: jax.Array, steps: int = 8) -> jax.Array:
    r"""Matrix sign (orthogonal polar factor) by Polar Express Newton–Schulz iterations.

    For ``x = U Σ Vᵀ`` (thin SVD) this approximates ``msign(x) = U Vᵀ``: every non-zero singular
    value is mapped to 1, singular vectors kept, zero singular values stay 0. For a symmetric
    matrix it is the matrix sign function ``Q sign(Λ) Qᵀ``. Only matrix products are used: ``x``
    is divided by ``1.01·‖x‖_F`` and then ``steps`` odd quintics
    ``X ← a_t X + (b_t XXᵀ + c_t (XXᵀ)²) X`` are applied, with the optimal per-step
    coefficients of Amsel et al. (2025); steps beyond the 8th repeat the classical quintic
    ``(15/8, −10/8, 3/8)``. The Gram product is taken on the short side of the matrix.

    Accuracy: singular values with ``σ ≥ 10⁻³·‖x‖_F`` reach ``1 ± 10⁻⁶`` (float32) after 8
    steps; smaller ones are mapped to a value in ``(0, 1)`` (roughly ``min(1, 7·10³·σ/‖x‖_F)``).

    Args:
      x: array of shape ``(..., m, n)``; leading axes are a batch.
      steps: number of iterations (``>= 1``).

    Returns:
      An array of the shape and dtype of ``x`` (computed in at least float32).

    Example:
      >>> import jax.numpy as jnp
      >>> from optareg.operators import msign
      >>> q = msign(jnp.array([[3.0, 0.0], [0.0, 0.5]]))
      >>> [round(float(v), 4) for v in jnp.diag(q)]
      [1.0, 1.0]

    References:
      Amsel, Persson, Musco & Gower, "The Polar Express: Optimal Matrix Sign Methods and Their
      Application to the Muon Algorithm", 2025 (arXiv:2505.16932).
    """
    x = jnp.asarray(x)
    _check_matrix(x, "msign")
    if isinstance(steps, jax.core.Tracer):  # optax.inject_hyperparams: checked at init
        pass
    elif isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"msign: `steps` must be an integer >= 1; got {steps!r}.")
    y = x.astype(compute_dtype(x))
    if y.shape[-2] > y.shape[-1]:
        out = _mT(_msign_wide(_mT(y), steps))
    else:
        out = _msign_wide(y, steps)
    return out.astype(x.dtype)


# --------------------------------------------------------------------------------------------
# the projection onto {‖W‖₂ ≤ c}
# --------------------------------------------------------------------------------------------


def _project_once(x: jax.Array, c: jax.Array) -> tuple[jax.Array, jax.Array]:
    """One projection by ``eigh`` of the short-side Gram matrix; returns ``(W', σ_max(W))``."""
    a = max_abs_scale(x)
    cs = div_by_scale(c, a[..., 0])  # (..., 1): one c per matrix
    wide = x.shape[-2] < x.shape[-1]
    w = div_by_scale(_mT(x) if wide else x, a)  # tall: (m, n) with n <= m
    lam, vecs = jnp.linalg.eigh(_mT(w) @ w)
    sig = jnp.sqrt(jnp.maximum(lam, 0.0))
    safe = jnp.where(sig > cs, sig, 1.0)
    shrink = jnp.where(sig > cs, 1.0 - cs / safe, 0.0)  # (..., n)
    corr = w @ ((vecs * shrink[..., None, :]) @ _mT(vecs))  # exactly 0 when nothing is clipped
    corr = _mT(corr) if wide else corr
    return x - corr * a, jnp.max(sig, axis=-1) * a[..., 0, 0]


# A float32 Gram matrix holds σ² to a relative 2⁻²⁴: clipping σ_max = k·c leaves an excess of
# about 2⁻²⁴·k² (1.4e-5 measured at k = 16, 1e-6 at k = 4). Beyond _FAR the result is projected
# again (from σ ≈ c, where the error is at float32 rounding); at most _MAX_PASSES passes in all.
_FAR = 4.0
_MAX_PASSES = 8


@jax.jit
def clip_exact(x: jax.Array, c) -> tuple[jax.Array, jax.Array]:
    """Exact projection via ``eigh`` of the Gram matrix on the short side; also σ_max.

    With ``G = WᵀW = V Λ Vᵀ`` (``W`` tall, ``n <= m``) and ``s = max(0, 1 − c/√λ)``:
    ``W' = W − W·(V diag(s) Vᵀ)``. The ``n × n`` factor is formed first, so the correction costs
    one ``m·n²`` product (not two). Directions with ``σ <= c`` get an exact zero correction, so a
    matrix inside the ball is returned as is. Everything runs on ``x/a``, ``a = max|x|``, so the
    Gram matrix cannot overflow; ``a`` is multiplied back at the end. A matrix that started
    more than 4c out is projected once more (``lax.while_loop``, see ``_FAR``).
    """
    c = jnp.asarray(c, x.dtype)
    y, sigma = _project_once(x, c)

    def again(carry):
        y, _, i = carry
        y, s = _project_once(y, c)
        return y, s, i + 1

    def far(carry):
        _, s, i = carry
        return (i < _MAX_PASSES) & jnp.any(s > _FAR * c)

    y, _, _ = jax.lax.while_loop(far, again, (y, sigma, 1))
    return y, sigma


@jax.jit
def sigma_max(x: jax.Array) -> jax.Array:
    """σ_max of each matrix by ``eigvalsh`` of the short-side Gram matrix of ``x/max|x|``."""
    a = max_abs_scale(x)
    w = div_by_scale(x, a)
    gram = _mT(w) @ w if x.shape[-1] <= x.shape[-2] else w @ _mT(w)
    lam = jnp.linalg.eigvalsh(gram)[..., -1]
    return jnp.sqrt(jnp.maximum(lam, 0.0)) * a[..., 0, 0]


def _bound_2norm(delta: jax.Array) -> jax.Array:
    """``√(‖Δ‖₁‖Δ‖_∞) ≥ ‖E‖₂`` for every ``E`` with ``|E| ≤ Δ`` entrywise (per matrix)."""
    return jnp.sqrt(jnp.max(jnp.sum(delta, -2), -1) * jnp.max(jnp.sum(delta, -1), -1))


# landing_pull: a margin up to this is applied as is (float32/float64 training: ~n·3e-7·|w|/c);
# a larger one (bfloat16, or the first step from far outside) is first tried at twice the
# measured excess and verified by σ_max of the new landing.
_DIRECT_MARGIN = 2.0**-13


def landing_pull(z, y, sigma_x, c, land_scaled, delta, tries: int = 3):
    """The inequality ``σ_max ≤ c`` on landed parameters: ``(ok, scale)`` per matrix.

    ``z`` = the landed matrices, ``y`` = the projection they should equal, ``sigma_x`` = σ_max
    before it. ``ok`` by the free test ``min(σ_x, c) + ‖z − y‖_F ≤ c`` (``z = y`` counts as
    inside: the projection's own accuracy). The others are landed at ``y·scale``,
    ``scale = 1 − m``: ``m = √(‖Δ‖₁‖Δ‖_∞)/c`` bounds any landing error ``|E| ≤ Δ``
    (``delta``), so ``σ_max ≤ (1 − m)σ_max(y) + ‖E‖₂ ≤ c`` whatever the rounding; that margin
    is used as is up to ``2⁻¹³``. A larger one is replaced, where it can be, by twice the
    measured excess of σ_max(z) over ``c`` (doubled at most ``tries`` times, each verified by
    σ_max of the new landing); ``ok`` then also holds where σ_max(z) ≤ ``c``.
    """
    err = scaled_norm((z - y).reshape(z.shape[:-2] + (-1,)))
    cheap = (err == 0) | (jnp.minimum(sigma_x, c) + err <= c)
    safe = jnp.minimum(_bound_2norm(delta) / c, 1.0)

    def verified():
        s = sigma_max(z)
        ok = cheap | (s <= c)
        m0 = jnp.clip(2 * (s / c - 1), 4 * jnp.finfo(z.dtype).eps, 1.0)

        def more(carry):
            _, bad, i = carry
            return jnp.any(bad) & (i < tries)

        def again(carry):
            m, bad, i = carry
            worse = bad & (sigma_max(land_scaled(1 - m)) > c)
            return jnp.where(worse, jnp.minimum(2 * m, 1.0), m), worse, i + 1

        m, bad, _ = jax.lax.while_loop(more, again, (m0, ~ok, 0))
        return ok, 1 - jnp.where(ok, 0.0, jnp.where(bad, jnp.maximum(m, safe), m))

    def direct():
        return cheap, 1 - jnp.where(cheap, 0.0, safe)

    def pull():
        return jax.lax.cond(jnp.max(jnp.where(cheap, 0.0, safe)) > _DIRECT_MARGIN, verified, direct)

    return jax.lax.cond(jnp.all(cheap), lambda: (cheap, jnp.ones_like(err)), pull)


# S = msign(XᵀX − c²I) runs _S_EXTRA more steps than Q = msign(X): its eigenvalues σ² − c²
# come arbitrarily close to 0 (σ ≈ c), where an unconverged s ∈ (0, 1) leaves σ between c and
# (σ + c)/2. Each classical-quintic step multiplies the smallest values by 1.875: 4 more steps
# shrink that band 12-fold, from σ_max ≤ c(1 + 8.6e-3) to c(1 + 4.2e-5) one step from 16c on
# square Gaussian matrices (the float32 Gram floor is ~7e-6), at the cost of 4 Gram-side steps.
_S_EXTRA = 4


@_numerics.jit_static_ints(2)
def clip_newton_schulz(x: jax.Array, c, steps: int) -> jax.Array:
    """``c·clip_1(x/c) = ½[x + cQ + (cQ − x)S]``, Q = msign(x), S = msign(xᵀx − c²I).

    Computed on ``x/a``, ``c/a`` with ``a = max(max|x|, c)`` (msign is scale-invariant), so
    every entry and ``c/a`` are at most 1: neither the Gram matrix nor ``(c/a)²`` can overflow,
    also for matrices far inside the ball (tiny ``x``); rescaled by ``a`` at the end.
    """
    # The barrier keeps a Python-float c and an injected array c on one compiled path (bit-identical
    # results under optax.inject_hyperparams).
    c = jax.lax.optimization_barrier(jnp.asarray(c, x.dtype))
    a = jnp.maximum(max_abs_scale(x), c)
    xs = div_by_scale(x, a)
    cs = div_by_scale(jnp.broadcast_to(c, a.shape), a)
    q = msign(xs, steps)
    # ½[X + cQ + (cQ − X)S] regrouped as ½[X(I − S) + cQ(I + S)]: no cancellation between X and
    # cQ when σ ≪ c (S ≈ −I) or σ ≫ c (S ≈ I).
    if xs.shape[-2] < xs.shape[-1]:  # wide: the small Gram is X Xᵀ, S acts on the left
        eye = jnp.eye(xs.shape[-2], dtype=xs.dtype)
        s = msign(xs @ _mT(xs) - cs * cs * eye, steps + _S_EXTRA)
        y = 0.5 * ((eye - s) @ xs + (eye + s) @ (cs * q))
    else:
        eye = jnp.eye(xs.shape[-1], dtype=xs.dtype)
        s = msign(_mT(xs) @ xs - cs * cs * eye, steps + _S_EXTRA)
        y = 0.5 * (xs @ (eye - s) + (cs * q) @ (eye + s))
    # ‖X‖_F ≤ c ⇒ σ_max ≤ c: the matrix is inside the ball and is returned exactly.
    inside = jnp.sum(jnp.square(xs), axis=(-2, -1), keepdims=True) <= cs * cs
    return jnp.where(inside, x, y * a)


def spectral_clip_matrix(
    x: jax.Array, c: ArrayLike = 1.0, method: str = "exact", *, ns_steps: int = 8
) -> jax.Array:
    r"""Euclidean projection onto the spectral-norm ball ``{W : ‖W‖₂ ≤ c}``.

    For ``x = U Σ Vᵀ`` the projection (in Frobenius norm) is ``U min(Σ, c) Vᵀ``: every singular
    value is clipped to ``min(σ, c)``, singular vectors are kept, and a matrix already inside the
    ball is returned unchanged.

    * ``method="exact"``: ``eigh`` of the Gram matrix on the short side ``G = WᵀW = V Λ Vᵀ`` and
      ``W' = W − W·(V diag(max(0, 1 − c/√λ)) Vᵀ)``. Directions inside the ball receive an exact
      zero correction. Measured (tests, float32, against a float64 SVD): σ_max ≤ c·(1 + 1e-5)
      for inputs from σ_max = 2c to 1e30·c (a matrix more than 4c out is projected a second
      time, since the float32 Gram matrix loses accuracy like (σ_max/c)²). As a post-step
      transform (:func:`optareg.spectral_clip`) the *landed* parameters are also checked, to
      ``σ_max ≤ c(1 + 1e-6)``.
    * ``method="newton_schulz"``: only matrix products (GPU/TPU, bf16-friendly):
      ``clip_c(W) = c·clip_1(W/c)`` with
      ``clip_1(M) = ½[M + msign(M) + (msign(M) − M)·msign(MᵀM − I)]`` (Gram on the short side),
      ``msign`` by ``ns_steps`` Polar Express iterations (:func:`msign`; ``ns_steps + 4`` for
      ``msign(MᵀM − I)``, whose eigenvalues come arbitrarily close to 0). On a singular pair
      ``σ`` this gives ``½[σ + q + (q − σ)s]`` with ``q ≈ 1`` and ``s ≈ sign(σ² − 1)``: exact
      (``σ`` if ``s = −1``, ``q`` if ``s = +1``) wherever the iterations have converged.
      Eigenvalues ``σ² − 1`` of ``MᵀM − I`` that are tiny compared with ``‖MᵀM − I‖_F``
      (σ/c within about 10⁻⁴·‖MᵀM − I‖_F of 1) are not driven to ±1: there ``s ∈ (−1, 1)``
      has the right sign and the output ``σ + ½(1 − σ)(1 + s)`` (units of c) lies *between*
      σ and c, so the error is at most ``|σ − c|/2`` for those values. The overshoot above c
      is largest when many singular values sit just above c while ``‖MᵀM − I‖_F`` is large.
      Measured (tests, float32, σ_max by a float64 SVD): post-step matrices (σ_max ∈
      [0.5c, 3c], 32×64 … 128×128) σ_max ≤ c·(1 + 1e-5), relative Frobenius distance to the
      exact projection ≤ 1e-4; random Gaussian matrices one step from σ_max ≤ 16c (64×64,
      64×256, 256×64; RandomState and default_rng) σ_max ≤ c·(1 + 5e-4) (worst measured
      1.4e-4; 8.6e-3 with ``ns_steps`` steps on both); in bfloat16 (computed in float32,
      rounded back) σ_max ≤ c·(1 + 1e-2), distance ≤ 1e-2. In training (300 Adam steps on an
      MLP, see :func:`optareg.spectral_clip`) σ_max ≤ c·(1 + 1e-3) at every step.

    Args:
      x: array of shape ``(..., m, n)``; leading axes are a batch of matrices.
      c: the radius ``> 0`` of the ball.
      method: ``"exact"`` or ``"newton_schulz"``.
      ns_steps: Newton–Schulz steps for ``"newton_schulz"``.

    Returns:
      An array of the shape and dtype of ``x`` (computed in at least float32).

    Example:
      >>> import jax.numpy as jnp
      >>> from optareg.operators import spectral_clip_matrix
      >>> y = spectral_clip_matrix(jnp.diag(jnp.array([3.0, 0.5])), 1.0)
      >>> [round(float(v), 4) for v in jnp.diag(y)]
      [1.0, 0.5]

    References:
      Lewis, "The Convex Analysis of Unitarily Invariant Matrix Functions", 1995 (projection).
      Amsel et al., "The Polar Express", 2025 (arXiv:2505.16932).
    """
    x = jnp.asarray(x)
    _check_matrix(x, "spectral_clip_matrix")
    if isinstance(c, (int, float, np.number)) and not isinstance(c, bool):
        if not (math.isfinite(float(c)) and float(c) > 0):
            raise ValueError(f"spectral_clip_matrix: `c` must be a finite number > 0; got {c!r}.")
    if method not in _METHODS:
        raise ValueError(
            f"spectral_clip_matrix: `method` must be one of {_METHODS!r}; got {method!r}."
        )
    if isinstance(ns_steps, bool) or not isinstance(ns_steps, int) or ns_steps < 1:
        raise ValueError(
            f"spectral_clip_matrix: `ns_steps` must be an integer >= 1; got {ns_steps!r}."
        )
    dt = compute_dtype(x)
    xc, cc = x.astype(dt), jnp.asarray(c, dt)
    y = clip_exact(xc, cc)[0] if method == "exact" else clip_newton_schulz(xc, cc, ns_steps)
    return y.astype(x.dtype)


# --------------------------------------------------------------------------------------------
# power iteration (vectors along the last axis)
# --------------------------------------------------------------------------------------------


def scaled_norm(w: jax.Array) -> jax.Array:
    """``‖w‖₂`` along the last axis, computed on ``w/max|w|`` so the squares never overflow.

    Inf where ``w`` holds an inf, NaN where it holds a NaN.
    """
    a = max_abs_scale(w, axis=-1)
    return a[..., 0] * jnp.sqrt(jnp.sum(jnp.square(div_by_scale(w, a)), axis=-1))


def normalize(w: jax.Array, fallback: jax.Array) -> jax.Array:
    """``w/‖w‖`` along the last axis (scaled by ``max|w|`` first); ``fallback`` wherever ``w``
    is zero or not finite, so a power-iteration vector is a unit vector at every step."""
    ws = div_by_scale(w, max_abs_scale(w, axis=-1))
    nrm = jnp.sqrt(jnp.sum(jnp.square(ws), axis=-1, keepdims=True))  # in [1, √n] where ok
    ok = (nrm > 0) & jnp.isfinite(nrm)
    return jnp.where(ok, ws / jnp.where(ok, nrm, 1.0), fallback)


def _power_step(w, a, b):
    """One power iteration on ``w`` (B, m, n): ``a ← Wb/‖Wb‖``, ``b ← Wᵀa/‖Wᵀa‖``, σ̂ = ‖Wᵀa‖."""
    a = normalize(jnp.einsum("bmn,bn->bm", w, b), a)
    wta = jnp.einsum("bmn,bm->bn", w, a)
    return a, normalize(wta, b), scaled_norm(wta)


@_numerics.jit_static_ints(3)
def power_iterate(w: jax.Array, a: jax.Array, b: jax.Array, iters: int):
    """``iters >= 1`` warm-started power iterations; returns ``a, b, σ̂`` (σ̂ ≤ σ_max).

    More than one iteration runs in a ``lax.fori_loop`` (compiled once, whatever ``iters``).
    σ̂ beyond the float range (an overflowing matrix) is reported as the largest finite value.
    """
    a, b, sigma = _power_step(w, a, b)
    if not isinstance(iters, int) or iters > 1:  # a traced count: a loop of 0 or more trips

        def body(_, carry):
            return _power_step(w, carry[0], carry[1])

        a, b, sigma = jax.lax.fori_loop(1, iters, body, (a, b, sigma))
    return a, b, jnp.minimum(sigma, jnp.finfo(w.dtype).max)


def start_vectors(batch: int, m: int, n: int, dtype) -> tuple[jax.Array, jax.Array]:
    """A fixed deterministic unit start (a Gaussian draw from ``PRNGKey(0)``), per matrix."""
    ku, kv = jax.random.split(jax.random.PRNGKey(0))
    a = jax.random.normal(ku, (batch, m), dtype)
    b = jax.random.normal(kv, (batch, n), dtype)
    return a / jnp.linalg.norm(a, axis=-1, keepdims=True), b / jnp.linalg.norm(
        b, axis=-1, keepdims=True
    )


# --------------------------------------------------------------------------------------------
# spectral soft cap (Newhouse et al. 2025): two odd cubics, matrix products only
# --------------------------------------------------------------------------------------------

# β = α·k² is at most 1/3: there the first cubic σ − ασ³ is still increasing on [0, k], so the
# composed map is monotone on every singular value the bound k covers (see soft_cap_alpha).
_SOFT_CAP_BETA_MAX = 1.0 / 3.0
_BISECTIONS = 40


def soft_cap_gain(beta: jax.Array) -> jax.Array:
    """``g(β) = f_α(σ)/σ`` at ``β = ασ²``: ``(1 − β)(1 + β(1 − β)²) = 1 − 3β² + 3β³ − β⁴``."""
    return 1.0 - beta * beta * (3.0 - 3.0 * beta + beta * beta)


def soft_cap_alpha(k: jax.Array) -> jax.Array:
    """The coupling of the soft cap: ``α`` with ``f_α(k) = 1`` (units of the bound ``c``).

    ``f_α(σ) = σ·g(ασ²)`` with ``g`` strictly decreasing from ``g(0) = 1``, so for ``k > 1`` the
    root ``β = αk²`` of ``g(β) = 1/k`` is unique (the paper's quartic
    ``−k⁹α⁴ + 3k⁷α³ − 3k⁵α² + k − 1 = 0``, whose smallest non-negative root the authors' code
    takes); found by bisection on ``β ∈ [0, 1/3]`` and clamped there (``k > 1/g(1/3) ≈ 1.31``:
    one step maps ``k`` to ``g(1/3)·k ≈ 0.77k`` instead of 1). ``α = 0`` where ``k <= 1``.
    """
    target = 1.0 / jnp.maximum(k, 1.0)
    lo, hi = jnp.zeros_like(target), jnp.full_like(target, _SOFT_CAP_BETA_MAX)

    def body(_, carry):
        lo, hi = carry
        mid = 0.5 * (lo + hi)
        above = soft_cap_gain(mid) > target  # g decreasing: the root lies right of mid
        return jnp.where(above, mid, lo), jnp.where(above, hi, mid)

    lo, hi = jax.lax.fori_loop(0, _BISECTIONS, body, (lo, hi))
    beta = jnp.where(k > 1.0, 0.5 * (lo + hi), 0.0)
    beta = jnp.where(soft_cap_gain(hi) >= target, hi, beta)  # clamped at β_max
    return jnp.where(k > 1.0, beta, 0.0) / jnp.where(jnp.isfinite(k) & (k > 0), k * k, jnp.inf)


def _cubic_step(x: jax.Array, s: jax.Array, sign: float) -> jax.Array:
    """``x(I + sign·s²xᵀx)`` on the short side (``s`` per matrix, ``(..., 1, 1)``)."""
    z = s * x
    if x.shape[-2] < x.shape[-1]:  # wide: (I + sign·zzᵀ)x
        return x + sign * ((z @ _mT(z)) @ x)
    return x + sign * (x @ (_mT(z) @ z))


@jax.jit
def soft_cap(x: jax.Array, c, k: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The spectral soft cap of ``x`` at ``c``, coupled to a bound ``k·c ≥ σ_max``; also ``α``.

    ``c·p₂(p₁(x/c))`` with ``p₁(M) = M(I − αMᵀM)``, ``p₂(M) = M(I + αMᵀM)`` and
    ``α = soft_cap_alpha(k)``: every singular value ``σ`` becomes ``c·f_α(σ/c)``,
    ``f_α(σ) = p₂(p₁(σ))``, and ``f_α(k) = 1``. The Gram factors are formed from ``√α·x/c``,
    whose singular values are at most ``√(1/3)``, so nothing can overflow.
    """
    c = jnp.asarray(c, x.dtype)
    alpha = soft_cap_alpha(k.astype(x.dtype))
    s = (jnp.sqrt(alpha) / c)[..., None, None]
    y = _cubic_step(x, s, -1.0)
    return _cubic_step(y, s, 1.0), alpha
