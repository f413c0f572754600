"""Sharpness-aware minimization (SAM) as one extra-args transform that goes first in a chain.

Built in layers, each small enough to test on its own:

1. per-norm perturbations ``ε`` (:func:`perturb_l2`, :func:`perturb_linf`,
   :func:`perturb_adaptive_l2`, :func:`perturb_adaptive_linf`), chosen at construction;
2. :func:`_reject`, "remove the component of ``a`` along ``b̂``", shared by GSAM's correction and
   LookSAM's stored direction; :func:`_looksam_reuse`, the step that reuses that direction;
3. :func:`_full_step` (one ``grad_fn`` call) and :func:`_update`, which picks the full or the
   reuse step and records the metrics; ``sam_perturb``'s ``update_fn`` only checks its inputs.

The grad_fn plumbing (``require_grad_fn``, ``call_grad_fn``, ``check_not_nested``) and the
float32 tree arithmetic live in :mod:`optareg._extra_args`, shared with ``sharpness_monitor``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optareg import _chain, _counters, _extra_args, _masking, _numerics, _validation
from optareg._extra_args import tree_cos, tree_dot, tree_norm, tree_scale
from optareg._numerics import safe_inv, upcast

__all__ = [
    "SamPerturbState",
    "perturb_adaptive_l2",
    "perturb_adaptive_linf",
    "perturb_l2",
    "perturb_linf",
    "sam_perturb",
]

_NAME = "sam_perturb"

Leaves = Sequence[jax.Array]


class SamPerturbState(NamedTuple):
    """State of :func:`sam_perturb`.

    Attributes:
      count: int32 step counter of shape ``()``; a ``rho`` schedule is evaluated on it and, with
        ``reuse_every=k > 1``, the steps with ``count % k == 0`` are the full SAM steps.
      grad_norm: float32 ``‖g‖`` of the incoming gradient (all leaves), from the last step whose
        ``count % metrics_every == 0``.
      perturbed_grad_norm: float32 ``‖g_p‖``, the norm of the gradient at ``θ + ε`` of the last
        full step (carried over on LookSAM reuse steps, which compute no ``g_p``) whose
        ``count % metrics_every == 0``.
      cos: float32 cosine between the incoming gradient and the returned one, from the last
        step whose ``count % metrics_every == 0`` (0 when either is zero).
      g_v: LookSAM's stored direction ``g_v`` (params-shaped, dtype of the gradients) when
        ``reuse_every > 1``; ``None`` otherwise. Its presence is fixed at construction.

    The three scalars are float32 also under ``jax_enable_x64``: every field keeps its dtype and
    shape across updates (``jax.lax.scan`` / ``jax.lax.cond`` carry it unchanged).
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


def _metric(x: jax.Array) -> jax.Array:
    """A state scalar: float32 whatever the compute dtype (float64 under x64)."""
    return jnp.asarray(x).astype(jnp.float32)


# ---------------------------------------------------------------------------------------------
# 1. per-norm perturbations: ε per leaf, in compute dtype, zeros for the masked-out leaves
# ---------------------------------------------------------------------------------------------


def _place(g: Leaves, sel: Sequence[bool], values: Leaves) -> list[jax.Array]:
    """``values`` at the selected leaves (in order), compute-dtype zeros elsewhere."""
    out = [jnp.zeros(jnp.shape(x), _numerics.compute_dtype(x)) for x in g]
    for i, v in zip([i for i, s in enumerate(sel) if s], values, strict=True):
        out[i] = v
    return out


def _pick(xs: Leaves, sel: Sequence[bool]) -> list[jax.Array]:
    return [x for x, s in zip(xs, sel, strict=True) if s]


def perturb_l2(g: Leaves, p: Leaves, sel: Sequence[bool], rho, eta, eps) -> list[jax.Array]:
    """``ε = ρ·g/(‖g‖ + eps)`` with the global norm over the selected leaves (0 for ``g = 0``)."""
    del p, eta
    chosen = _pick(g, sel)
    scale = rho * safe_inv(tree_norm(chosen), eps)
    return _place(g, sel, [scale * upcast(x) for x in chosen])


def perturb_linf(g: Leaves, p: Leaves, sel: Sequence[bool], rho, eta, eps) -> list[jax.Array]:
    """``ε = ρ·sign(g)`` on the selected leaves."""
    del p, eta, eps
    return _place(g, sel, [rho * jnp.sign(upcast(x)) for x in _pick(g, sel)])


def perturb_adaptive_l2(
    g: Leaves, p: Leaves, sel: Sequence[bool], rho, eta, eps
) -> list[jax.Array]:
    """ASAM: ``ε = ρ·T²g/(‖Tg‖ + eps)``, ``T = |θ| + η_a``.

    Computed with ``g/s`` (``s`` a power of two ``>= max|g|``) so that ``Tg`` and ``T²g`` cannot
    overflow; ``eps/s`` keeps ``ρ/(‖Tg‖ + eps)`` exactly.
    """
    chosen = _pick(g, sel)
    s = tree_scale(chosen)
    t = [jnp.abs(upcast(q)) + eta for q in _pick(p, sel)]
    tg = [ti * (upcast(x) / s) for ti, x in zip(t, chosen, strict=True)]
    scale = rho * safe_inv(tree_norm(tg), eps / s)
    return _place(g, sel, [ti * (scale * y) for ti, y in zip(t, tg, strict=True)])


def perturb_adaptive_linf(
    g: Leaves, p: Leaves, sel: Sequence[bool], rho, eta, eps
) -> list[jax.Array]:
    """ASAM in the l∞ ball: ``ε = ρ·T·sign(g)``, ``T = |θ| + η_a``."""
    del eps
    values = [
        rho * jnp.sign(upcast(x)) * (jnp.abs(upcast(q)) + eta)
        for x, q in zip(_pick(g, sel), _pick(p, sel), strict=True)
    ]
    return _place(g, sel, values)


_PERTURBATIONS = {
    ("l2", False): perturb_l2,
    ("linf", False): perturb_linf,
    ("l2", True): perturb_adaptive_l2,
    ("linf", True): perturb_adaptive_linf,
}


# ---------------------------------------------------------------------------------------------
# 2. GSAM / LookSAM building blocks
# ---------------------------------------------------------------------------------------------


def _reject(a: Leaves, b: Leaves, inv_b_norm: jax.Array) -> list[jax.Array]:
    """``a − (a·b̂)b̂`` with ``b̂ = b·inv_b_norm``: the part of ``a`` orthogonal to ``b``.

    Computed in units of ``s`` (a power of two ``>= max|a|``), so the dot product cannot
    overflow; the result is in compute dtype. GSAM uses it with ``(a, b) = (g, g_p)``, LookSAM
    with ``(g_p, g)``.
    """
    s = tree_scale(a)
    hat = [upcast(x) * inv_b_norm for x in b]
    a_s = [upcast(x) / s for x in a]
    proj = tree_dot(a_s, hat)
    return [s * (x - proj * h) for x, h in zip(a_s, hat, strict=True)]


def _gsam(g: Leaves, gp: Leaves, gp_norm: jax.Array, alpha) -> list[jax.Array]:
    """GSAM: ``g_out = g_p − α·(g − (g·ĝ_p)ĝ_p)``, in the gradients' dtype."""
    ortho = _reject(g, gp, safe_inv(gp_norm))
    return [(upcast(x) - alpha * o).astype(y.dtype) for x, o, y in zip(gp, ortho, g, strict=True)]


def _looksam_direction(g: Leaves, gp: Leaves, g_norm: jax.Array, like: Leaves) -> list:
    """LookSAM's stored direction ``g_v = g_p − (g_p·ĝ)ĝ``, in the dtypes of ``like``."""
    gv = _reject(gp, g, safe_inv(g_norm))
    return [v.astype(w.dtype) for v, w in zip(gv, like, strict=True)]


def _looksam_reuse(g: Leaves, gv: Leaves, g_norm: jax.Array, alpha) -> list[jax.Array]:
    """A LookSAM reuse step (no ``grad_fn`` call): ``g + α·(‖g‖/‖g_v‖)·g_v``."""
    inv_v = safe_inv(tree_norm(gv))
    weight = alpha * g_norm
    return [
        (upcast(x) + weight * (upcast(v) * inv_v)).astype(x.dtype)
        for x, v in zip(g, gv, strict=True)
    ]


# ---------------------------------------------------------------------------------------------
# 3. one update
# ---------------------------------------------------------------------------------------------


class _Config(NamedTuple):
    """What ``sam_perturb`` fixed at construction."""

    perturb: Callable
    hyper: tuple  # (rho, adaptive_eta, gsam_alpha, reuse_alpha, eps): constants or schedules
    gsam: bool  # False when gsam_alpha is a static 0: no GSAM arithmetic is traced
    mask: Any
    period: Any  # reuse_every: a Python int, or a tracer under inject_hyperparams
    every: Any  # metrics_every: a Python int, or a tracer under inject_hyperparams


class _Hyper(NamedTuple):
    rho: Any
    eta: Any
    alpha: Any
    reuse_alpha: Any
    eps: Any


class _Inputs(NamedTuple):
    """One update's flattened inputs."""

    treedef: Any
    g: list
    p: list
    sel: list
    hp: _Hyper
    on: jax.Array  # rho > 0; rho == 0 disables the GSAM / LookSAM corrections too
    g_norm: Any  # ‖g‖, computed up front only when LookSAM needs it


def _full_step(cfg: _Config, x: _Inputs, state: SamPerturbState, grad_fn, updates):
    """A full step: ``g_out`` from ``grad_fn(θ + ε)``, LookSAM's ``g_v``, the ``‖g_p‖`` metric."""
    hp = x.hp
    eps = cfg.perturb(x.g, x.p, x.sel, hp.rho, hp.eta, hp.eps)
    shifted = [
        (upcast(q) + jax.lax.stop_gradient(e)).astype(q.dtype)
        for q, e in zip(x.p, eps, strict=True)
    ]
    gp_tree = _extra_args.call_grad_fn(grad_fn, x.treedef.unflatten(shifted), updates, _NAME)
    gp = x.treedef.flatten_up_to(gp_tree)
    if cfg.gsam:  # GSAM needs ‖g_p‖ on every full step; plain SAM only as a metric
        gp_norm = tree_norm(gp)
        out = _gsam(x.g, gp, gp_norm, hp.alpha)
    else:
        gp_norm = None
        out = [a.astype(b.dtype) for a, b in zip(gp, x.g, strict=True)]
    # rho == 0: θ + ε = θ, so g_p is g by contract; return g itself (bit-exact, however XLA
    # compiles the user's grad_fn inside this program).
    out = [jnp.where(x.on, o, y) for o, y in zip(out, x.g, strict=True)]
    gp_metric = _counters.on_metrics_step(
        cfg.every,
        state.count,
        lambda: _metric(gp_norm if gp_norm is not None else tree_norm(gp)),
        state.perturbed_grad_norm,
    )
    if state.g_v is None:
        return out, None, gp_metric
    gv_old = x.treedef.flatten_up_to(state.g_v)
    return out, _looksam_direction(x.g, gp, x.g_norm, gv_old), gp_metric


def _update(cfg: _Config, updates, state: SamPerturbState, params, grad_fn):
    """One step: the full step (or, with LookSAM, ``lax.cond`` of full / reuse) and metrics."""
    treedef = jax.tree.structure(updates)
    g = treedef.flatten_up_to(updates)
    hp = _Hyper(*(_counters.evaluate(v, state.count) for v in cfg.hyper))
    x = _Inputs(
        treedef=treedef,
        g=g,
        p=treedef.flatten_up_to(params),
        sel=_masking.leaf_flags(cfg.mask, params, treedef),
        hp=hp,
        on=jnp.asarray(hp.rho) > 0,
        g_norm=None if state.g_v is None else tree_norm(g),
    )

    def full(_):
        return _full_step(cfg, x, state, grad_fn, updates)

    def reuse(_):
        gv = treedef.flatten_up_to(state.g_v)
        alpha = jnp.where(x.on, hp.reuse_alpha, 0.0)
        return _looksam_reuse(g, gv, x.g_norm, alpha), gv, state.perturbed_grad_norm

    if state.g_v is None:
        out, gv, gp_norm = full(None)
    else:
        out, gv, gp_norm = jax.lax.cond(state.count % cfg.period == 0, full, reuse, None)

    def stats():
        g_norm = x.g_norm if x.g_norm is not None else tree_norm(g)
        return _metric(g_norm), _metric(tree_cos(g, out))

    grad_norm, cos = _counters.on_metrics_step(
        cfg.every, state.count, stats, (state.grad_norm, state.cos)
    )
    new_state = SamPerturbState(
        count=_counters.increment(state.count),
        grad_norm=grad_norm,
        perturbed_grad_norm=gp_norm,
        cos=cos,
        g_v=None if gv is None else treedef.unflatten(gv),
    )
    return treedef.unflatten(out), new_state


# ---------------------------------------------------------------------------------------------
# argument checks
# ---------------------------------------------------------------------------------------------


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


def _reuse_period(value: Any) -> Any:
    """The LookSAM period as a Python int, or the tracer itself.

    ``optax.inject_hyperparams`` passes every numeric argument not named in ``static_args`` as
    an array (traced under ``jit``); ``reuse_every`` is structural (it decides whether the state
    holds ``g_v``), so it is read where it is concrete (``init``) and used as a traced integer
    in ``count % reuse_every`` otherwise.
    """
    if isinstance(value, (jax.core.Tracer, jax.Array)) and not jnp.issubdtype(
        value.dtype, jnp.integer
    ):
        raise TypeError(f"`reuse_every` must be an integer; got dtype {value.dtype}.")
    if isinstance(value, jax.core.Tracer):
        return value
    return _validation.check_int("reuse_every", value, low=1)


def _check_arguments(rho, norm, adaptive, adaptive_eta, gsam_alpha, reuse_alpha, eps, mask):
    _validation.check_scalar("rho", rho, low=0.0)
    _validation.check_choice("norm", norm, ("l2", "linf"))
    _validation.check_bool("adaptive", adaptive)
    _validation.check_scalar("adaptive_eta", adaptive_eta, low=0.0)
    _validation.check_scalar("gsam_alpha", gsam_alpha, low=0.0)
    _validation.check_scalar("reuse_alpha", reuse_alpha, low=0.0)
    _validation.check_scalar("eps", eps, low=0.0)
    _masking.check_mask("mask", mask)


_NOT_CONCRETE_MSG = (
    "sam_perturb: `reuse_every` must be concrete at init (it decides whether the state stores "
    "LookSAM's direction); pass it in `static_args` of `optax.inject_hyperparams`."
)


def sam_perturb(
    rho: _validation.ScalarOrSchedule = 0.05,
    *,
    norm: str = "l2",
    adaptive: bool = False,
    adaptive_eta: float = 0.01,
    gsam_alpha: float = 0.0,
    reuse_every: int = 1,
    reuse_alpha: float = 0.7,
    eps: float = 1e-12,
    mask: _validation.MaskOrFn = None,
    axis_name: str | tuple[str, ...] | None = None,
    metrics_every: int = 1,
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
      receives the full parameters and the returned gradient covers every leaf. A callable
      pytree (an Equinox module of bools) is a mask tree, as in ``optax.masked``. Do not wrap
      the transform in ``optax.masked`` (a ``ValueError``): it would hand ``grad_fn`` masked
      parameters.
    * Gradient accumulation: put the accumulation **after** SAM,
      ``optareg.chain(optareg.sam_perturb(rho), optax.MultiSteps(opt, k))``: every micro-batch
      is perturbed with its own gradient and ``grad_fn``, and ``opt`` steps with the mean of the
      ``k`` SAM gradients (``rho`` schedules then count micro-batches). Inside
      ``optax.MultiSteps`` SAM would see the mean gradient but only the last micro-batch's
      ``grad_fn``; that nesting is a ``ValueError``.
    * ``axis_name``: SAM under ``shard_map`` / ``pmap`` is m-sharpness: each device perturbs with
      its **local** gradient and the transform inserts no collective; the caller averages the
      returned gradient (``jax.lax.pmean``) before or after the base optimizer. The name is
      validated and documents intent. Trap: inside ``shard_map`` the gradient with respect to a
      *replicated* input is already summed over the axis (the transpose of the implicit
      broadcast is a ``psum``); make the parameters device-varying first,
      ``params = jax.lax.pcast(params, "data", to="varying")``, so that ``jax.grad`` gives the
      local gradient.

    ``grad_fn(params) -> grads`` must close over the same batch and RNG as ``g`` and return the
    gradient tree only (``jax.grad``, not ``jax.value_and_grad``). With Flax NNX models that
    carry BatchNorm statistics or Dropout RNGs, build it with :func:`optareg.nnx_sam_grad_fn`
    *before* the clean pass. bfloat16 parameters keep their dtype (norms and ``ε`` are
    computed in float32).

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
      metrics_every: compute the three metrics only on steps with ``count % metrics_every == 0``
        (an int ``>= 1``) and keep the previous values in between; the updates do not change.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose ``update`` requires the keyword
      ``grad_fn``; its state is :class:`SamPerturbState` (metrics ``"sam_perturb/grad_norm"``,
      ``"sam_perturb/perturbed_grad_norm"``, ``"sam_perturb/cos"`` via :func:`optareg.metrics`).

    Raises:
      ValueError: a hyperparameter out of range; ``update`` called without ``grad_fn``, with a
        ``grad_fn`` that returns something else than the gradient tree, or inside
        ``optax.MultiSteps`` / ``optax.masked``.
      TypeError: an argument of the wrong type.

    Example:
      >>> import jax, jax.numpy as jnp, optax, optareg
      >>> loss = lambda p: 0.5 * jnp.sum(jnp.array([1.0, 10.0]) * p["w"] ** 2)
      >>> tx = optareg.chain(optareg.sam_perturb(rho=0.1), optax.sgd(0.1))
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
    _check_arguments(rho, norm, adaptive, adaptive_eta, gsam_alpha, reuse_alpha, eps, mask)
    _check_axis_name(axis_name)
    period = _reuse_period(reuse_every)
    every = _validation.check_metrics_every(metrics_every)
    cfg = _Config(
        perturb=_PERTURBATIONS[(norm, adaptive)],
        hyper=(rho, adaptive_eta, gsam_alpha, reuse_alpha, eps),
        gsam=not _is_static_zero(gsam_alpha),
        mask=mask,
        period=period,
        every=every,
    )

    def init_fn(params):
        if isinstance(period, jax.core.Tracer):
            raise ValueError(_NOT_CONCRETE_MSG)
        zero = jnp.zeros([], jnp.float32)
        if _validation.is_params_placeholder(params):  # optax.tree.map_params probing the state
            g_v = params if period > 1 else None
        else:
            _masking.check_mask_matches("mask", mask, params)
            g_v = jax.tree.map(jnp.zeros_like, params) if period > 1 else None
        return SamPerturbState(_counters.init_count(), zero, zero, zero, g_v)

    def update_fn(updates, state, params=None, *, grad_fn: Callable | None = None, **extra):
        del extra
        _extra_args.check_not_nested(_NAME)
        grad_fn = _extra_args.require_grad_fn(grad_fn, _NAME)
        _validation.require_params(params, _NAME)
        return _update(cfg, updates, state, params, grad_fn)

    tx = optax.GradientTransformationExtraArgs(init_fn, update_fn)
    return _chain.tag(tx, "extra_args", _NAME)
