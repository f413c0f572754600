"""Sharpness-aware minimization (SAM) as one extra-args transform that goes first in a chain."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optareg import _base

__all__ = ["SamPerturbState", "sam_perturb"]

_NAME = "sam_perturb"

_NO_GRAD_FN_MSG = (
    "sam_perturb: `grad_fn` is missing. SAM needs the gradient at the perturbed weights: call "
    "`tx.update(grads, state, params, grad_fn=lambda p: jax.grad(loss)(p, batch))`, closing over "
    "the same batch (and RNG) that gave `grads`. `optax.chain` forwards the keyword."
)


class SamPerturbState(NamedTuple):
    """State of :func:`sam_perturb`.

    Attributes:
      count: int32 step counter of shape ``()``; a ``rho`` schedule is evaluated on it and, with
        ``reuse_every=k > 1``, the steps with ``count % k == 0`` are the full SAM steps.
      grad_norm: float32 ``‖g‖`` of the incoming gradient of the last step (all leaves).
      perturbed_grad_norm: float32 ``‖g_p‖``, the norm of the gradient at ``θ + ε`` of the last
        full step (carried over on LookSAM reuse steps, which compute no ``g_p``).
      cos: float32 cosine between the incoming gradient and the returned one, last step
        (0 when either is zero).
      g_v: LookSAM's stored direction ``g_v`` (params-shaped, dtype of the gradients) when
        ``reuse_every > 1``; ``None`` otherwise. Its presence is fixed at construction.
    """

    count: jax.Array  # int32, shape ()
    grad_norm: jax.Array  # float32, shape ()
    perturbed_grad_norm: jax.Array  # float32, shape ()
    cos: jax.Array  # float32, shape ()
    g_v: Any

    def optareg_metrics(self) -> dict[str, jax.Array]:
        return {
            f"{_NAME}/grad_norm": self.grad_norm,
            f"{_NAME}/perturbed_grad_norm": self.perturbed_grad_norm,
            f"{_NAME}/cos": self.cos,
        }


# ---------------------------------------------------------------------------------------------
# small float32 helpers over lists of leaves
# ---------------------------------------------------------------------------------------------


def _f32(x: jax.Array) -> jax.Array:
    return x.astype(_base.compute_dtype(x))


def _dot(xs, ys) -> jax.Array:
    total = jnp.zeros([], jnp.float32)
    for x, y in zip(xs, ys, strict=True):
        total = total + jnp.sum(_f32(x) * _f32(y))
    return total


def _scale(xs) -> jax.Array:
    """A power of two >= the largest |entry| over all leaves (1 for none / all zero)."""
    maxes = [jnp.max(jnp.abs(_f32(x))) for x in xs if x.size]
    if not maxes:
        return jnp.ones([], jnp.float32)
    return _base.pow2_scale(jnp.max(jnp.stack(maxes)))


def _norm(xs) -> jax.Array:
    """Global norm, overflow-safe: ``s·‖x/s‖`` (bit-identical to ``√Σx²`` in the normal range;
    ``+inf`` only when the exact norm exceeds float32's range)."""
    s = _scale(xs)
    return jnp.sqrt(_dot([_f32(x) / s for x in xs], [_f32(x) / s for x in xs])) * s


def _cos(xs, ys) -> jax.Array:
    """Cosine of two trees, computed on ``x/s_x`` and ``y/s_y`` (no overflow; 0 if either is 0)."""
    sx, sy = _scale(xs), _scale(ys)
    xs = [_f32(x) / sx for x in xs]
    ys = [_f32(y) / sy for y in ys]
    return _dot(xs, ys) * _safe_inv(jnp.sqrt(_dot(xs, xs)) * jnp.sqrt(_dot(ys, ys)))


def _safe_inv(n: jax.Array, eps: Any = 0.0) -> jax.Array:
    """``1/(n + eps)`` where ``n > 0``, else 0: a zero vector is never divided by zero."""
    return jnp.where(n > 0, 1.0 / (n + eps), 0.0)


def _check_axis_name(axis_name: Any) -> None:
    if axis_name is None or isinstance(axis_name, str):
        return
    if isinstance(axis_name, tuple) and axis_name and all(isinstance(a, str) for a in axis_name):
        return
    raise TypeError(
        "`axis_name` must be None, a mesh/pmap axis name (str) or a non-empty tuple of them; "
        f"got {axis_name!r}."
    )


def _is_static_zero(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and x == 0


def _reuse_period(reuse_every: Any) -> int | None:
    """The LookSAM period as a Python int, or ``None`` when it is a tracer.

    ``optax.inject_hyperparams`` passes every numeric argument not named in ``static_args`` as
    an array (traced under ``jit``); ``reuse_every`` is structural (it decides whether the state
    holds ``g_v``), so it is read at ``init``, where it is concrete, and recovered from the state
    afterwards.
    """
    if isinstance(reuse_every, jax.core.Tracer):
        return None
    if isinstance(reuse_every, (jax.Array,)) and not jnp.issubdtype(reuse_every.dtype, jnp.integer):
        raise TypeError(f"`reuse_every` must be an integer; got dtype {reuse_every.dtype}.")
    return _base.check_int("reuse_every", reuse_every, low=1)


def sam_perturb(
    rho: _base.ScalarOrSchedule = 0.05,
    *,
    norm: str = "l2",
    adaptive: bool = False,
    adaptive_eta: float = 0.01,
    gsam_alpha: float = 0.0,
    reuse_every: int = 1,
    reuse_alpha: float = 0.7,
    eps: float = 1e-12,
    mask: _base.MaskOrFn = None,
    axis_name: str | tuple[str, ...] | None = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Sharpness-aware minimization: replace the gradient by the gradient at ``θ + ε``.

    One ``update`` call is one real step. With the incoming gradient ``g`` (at ``θ``) the
    transform forms the worst-case perturbation ``ε`` inside a ball of radius ``ρ``, calls
    ``grad_fn(θ + ε)`` once and passes the result on to the optimizer that follows it. The
    perturbed weights never leave the transform. It goes **first** in the chain:

    .. math::

        \varepsilon = \rho\,\frac{g}{\lVert g\rVert_2 + \epsilon} \;(\texttt{l2}),\qquad
        \varepsilon = \rho\,\operatorname{sign}(g) \;(\texttt{linf}),\qquad
        g_{\mathrm{out}} = \nabla L(\theta + \operatorname{sg}(\varepsilon)).

    ``‖g‖`` is the **global** norm over all (masked-in) leaves, computed in float32; a zero
    gradient gives ``ε = 0`` (never NaN), and ``rho = 0`` returns ``g`` itself (``θ + 0 = θ``, so
    ``grad_fn(θ) = g`` by contract): the base optimizer bit for bit, also with GSAM or LookSAM.

    * ``adaptive=True`` (ASAM): with ``T = |θ| + η_a`` elementwise, the ball is
      ``‖T⁻¹ε‖ ≤ ρ``, so ``ε = ρ·T²g/‖Tg‖`` (l2) or ``ε = ρ·T·sign(g)`` (linf).
    * ``gsam_alpha = α > 0`` (GSAM): with the perturbed gradient ``g_p`` and
      ``ĝ_p = g_p/‖g_p‖``, ``g_out = g_p − α·(g − (g·ĝ_p)ĝ_p)``, i.e. descend the surrogate gap
      along the part of ``g`` orthogonal to ``g_p``. Dot products and norms are global over the
      whole tree.
    * ``reuse_every = k > 1`` (LookSAM): steps ``0, k, 2k, …`` (``count % k == 0``; the first
      step is always full, since nothing is stored yet) are full SAM steps; they store
      ``g_v = g_s − (g·g_s/‖g‖²)·g`` (``g_s`` = the SAM gradient ``g_p``). The other steps make
      **no** ``grad_fn`` call (``jax.lax.cond``) and return
      ``g_out = g + α_r·(‖g‖/‖g_v‖)·g_v`` with ``α_r = reuse_alpha``. Average cost
      ``1 + 1/k`` gradient evaluations per step; the state then holds ``g_v`` (one copy of the
      gradients). GSAM applies on the full steps only.
    * ``mask``: only masked-in leaves are perturbed (``ε`` is computed from their gradients only;
      the others see ``ε = 0``), e.g. normalization layers only ("SAM-ON"). ``grad_fn`` still
      receives the full parameters and the returned gradient covers every leaf. Do not wrap the
      transform in ``optax.masked``: it would hand ``grad_fn`` masked parameters.
    * ``axis_name``: SAM under ``shard_map`` / ``pmap`` is m-sharpness: each device perturbs with
      its **local** gradient and the transform inserts no collective; the caller averages the
      returned gradient (``jax.lax.pmean``) before or after the base optimizer. The name is
      validated and documents intent. Trap: inside ``shard_map`` the gradient with respect to a
      *replicated* input is already summed over the axis (the transpose of the implicit
      broadcast is a ``psum``); make the parameters device-varying first,
      ``params = jax.lax.pcast(params, "data", to="varying")``, so that ``jax.grad`` gives the
      local gradient.

    ``grad_fn(params) -> grads`` must close over the same batch and RNG as ``g``; any auxiliary
    output of the perturbed pass (e.g. BatchNorm statistics) is the caller's to drop. bfloat16
    parameters keep their dtype (norms and ``ε`` are computed in float32).

    Args:
      rho: the radius ``ρ >= 0`` (constant or schedule of this transform's step count).
      norm: ``"l2"`` or ``"linf"``: the norm of the perturbation ball.
      adaptive: ASAM's scale-invariant ball ``‖T⁻¹ε‖ ≤ ρ``, ``T = |θ| + adaptive_eta``.
      adaptive_eta: ``η_a >= 0`` in ASAM's ``T`` (constant or schedule, as are the next three).
      gsam_alpha: GSAM's ``α >= 0``; 0 is plain SAM.
      reuse_every: LookSAM period ``k >= 1`` (a Python int; pass it in ``static_args`` of
        ``optax.inject_hyperparams``); 1 is plain SAM (no stored direction).
      reuse_alpha: LookSAM's ``α_r >= 0``, the weight of the reused direction.
      eps: ``>= 0`` added to the norm that normalizes ``ε`` (l2).
      mask: optax-style mask (pytree or prefix of bools, or a callable of the params; ``True`` =
        perturb this leaf).
      axis_name: ``None``, a str or a tuple of str (see above).

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose ``update`` requires the keyword
      ``grad_fn``; its state is :class:`SamPerturbState` (metrics ``"sam_perturb/grad_norm"``,
      ``"sam_perturb/perturbed_grad_norm"``, ``"sam_perturb/cos"`` via :func:`optareg.metrics`).

    Raises:
      ValueError: a hyperparameter out of range, or ``update`` called without ``grad_fn``.
      TypeError: an argument of the wrong type.

    Example:
      >>> import jax, jax.numpy as jnp, optax, optareg
      >>> loss = lambda p: 0.5 * jnp.sum(jnp.array([1.0, 10.0]) * p["w"] ** 2)
      >>> tx = optax.chain(optareg.sam_perturb(rho=0.1), optax.sgd(0.1))
      >>> params = {"w": jnp.array([3.0, 4.0])}
      >>> state = tx.init(params)
      >>> updates, state = tx.update(jax.grad(loss)(params), state, params,
      ...                            grad_fn=jax.grad(loss))
      >>> [round(float(u), 4) for u in updates["w"]]  # −η·A(θ + ρ·g/‖g‖), g = Aθ = (3, 40)
      [-0.3007, -4.0997]
      >>> float(optareg.metrics(state)["sam_perturb/grad_norm"])
      40.11234...

    References:
      Foret, Kleiner, Mobahi & Neyshabur, "Sharpness-Aware Minimization for Efficiently
      Improving Generalization", ICLR 2021.
      Kwon, Kim, Park & Choi, "ASAM: Adaptive Sharpness-Aware Minimization for Scale-Invariant
      Learning of Deep Neural Networks", ICML 2021.
      Zhuang et al., "Surrogate Gap Guided Sharpness-Aware Minimization" (GSAM), ICLR 2022.
      Liu et al., "Towards Efficient and Scalable Sharpness-Aware Minimization" (LookSAM),
      CVPR 2022.
      Andriushchenko & Flammarion, "Towards Understanding Sharpness-Aware Minimization"
      (m-sharpness), ICML 2022.
    """
    _base.check_scalar("rho", rho, low=0.0)
    _base.check_choice("norm", norm, ("l2", "linf"))
    if not isinstance(adaptive, bool):
        raise TypeError(f"`adaptive` must be a bool; got {type(adaptive).__name__} {adaptive!r}.")
    _base.check_scalar("adaptive_eta", adaptive_eta, low=0.0)
    _base.check_scalar("gsam_alpha", gsam_alpha, low=0.0)
    _base.check_scalar("reuse_alpha", reuse_alpha, low=0.0)
    _base.check_scalar("eps", eps, low=0.0)
    _base.check_mask("mask", mask)
    _check_axis_name(axis_name)
    period = _reuse_period(reuse_every)
    static_no_gsam = _is_static_zero(gsam_alpha)

    def init_fn(params):
        if period is None:
            raise ValueError(
                "sam_perturb: `reuse_every` must be concrete at init (it decides whether the "
                "state stores LookSAM's direction); pass it in `static_args` of "
                "`optax.inject_hyperparams`."
            )
        zero = jnp.zeros([], jnp.float32)
        if _base.is_params_placeholder(params):  # optax.tree.map_params probing the state
            g_v = params if period > 1 else None
        else:
            _base.check_mask_matches("mask", mask, params)
            g_v = jax.tree.map(jnp.zeros_like, params) if period > 1 else None
        return SamPerturbState(
            count=_base.init_count(),
            grad_norm=zero,
            perturbed_grad_norm=zero,
            cos=zero,
            g_v=g_v,
        )

    def mask_leaves(params, treedef) -> list[bool]:
        if mask is None:
            return [True] * treedef.num_leaves
        tree = mask(params) if callable(mask) else mask
        full = jax.tree.map(lambda m, p: jax.tree.map(lambda _: bool(m), p), tree, params)
        return treedef.flatten_up_to(full)

    def perturbation(g_leaves, p_leaves, sel, rho_t, eta_t, eps_t):
        """ε per leaf (float32; zeros for masked-out leaves)."""
        if adaptive:
            t_leaves = [jnp.abs(_f32(p)) + eta_t for p in p_leaves]
        else:
            t_leaves = [None] * len(p_leaves)
        zeros = [jnp.zeros(jnp.shape(g), _base.compute_dtype(g)) for g in g_leaves]
        idx = [i for i, s in enumerate(sel) if s]
        if norm == "linf":
            out = list(zeros)
            for i in idx:
                e = rho_t * jnp.sign(_f32(g_leaves[i]))
                out[i] = e * t_leaves[i] if adaptive else e
            return out
        if adaptive:
            # ε = ρ·T·(Tg/‖Tg‖): computed with g/s (s a power of two) so that Tg and T²g
            # cannot overflow; eps/s keeps ρ/(‖Tg‖ + eps) exactly.
            s = _scale([g_leaves[i] for i in idx])
            tg = [t_leaves[i] * (_f32(g_leaves[i]) / s) for i in idx]
            scale = rho_t * _safe_inv(_norm(tg), eps_t / s)
            out = list(zeros)
            for j, i in enumerate(idx):
                out[i] = t_leaves[i] * (scale * tg[j])
            return out
        scale = rho_t * _safe_inv(_norm([g_leaves[i] for i in idx]), eps_t)
        out = list(zeros)
        for i in idx:
            out[i] = scale * _f32(g_leaves[i])
        return out

    def update_fn(updates, state, params=None, *, grad_fn: Callable | None = None, **extra):
        del extra
        if grad_fn is None:
            raise ValueError(_NO_GRAD_FN_MSG)
        _base.require_params(params, _NAME)
        treedef = jax.tree.structure(updates)
        g_leaves = treedef.flatten_up_to(updates)
        p_leaves = treedef.flatten_up_to(params)
        sel = mask_leaves(params, treedef)
        rho_t = _base.evaluate(rho, state.count)
        eta_t = _base.evaluate(adaptive_eta, state.count)
        alpha_t = _base.evaluate(gsam_alpha, state.count)
        alpha_r = _base.evaluate(reuse_alpha, state.count)
        eps_t = _base.evaluate(eps, state.count)
        on = jnp.asarray(rho_t) > 0  # rho == 0: no GSAM / LookSAM correction either
        g_norm = _norm(g_leaves)
        gv_old = None if state.g_v is None else treedef.flatten_up_to(state.g_v)

        def full_step(_):
            eps_leaves = perturbation(g_leaves, p_leaves, sel, rho_t, eta_t, eps_t)
            perturbed = treedef.unflatten(
                [
                    (_f32(p) + jax.lax.stop_gradient(e)).astype(p.dtype)
                    for p, e in zip(p_leaves, eps_leaves, strict=True)
                ]
            )
            gp_leaves = treedef.flatten_up_to(grad_fn(perturbed))
            gp_norm = _norm(gp_leaves)
            if static_no_gsam:
                out = [gp.astype(g.dtype) for gp, g in zip(gp_leaves, g_leaves, strict=True)]
            else:
                alpha = alpha_t
                inv_p = _safe_inv(gp_norm)
                # g − (g·ĝ_p)ĝ_p in units of s (a power of two >= max|g|): no overflow in the dot
                s = _scale(g_leaves)
                hat = [_f32(gp) * inv_p for gp in gp_leaves]
                g_s = [_f32(g) / s for g in g_leaves]
                proj = _dot(g_s, hat)
                out = [
                    (_f32(gp) - alpha * (s * (gs - proj * h))).astype(g.dtype)
                    for gp, g, gs, h in zip(gp_leaves, g_leaves, g_s, hat, strict=True)
                ]
            # rho == 0: θ + ε = θ, so g_p is g by contract; return g itself (bit-exact, however
            # XLA compiles the user's grad_fn inside this program).
            out = [jnp.where(on, o, g) for o, g in zip(out, g_leaves, strict=True)]
            if state.g_v is None:
                return out, None, gp_norm
            inv_g = _safe_inv(g_norm)
            # g_p − (g_p·ĝ)ĝ in units of s (a power of two >= max|g_p|): no overflow in the dot
            s = _scale(gp_leaves)
            hat = [_f32(g) * inv_g for g in g_leaves]
            gp_s = [_f32(gp) / s for gp in gp_leaves]
            proj = _dot(gp_s, hat)
            gv = [
                (s * (gps - proj * h)).astype(v.dtype)
                for gps, h, v in zip(gp_s, hat, gv_old, strict=True)
            ]
            return out, gv, gp_norm

        def reuse_step(_):
            inv_v = _safe_inv(_norm(gv_old))
            weight = jnp.where(on, alpha_r, 0.0) * g_norm
            out = [
                (_f32(g) + weight * (_f32(v) * inv_v)).astype(g.dtype)
                for g, v in zip(g_leaves, gv_old, strict=True)
            ]
            return out, gv_old, state.perturbed_grad_norm

        if state.g_v is None:
            out, gv, gp_norm = full_step(None)
        else:
            k = period if period is not None else reuse_every
            out, gv, gp_norm = jax.lax.cond(state.count % k == 0, full_step, reuse_step, None)
        cos = _cos(g_leaves, out)
        new_state = SamPerturbState(
            count=_base.increment(state.count),
            grad_norm=g_norm,
            perturbed_grad_norm=gp_norm,
            cos=cos,
            g_v=None if gv is None else treedef.unflatten(gv),
        )
        return treedef.unflatten(out), new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
