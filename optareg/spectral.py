r"""Spectral-norm control of weight matrices: :func:`spectral_clip` (post-step) and diagnostics.

Every selected leaf is viewed as a batch of matrices ``W`` and, after each optimizer step,
brought back into ``{W : ‖W‖₂ ≤ c}``. The constraint lives in the optimizer, not in the model:
no reparametrised layers, no power-iteration vectors in ``batch_stats``; what a method keeps
(vectors, estimates) is optimizer state. The transform is one per-leaf operator on the shared
post-step path (:mod:`optareg._poststep`): masks, dtypes, the ``max_norm`` schedule and the
per-leaf state are handled there.

How a leaf becomes matrices (``layout``, ``stack_axes``, ``matrix_axes``)
--------------------------------------------------------------------------
A matrix is the leaf's *unit* (output) axis against all its other axes flattened; which axis is
the unit axis is the ``layout`` (:func:`optareg._paths.unit_axis`):

* ``"flax"`` (Flax linen / NNX, Haiku): the last axis. Dense ``(in, out)`` is itself; a conv
  kernel HWIO ``(kh, kw, I, O)`` is viewed as ``(kh·kw·I, O)``.
* ``"torch"`` (Equinox, PyTorch): the first axis. Linear ``(out, in)`` and conv
  ``(O, I, kh, kw)`` are viewed as ``W.reshape(O, -1)`` (transposed; the singular values are
  those of ``W.reshape(O, -1)``).
* ``"auto"`` (default): ``"torch"`` for a leaf named ``weight``, ``"flax"`` for ``kernel`` or
  ``w``, otherwise the last axis.

Which leaves are matrices (the weight-matrix rule shared by every grouping transform,
:mod:`optareg._paths`): without a mask, leaves whose per-layer rank is ``≥ 2`` and whose name
is not a bias (Equinox stores conv biases as ``(O, 1, 1)``), a norm scale or an embedding (the
name rules of :func:`optareg.masks.decay_mask`); with a mask, every masked-in leaf of per-layer
rank ``≥ 2``. The others pass through.

``stack_axes`` (the keyword every grouping transform takes): the number of leading axes of a
leaf that index a stack of layers (``nn.scan``, ``nnx.scan`` / ``nnx.vmap``,
``eqx.filter_vmap``): a stack ``(L, in, out)`` with ``stack_axes=1`` is ``L`` matrices, each
clipped on its own, and the layout applies to each layer. An int (every leaf), a pytree prefix
of the params with int / ``None`` leaves, or a callable ``(path, leaf) -> int | None``.

``matrix_axes`` overrides the layout where it is given:

* an ``int`` ``k``: a documented alias of ``stack_axes=k`` (the leading ``k`` axes index
  layers; a leaf whose per-layer rank is below 2, such as a stacked bias ``(L, out)``, is not a
  matrix and passes through).
* ``optax.contrib.MuonDimensionNumbers(reduction_axis, output_axis)``: exactly as in
  ``optax.contrib.muon``; every axis not named is a batch axis.
* a pytree (or prefix) of the above (``None`` leaves use the layout), or a callable
  ``params -> pytree``.

Convolutions: the reshaped norm is not the operator norm
--------------------------------------------------------
For a conv kernel the spectral norm of the reshaped matrix is *not* the Lipschitz constant of
the convolution: for stride 1 the operator norm can be up to ``√(kh·kw)`` times larger (Tsuzuku
et al. 2018; Sedghi et al. 2019). To certify a conv layer at ``c``, clip its reshape at
``c/√(kh·kw)`` (a second ``spectral_clip`` with a ``mask`` selecting the conv kernels), or
compute the exact operator norm of the convolution (FFT singular values, Sedghi et al.) as a
check; this transform only controls the reshaped matrix.

Which method
------------
The default, ``method="exact"``, is the Euclidean projection by ``eigh`` of the Gram matrix on
the short side. It is the default because it is the cheapest method that keeps the promise
from any start: a certificate ``σ_max ≤ c(1 + 10⁻³)`` needs ``O(m·n·min(m, n))`` work (a Gram
matrix and a factorization): the cheap upper bounds ``‖W‖_F`` and ``√(‖W‖₁‖W‖_∞)`` are loose by
up to ``√rank``, and power iteration only gives *lower* bounds. Among the methods that pay
that price, the Gram ``eigh`` is the fastest on CPU (faster than an SVD, and than 8
Newton–Schulz steps: ``bench/RESULTS.md``, suite 3) and is as accurate as the float32 SVD route;
``"newton_schulz"`` is faster on GPU but its bound is not certified from far outside the ball.
``"power"`` is the cheap spectral-normalization rescale (see :func:`spectral_clip`). The cost of
each per step, relative to ``adamw``: ``docs/families/spectral.md`` (``bench/RESULTS_spectral.md``).
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from optax.contrib import MuonDimensionNumbers

from optareg import _chain, _masking, _numerics, _paths, _poststep, _validation, sharding
from optareg._spectral_ops import (
    clip_exact,
    clip_newton_schulz,
    landing_pull,
    power_iterate,
    scaled_norm,
    sigma_max,
    soft_cap,
    soft_cap_gain,
    start_vectors,
)

__all__ = ["SpectralClipState", "spectral_clip", "spectral_norms"]

_NAME = "spectral_clip"
_METHODS = ("exact", "power", "newton_schulz", "soft_cap")
_INT_ARGS = ("num_iters", "init_iters", "ns_steps", "metrics_every")
# "power": the largest growth factor σ(θ + u)/σ(θ) of one step that the prediction follows;
# beyond it the estimate is deemed unreliable (e.g. θ changed outside the optimizer).
_MAX_GROWTH = 1.5


# --------------------------------------------------------------------------------------------
# matrix views of leaves
# --------------------------------------------------------------------------------------------


class _Plan(NamedTuple):
    """How one leaf is viewed as ``(B, m, n)`` matrices and back."""

    perm: tuple[int, ...]
    inv_perm: tuple[int, ...]
    batch_axes: tuple[int, ...]
    batch_shape: tuple[int, ...]
    m: int
    n: int
    unflat_shape: tuple[int, ...]

    @property
    def batch(self) -> int:
        return math.prod(self.batch_shape)


class _SpecBox:
    """A leaf wrapper so that a spec (or ``None``) survives tree broadcasting as one leaf."""

    __slots__ = ("spec",)

    def __init__(self, spec):
        self.spec = spec


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_spec(x: Any) -> bool:
    return x is None or isinstance(x, MuonDimensionNumbers) or _is_int(x)


def _is_none(x: Any) -> bool:
    return x is None


def _is_axes_fn(matrix_axes: Any) -> bool:
    return callable(matrix_axes) and not _is_spec(matrix_axes)


def _check_axes_tuple(ax: Any, what: str) -> None:
    axes = (ax,) if _is_int(ax) else ax
    if not isinstance(axes, (tuple, list)) or not axes or not all(_is_int(a) for a in axes):
        raise TypeError(
            f"`matrix_axes`: MuonDimensionNumbers.{what} must be an int or a non-empty tuple of "
            f"ints; got {ax!r}."
        )


def _check_matrix_axes(matrix_axes: Any) -> None:
    """Construction-time check of ``matrix_axes`` (the callable form is checked at init)."""
    if matrix_axes is None or _is_axes_fn(matrix_axes):
        return
    for leaf in jax.tree.leaves(matrix_axes, is_leaf=_is_spec):
        if _is_int(leaf):
            if leaf < 0:
                raise ValueError(
                    f"`matrix_axes`: an int means 'this many leading batch axes' and must be "
                    f">= 0; got {leaf}."
                )
        elif isinstance(leaf, MuonDimensionNumbers):
            _check_axes_tuple(leaf.reduction_axis, "reduction_axis")
            _check_axes_tuple(leaf.output_axis, "output_axis")
        elif isinstance(leaf, (jax.Array, np.ndarray)) and jnp.issubdtype(leaf.dtype, jnp.integer):
            raise TypeError(
                "`matrix_axes` is an array (optax.inject_hyperparams passes every number not in "
                "`static_args` as one); it decides shapes: pass static_args=('matrix_axes',)."
            )
        elif leaf is not None:
            raise TypeError(
                "`matrix_axes` must be None, an int (number of leading batch axes), an "
                "optax.contrib.MuonDimensionNumbers, a pytree of those, or a callable returning "
                f"one; found a leaf {leaf!r} of type {type(leaf).__name__}."
            )


def _muon_axes(spec: MuonDimensionNumbers, shape: tuple[int, ...], where: str):
    """``(batch, reduction, output)`` axes of a ``MuonDimensionNumbers`` spec, checked."""
    nd = len(shape)

    def norm(ax, what):
        axes = (ax,) if _is_int(ax) else tuple(ax)
        for a in axes:
            if not -nd <= a < nd:
                raise ValueError(
                    f"`matrix_axes`: {what} {a} is out of range for the leaf at {where} of "
                    f"shape {shape}."
                )
        return tuple(a % nd for a in axes)

    red, out = norm(spec.reduction_axis, "reduction_axis"), norm(spec.output_axis, "output_axis")
    if set(red) & set(out) or len(set(red)) != len(red) or len(set(out)) != len(out):
        raise ValueError(
            f"`matrix_axes`: reduction axes {red} and output axes {out} must be distinct and "
            f"disjoint (leaf at {where}, shape {shape})."
        )
    return tuple(a for a in range(nd) if a not in red and a not in out), red, out


def _plan_for(
    shape: tuple[int, ...],
    spec: Any,
    path: str,
    layout: str,
    leaf: _paths.LeafLayout | None = None,
    masked: bool = False,
) -> _Plan | None:
    """The matrix view of the leaf at ``path`` of ``shape``; ``None`` = not a matrix (also a
    leaf with no entries: it has no singular value, and passes through).

    ``spec`` ``None`` or an int ``k`` (the alias of ``stack_axes=k``): the leaf's stack axes
    (``leaf.stack``, or ``k``) are batch axes and each layer is its unit axis (``layout``, within
    the layer) against its other axes; without a mask (``masked`` false) only weight matrices
    (:func:`optareg._paths.leaf_layouts`), with one every leaf of per-layer rank ``≥ 2``. A
    ``MuonDimensionNumbers`` names the axes itself."""
    nd, where = len(shape), path or "<root>"
    if nd < 2 or 0 in shape:
        return None
    if spec is None or _is_int(spec):
        excluded = _paths.excluded(tuple(path.split("/"))) if leaf is None else leaf.excluded
        k = spec if _is_int(spec) else (leaf.stack if leaf else 0)
        if nd - k < 2 or (excluded and not masked):
            return None
        unit = k + _paths.unit_axis(layout, path, nd - k, default=-1)
        batch = tuple(range(k))
        red, out = tuple(a for a in range(k, nd) if a != unit), (unit,)
    else:
        batch, red, out = _muon_axes(spec, shape, where)
    perm = batch + red + out
    return _Plan(
        perm=perm,
        inv_perm=tuple(int(i) for i in np.argsort(perm)),
        batch_axes=batch,
        batch_shape=tuple(shape[a] for a in batch),
        m=math.prod(shape[a] for a in red),
        n=math.prod(shape[a] for a in out),
        unflat_shape=tuple(shape[a] for a in perm),
    )


def _specs(matrix_axes: Any, params: Any, treedef) -> list[Any]:
    """One spec per leaf of ``treedef`` (``matrix_axes`` broadcast over ``params``)."""
    spec_tree = matrix_axes(params) if _is_axes_fn(matrix_axes) else matrix_axes
    if _is_spec(spec_tree):
        return [spec_tree] * treedef.num_leaves
    _check_matrix_axes(spec_tree)
    try:
        boxed = jax.tree.map(
            lambda s, sub: jax.tree.map(lambda _: _SpecBox(s), sub, is_leaf=_is_none),
            spec_tree,
            params,
            is_leaf=_is_spec,
        )
        return [b.spec for b in treedef.flatten_up_to(boxed)]
    except (ValueError, TypeError) as e:
        raise ValueError(
            "`matrix_axes`: its tree structure must be the params' structure or a prefix of "
            f"it.\n  matrix_axes: {jax.tree.structure(spec_tree, is_leaf=_is_spec)}\n  "
            f"params: {jax.tree.structure(params)}"
        ) from e


def _plans(
    matrix_axes: Any, layout: str, params: Any, stack_axes: Any = None, masked: bool = False
) -> tuple[Any, list[str], list[Any]]:
    """The treedef of ``params`` (``None`` leaves kept), the leaf paths and one plan per leaf
    (``stack_axes`` and the weight-matrix rule from :func:`optareg._paths.leaf_layouts`;
    ``masked``: a mask chose the leaves, the name rule does not apply)."""
    treedef = jax.tree.structure(params, is_leaf=_is_none)
    flat = treedef.flatten_up_to(params)
    paths = _paths.leaf_paths(params, treedef)
    specs = _specs(matrix_axes, params, treedef)
    layouts = _paths.leaf_layouts(stack_axes, params)
    plans = [
        None if p is None else _plan_for(tuple(jnp.shape(p)), s, path, layout, lay, masked)
        for p, s, path, lay in zip(flat, specs, paths, layouts, strict=True)
    ]
    return treedef, paths, plans


def _to_mats(x: jax.Array, plan: _Plan) -> jax.Array:
    return jnp.transpose(x, plan.perm).reshape((plan.batch, plan.m, plan.n))


def _from_mats(y: jax.Array, plan: _Plan) -> jax.Array:
    return jnp.transpose(y.reshape(plan.unflat_shape), plan.inv_perm)


def _per_matrix(values: jax.Array, plan: _Plan, ndim: int) -> jax.Array:
    """One value per matrix (shape ``(B,)``), broadcastable against the leaf itself."""
    others = [a for a in range(ndim) if a not in plan.batch_axes]
    return jnp.expand_dims(values.reshape(plan.batch_shape), others)


# --------------------------------------------------------------------------------------------
# one per-leaf function per method
# --------------------------------------------------------------------------------------------


def _scalar(value: Any, dtype) -> jax.Array:
    """A hyperparameter as a scalar of ``dtype``, opaque to XLA's constant folding (a Python
    float and an ``inject_hyperparams`` array compile to the same arithmetic)."""
    return jax.lax.optimization_barrier(jnp.asarray(value).astype(dtype))


def _exact_leaf(leaf: _poststep.Leaf, plan: _Plan, c: jax.Array, **_) -> tuple[Any, dict]:
    """``"exact"``: the projection of ``θ + u`` by ``eigh`` of the Gram; σ_max is exact."""
    y, sigma = clip_exact(_to_mats(leaf.x, plan), c)
    return _from_mats(y, plan), {**leaf.state, "sigma": sigma.reshape(plan.batch_shape)}


def _exact_inside(leaf, y, new_state, land_at, max_norm, **_):
    """The exact method's inequality (:data:`optareg._poststep.Inequality`): a matrix that
    rounding left above ``c`` is landed at ``y·(1 − m)``, ``m`` from :func:`landing_pull`."""
    plan, dt = _ACTIVE_PLANS.get()[leaf.path], y.dtype
    c = _scalar(max_norm, dt)

    def mats(t):
        return _to_mats(t.astype(dt), plan)

    def land_scaled(scale):
        return mats(land_at(y * _per_matrix(scale, plan, y.ndim), 0))

    p = jnp.asarray(leaf.param)
    ulp = jnp.spacing(jnp.abs(p)).astype(dt) + 2 * jnp.spacing(jnp.abs(y).astype(p.dtype))
    sigma_x = new_state["sigma"].astype(dt).reshape(plan.batch)
    ok, scale = landing_pull(
        mats(leaf.landed), mats(y), sigma_x, c, land_scaled, mats(ulp.astype(dt))
    )
    nd = y.ndim
    return _per_matrix(ok, plan, nd), y * _per_matrix(scale, plan, nd), jnp.zeros((), dt)


def _vectors(leaf: _poststep.Leaf, plan: _Plan) -> tuple[jax.Array, jax.Array]:
    dt = leaf.x.dtype
    a = leaf.state["u"].astype(dt).reshape(plan.batch, plan.m)
    return a, leaf.state["v"].astype(dt).reshape(plan.batch, plan.n)


def _power_leaf(
    leaf: _poststep.Leaf, plan: _Plan, c: jax.Array, *, num_iters: int, **_
) -> tuple[Any, dict]:
    """``"power"``: ``θ + u`` rescaled by ``min(1, c/σ̂)``, σ̂ predicted from θ (see
    :func:`_power_scale`)."""
    a, b = _vectors(leaf, plan)
    ref = leaf.state["expected"].astype(leaf.x.dtype).reshape(plan.batch)
    a, b, scale, sigma, expected = _power_scale(_to_mats(leaf.theta, plan), a, b, ref, c, num_iters)
    shapes = plan.batch_shape
    return leaf.x * _per_matrix(scale, plan, leaf.x.ndim), {
        "u": a.reshape(shapes + (plan.m,)),
        "v": b.reshape(shapes + (plan.n,)),
        "sigma": sigma.reshape(shapes),
        "expected": expected.reshape(shapes),
    }


@_numerics.jit_static_ints(5)
def _power_scale(w, a, b, ref, c, num_iters):
    """Power iteration on θ (``w``, B matrices) and the rescale ``s = min(1, c/σ̂)``.

    It runs on θ, the matrix the optimizer reads anyway, not on ``θ + u`` (which would have to
    be written out by the optimizer's loop and read back twice, ``bench/ANALYSIS.md``).
    Since ``θ_t = s_{t−1}(θ_{t−1} + u_{t−1})``, ``g = σ̂(θ_t)/ref`` with ``ref = s_{t−1}
    σ̂(θ_{t−1})`` is the growth factor ``σ(θ + u)/σ(θ)`` of the last step, measured for free;
    the new step is predicted to grow the same: ``σ̂ = σ̂(θ_t)·g``, ``g`` clipped to
    ``[1, 1.5]``. Returns ``a, b, s, σ̂, ref`` for the next step.
    """
    a, b, s_theta = power_iterate(w, a, b, num_iters)
    known = ref > 0
    g = jnp.where(known, s_theta / jnp.where(known, ref, 1.0), 1.0)
    g = jnp.where(jnp.isfinite(g), jnp.clip(g, 1.0, _MAX_GROWTH), 1.0)
    sigma = s_theta * g
    big = sigma > c  # False for a NaN σ̂: that matrix passes through this step
    scale = jnp.where(big, c / jnp.where(big, sigma, 1.0), 1.0)
    return a, b, scale, sigma, jnp.where(jnp.isfinite(s_theta), scale * s_theta, ref)


def _newton_schulz_leaf(
    leaf: _poststep.Leaf,
    plan: _Plan,
    c: jax.Array,
    *,
    num_iters: int,
    ns_steps: int,
    metrics_step: jax.Array,
    **_,
) -> tuple[Any, dict]:
    """``"newton_schulz"``: the projection by matrix products; σ̂ (a metric only) by power
    iteration on ``θ + u``, skipped on the steps that record no metrics."""
    w = _to_mats(leaf.x, plan)
    y = _from_mats(clip_newton_schulz(w, c, ns_steps), plan)
    a0, b0 = _vectors(leaf, plan)
    s0 = leaf.state["sigma"].astype(w.dtype).reshape(plan.batch)

    a, b, sigma = jax.lax.cond(
        metrics_step, lambda: power_iterate(w, a0, b0, num_iters), lambda: (a0, b0, s0)
    )
    shapes = plan.batch_shape
    return y, {
        **leaf.state,
        "u": a.reshape(shapes + (plan.m,)),
        "v": b.reshape(shapes + (plan.n,)),
        "sigma": sigma.reshape(shapes),
    }


def _soft_cap_leaf(
    leaf: _poststep.Leaf, plan: _Plan, c: jax.Array, *, max_update_norm=None, **_
) -> tuple[Any, dict]:
    """``"soft_cap"``: the paper's two cubics, ``α`` coupled per matrix to an upper bound on
    σ_max(θ + u), ``k = min(‖θ + u‖_F, s + b)``: ``s`` the bound on σ_max(θ) that the last step
    left ("expected"; exact at ``init``), ``b`` = ``max_update_norm`` or ``‖u‖_F``. ``k`` is
    kept as "sigma", the bound it leaves, ``k·g(αk²)`` (``= c`` unless clamped), as
    "expected"."""
    w = _to_mats(leaf.x, plan)
    frob = scaled_norm(w.reshape(plan.batch, -1))  # overflow-safe
    step = scaled_norm(_to_mats(leaf.u, plan).reshape(plan.batch, -1))  # ‖u‖_F ≥ ‖u‖₂
    if max_update_norm is not None:
        # a claimed b below ‖u‖_F/√rank (≤ ‖u‖₂) is no bound: ‖u‖_F instead, so that a wrong
        # claim (e.g. an AdamW step) cannot drive α past the cap's monotone range
        b = jnp.asarray(max_update_norm, w.dtype)
        step = jnp.where(b >= step / math.sqrt(min(plan.m, plan.n)), b, step)
    before = leaf.state["expected"].astype(w.dtype).reshape(plan.batch)
    bound = jnp.minimum(frob, before + step)
    k = bound / c
    y, alpha = soft_cap(w, c, k)
    beta = jnp.where(alpha > 0, alpha * k * k, 0.0)  # α·k² ≤ 1/3 (0 where k is not finite)
    after = bound * soft_cap_gain(beta)
    shapes = plan.batch_shape
    return _from_mats(y, plan), {
        **leaf.state,
        "sigma": bound.reshape(shapes),
        # a bound beyond the float range is kept as the largest float: α = 0 there (no cap)
        "expected": jnp.minimum(after, jnp.finfo(w.dtype).max).reshape(shapes),
    }


_LEAF_FNS = {
    "exact": _exact_leaf,
    "power": _power_leaf,
    "newton_schulz": _newton_schulz_leaf,
    "soft_cap": _soft_cap_leaf,
}
# The per-leaf state fields each method keeps (the others are ``None``).
_ALL_FIELDS = ("u", "v", "sigma", "expected")
_FIELDS = {
    "exact": ("sigma",),
    "power": ("u", "v", "sigma", "expected"),
    "newton_schulz": ("u", "v", "sigma"),
    "soft_cap": ("sigma", "expected"),
}


# --------------------------------------------------------------------------------------------
# state
# --------------------------------------------------------------------------------------------


class SpectralClipState(NamedTuple):
    """State of :func:`spectral_clip`.

    Attributes:
      count: int32 step counter of shape ``()``; a ``max_norm`` schedule is evaluated on it.
      u: params-structured tree of left power-iteration vectors (unit norm), shape
        ``batch_shape + (m,)`` per matrix leaf (float32, or the params' dtype if wider);
        ``None`` for ``"exact"``. Leaves that are not matrices hold ``None``.
      v: the same for the right vectors, shape ``batch_shape + (n,)``.
      sigma: params-structured tree, shape ``batch_shape`` per matrix leaf: the spectral norm of
        ``θ + u`` *before* clipping at the last step — exact for ``"exact"``, the prediction
        ``σ̂(θ)·g`` used for the rescale for ``"power"``, the power-iteration estimate (a lower
        bound, updated on metrics steps) for ``"newton_schulz"``. At ``init``: the same quantity
        for the initial params.
      expected: ``"power"``: ``s·σ̂(θ)`` of the last step, the spectral norm the parameters
        would have now had that step not changed it; the next step's growth factor is measured
        against it. ``"soft_cap"``: the upper bound on σ_max(θ) that the last step left (exact
        σ_max at ``init``); ``sigma`` then holds the bound ``k`` on σ_max(θ + u) the cap was
        coupled to. ``None`` for the other methods.
    """

    count: jax.Array  # int32, shape ()
    u: Any
    v: Any
    sigma: Any
    expected: Any = None

    def optareg_metrics(self) -> dict[str, jax.Array]:
        """``"spectral_clip/sigma/<path>"`` per matrix (``/<i>`` suffix for stacked leaves) and
        ``"spectral_clip/sigma_max"`` (0 when nothing is clipped)."""
        out: dict[str, jax.Array] = {}
        smax = jnp.zeros([], jnp.float32)
        for path, s in jax.tree_util.tree_flatten_with_path(self.sigma)[0]:
            name = f"{_NAME}/sigma/{_paths.path_str(path)}"
            s32 = jnp.asarray(s, jnp.float32)
            if s.ndim == 0:
                out[name] = s32
            else:
                for idx in range(s.size):
                    out[f"{name}/{idx}"] = s32.reshape(-1)[idx]
            smax = jnp.maximum(smax, jnp.max(s32))
        out[f"{_NAME}/sigma_max"] = smax
        return out


class _NotParams:
    """What ``init`` puts in the params-shaped fields when probed by ``optax.tree.map_params``.

    The vectors have other shapes than the params, so they are reported as non-params state.
    """


@_numerics.jit_static_ints(1, 2, 3)
def _init_leaf(p: jax.Array, plan: _Plan, method: str, init_iters: int) -> dict[str, Any]:
    """The per-leaf state at ``init``: vectors from ``init_iters`` iterations on θ₀, σ of θ₀."""
    w = _to_mats(_numerics.upcast(p), plan)
    shapes = plan.batch_shape
    if method in ("exact", "soft_cap"):
        sigma = sigma_max(w).reshape(shapes)
        big = jnp.finfo(w.dtype).max
        expected = jnp.minimum(sigma, big) if method == "soft_cap" else None
        return {"u": None, "v": None, "sigma": sigma, "expected": expected}
    a, b = start_vectors(plan.batch, plan.m, plan.n, w.dtype)
    sigma = jnp.zeros((plan.batch,), w.dtype)
    if isinstance(init_iters, jax.core.Tracer):  # inject_hyperparams under a jitted init
        a, b, sigma = jax.lax.cond(
            init_iters > 0,
            lambda: power_iterate(w, a, b, init_iters),
            lambda: (a, b, sigma),
        )
    elif init_iters:
        a, b, sigma = power_iterate(w, a, b, init_iters)
    return {
        "u": a.reshape(shapes + (plan.m,)),
        "v": b.reshape(shapes + (plan.n,)),
        "sigma": sigma.reshape(shapes),
        "expected": sigma.reshape(shapes) if method == "power" else None,
    }


# --------------------------------------------------------------------------------------------
# the transform
# --------------------------------------------------------------------------------------------

# The plans of the params being initialized / updated, by path: set by the outer ``init`` /
# ``update`` (which see the whole, unmasked params) and read by the per-leaf operator inside
# the shared post-step path (which sees one leaf, possibly under ``optax.masked``).
_ACTIVE_PLANS: contextvars.ContextVar[dict[str, _Plan | None]] = contextvars.ContextVar(
    "optareg_spectral_plans"
)


def _check_int_args(**values: Any) -> dict[str, Any]:
    """The structural integer arguments as Python ints, or as traced ints under
    ``optax.inject_hyperparams`` (loop bounds and the ``metrics_every`` predicate accept them)."""
    low = {"num_iters": 1, "init_iters": 0, "ns_steps": 1, "metrics_every": 1}
    return {k: _validation.check_int_or_traced(k, v, low=low[k]) for k, v in values.items()}


def _check_max_update_norm(max_update_norm: Any, method: str) -> None:
    """``max_update_norm``: ``None`` or a number / schedule ``>= 0``, for ``"soft_cap"`` only."""
    if max_update_norm is None:
        return
    if method != "soft_cap":
        raise ValueError(
            "`max_update_norm` couples the strength of method='soft_cap' to the step size and is "
            f"used by that method only; got it with method={method!r}. Drop it, or use "
            "method='soft_cap'."
        )
    _validation.check_scalar("max_update_norm", max_update_norm, low=0.0)


@contextlib.contextmanager
def _plans_active(
    matrix_axes: Any, layout: str, params: Any, stack_axes: Any = None, masked: bool = False
):
    """Make the plans of the whole ``params`` (by path) visible to the per-leaf operator."""
    _, paths, plans = _plans(matrix_axes, layout, params, stack_axes, masked)
    token = _ACTIVE_PLANS.set(dict(zip(paths, plans, strict=True)))
    try:
        yield
    finally:
        _ACTIVE_PLANS.reset(token)


def _with_plans(
    inner: Any,
    matrix_axes: Any,
    layout: str,
    name: str = _NAME,
    *,
    stack_axes: Any = None,
    masked: bool = False,
) -> Any:
    """``inner`` (the shared post-step transform) with the plans of the whole params active.

    Also the path of :func:`optareg.spectral_hammer` / :func:`optareg.spectral_weight_decay`
    (``name`` is theirs: errors and the chain tag). ``stack_axes``: as in
    :func:`spectral_clip` (an int ``matrix_axes`` is its alias); ``masked``: a mask selects the
    leaves (the weight-matrix name rule then does not apply).
    """
    args = (matrix_axes, layout)
    kw = {"stack_axes": stack_axes, "masked": masked}

    def init_fn(params):
        if _validation.is_params_placeholder(params):
            return inner.init(params)
        with _plans_active(*args, params, **kw):
            return inner.init(params)

    def update_fn(updates, state, params=None, **extra_args):
        _validation.require_params(params, name)
        with _plans_active(*args, params, **kw):
            return inner.update(updates, state, params, **extra_args)

    tx = optax.GradientTransformationExtraArgs(init_fn, update_fn)
    return _chain.tag(tx, "post_step", name)


def spectral_clip(
    max_norm: _validation.ScalarOrSchedule = 1.0,
    *,
    method: str = "exact",
    num_iters: int = 1,
    init_iters: int = 100,
    ns_steps: int = 8,
    mask: _validation.MaskOrFn = None,
    matrix_axes: Any = None,
    layout: str = "auto",
    metrics_every: int = 1,
    stack_axes: Any = None,
    max_update_norm: _validation.ScalarOrSchedule | None = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Keep every weight matrix's spectral norm ``‖W‖₂ ≤ c`` after each step (post-step).

    Returns the update ``P(θ + u) − θ``, so ``optax.apply_updates`` lands within
    ``½ulp(θ) + ulp(P)`` of ``P(θ + u)`` entrywise (with ``"exact"``, moreover inside the ball:
    a matrix rounding would leave above ``c`` is landed at ``P(θ + u)·(1 − m)``, see
    :mod:`optareg._poststep`); put it **last** in the chain (:func:`optareg.chain`). Each
    selected leaf is a batch of
    matrices (``layout`` and ``matrix_axes``: see :mod:`optareg.spectral`; conv kernels are
    clipped by their reshape, which is *not* the convolution's operator norm).

    ========================  ======================================  =====================
    ``method``                guarantee (float32, σ by a float64 SVD)  cost per step
    ========================  ======================================  =====================
    ``"exact"`` (default)     projection; ``σ_max ≤ c(1 + 10⁻⁶)``       one ``eigh`` / matrix
    ``"newton_schulz"``       projection; ``σ_max ≤ c(1 + 5·10⁻⁴)``     ``4·ns_steps + 8`` matmuls
    ``"power"``               rescale; as good as its estimate         two mat-vecs on θ
    ``"soft_cap"``            ``σ_max ≤ c`` while ``k ≤ 1.31c``         4 products / matrix
    ========================  ======================================  =====================

    * ``"exact"`` (default): the Euclidean projection ``U min(Σ, c) Vᵀ``: singular values above
      ``c`` become ``c``, the others and all singular vectors are untouched; ``eigh`` of the
      Gram matrix on the short side (:func:`optareg.operators.spectral_clip_matrix`). From any
      start (``10⁶·c`` included) and in float32, bfloat16 and float64, the *landed* parameters
      satisfy ``σ_max ≤ c(1 + 10⁻⁶)`` after every step (tests; the landing is checked and a
      matrix that rounding would leave outside is pulled in, :mod:`optareg._poststep`). Why it
      is the default, with the measurements: see
      :mod:`optareg.spectral`.
    * ``"newton_schulz"``: the same projection with matrix products only,
      ``clip_c(W) = c·clip_1(W/c)``,
      ``clip_1(M) = ½[M + msign(M) + (msign(M) − M)·msign(MᵀM − I)]``, ``ns_steps`` Polar
      Express iterations (``ns_steps + 4`` for ``msign(MᵀM − I)``). Bound: ``σ_max ≤
      c(1 + 5·10⁻⁴)`` after one step from ``σ_max ≤ 16c`` on random Gaussian matrices of every
      aspect ratio (tests: 102 matrices, 64×64, 64×256, 256×64, two generators; worst
      measured ``1.4·10⁻⁴``, square ones at ``8c``), ``≤ c(1 + 10⁻³)`` at every step of 300
      Adam steps on an MLP (tests); singular values just
      above ``c`` are not fully clipped (see :func:`optareg.operators.spectral_clip_matrix`).
      The metric σ̂ comes from ``num_iters`` power iterations on ``θ + u`` per metrics step.
    * ``"power"``: spectral-normalization semantics (Miyato et al.): the whole matrix is
      rescaled, ``W ← (θ + u)·min(1, c/σ̂)``, so *every* singular value shrinks with the
      largest one and the spectrum does not keep its shape. σ̂ comes from ``num_iters`` power
      iterations per step on θ (persistent vectors in the state, ``init_iters`` iterations at
      ``init``) times the growth factor of the last step (see ``SpectralClipState.expected``);
      that costs two matrix-vector products on the matrix the optimizer reads anyway. The bound
      holds only as well as σ̂ estimates ``σ(θ + u)``; it is no certificate (σ̂ is a power
      iterate: it approaches σ_max from below). Measured (float64 SVD, tests): after one Adam
      step from a 64×64 N(0, 1) matrix with ``σ_max = 16c``, ``σ_max ≤ c(1 + 3·10⁻³)``; on a
      64-64-64-10 MLP under ``adam(3e-4)`` on digits, ``≤ c(1 + 3·10⁻³)`` at step 1, up to
      ``c(1 + 0.1)`` while the top singular values cross during the first ~100 steps, and
      ``≤ c(1 + 10⁻³)`` after 200 steps. Under Adam the repeated rescale collapses the
      spectrum: on that MLP after 300 steps the smallest σ₅/σ₁ over the layers is 0.25 and the
      training loss 2.05, against σ₅/σ₁ = 1.00 and loss 1.42 for ``"exact"`` (tests; the
      Equinox MLP of ``bench/spectral_mlp.py`` shows the same). Use it for GAN discriminators
      (spectral normalization) and where a ~1% excess is acceptable; use ``"exact"`` for a
      certified Lipschitz bound.

    * ``"soft_cap"``: the spectral soft cap of Newhouse et al. (2025, §3, "spectral soft cap"),
      made for Muon: no SVD, no ``eigh``, four matrix products. Two odd cubics are applied to
      the singular values, ``W ← c·p₂(p₁(W/c))`` with ``p₁(M) = M(I − αMᵀM)`` and
      ``p₂(M) = M(I + αMᵀM)`` (Gram on the short side), so each singular value becomes
      ``c·f_α(σ/c)``, ``f_α(σ) = p₂(p₁(σ)) = σ(1 − 3β² + 3β³ − β⁴)``, ``β = ασ²``. As in the
      paper, ``α`` is *coupled* to the step: with ``k`` an upper bound on ``σ_max(θ + u)``, ``α``
      solves ``f_α(k/c) = 1`` (the paper's quartic ``−k⁹α⁴ + 3k⁷α³ − 3k⁵α² + k − 1 = 0``, its
      smallest non-negative root, in units of ``c``), so every singular value in ``[0, k]`` lands
      in ``[0, c]`` (``f_α`` is increasing there). ``k = min(‖θ + u‖_F, s + b)`` per matrix:
      ``s`` is the bound on σ_max(θ) that the previous step left (``c`` once inside; the exact
      σ_max of θ₀ at ``init``), ``b`` bounds ``‖u‖₂``: ``max_update_norm`` (for
      ``optax.contrib.muon`` at learning rate ``η``: ``η·√max(1, fan_out/fan_in)``, the
      spectral norm of its step, which is the paper's coupling ``k = c + η``) or, by default,
      ``‖u‖_F`` (always ``≥ ‖u‖₂``: certified, but a stronger cap than needed). So a matrix
      inside the ball stays inside (as far as ``b`` holds); from further than ``1.31c`` out
      (``α`` clamped at ``αk² = 1/3``) one step multiplies the bound by ``g(1/3) ≈ 0.77``, and
      a few steps bring it in. Unlike the projection it also shrinks the singular values below
      ``c`` (by ``f_α(σ)/σ = g(ασ²) ≥ 1 − 3α²σ⁴``): a weight decay that acts hardest near the
      cap. The bound lives in the state: parameters changed outside the optimizer need a new
      ``init``.

    Why ``"power"`` is not certified: a cheap *upper* bound on σ_max (``‖W‖_F``,
    ``√(‖W‖₁‖W‖_∞)``) is loose by up to ``√rank``, and rescaling by it would shrink the matrix by
    that factor; residual-based bounds locate *some* singular value, not the largest. A
    certificate needs ``O(m·n·min(m, n))`` work, which is what ``"exact"`` spends.

    Args:
      max_norm: the bound ``c > 0`` (a constant or a schedule of the step count).
      method: ``"exact"`` (default), ``"power"``, ``"newton_schulz"`` or ``"soft_cap"``.
      num_iters: power iterations per step (``>= 1``; ``"power"`` and ``"newton_schulz"``).
      init_iters: power iterations at ``init`` (``>= 0``; run in a ``lax.fori_loop``).
      ns_steps: Newton–Schulz steps (``>= 1``; ``"newton_schulz"``).
      mask: optax mask (pytree/prefix of bools, a callable returning one, or a callable pytree
        such as an Equinox module of bools); masked-out leaves pass through. Leaves that are
        not matrices always pass through.
      matrix_axes: how leaves are viewed as matrices, overriding ``layout`` where given:
        ``None`` (use the layout), an ``int`` (alias of ``stack_axes``: the number of leading
        layer axes), an ``optax.contrib.MuonDimensionNumbers``, a pytree (or prefix) of these,
        or a callable ``params -> pytree``.
      layout: ``"auto"`` (default), ``"flax"`` or ``"torch"``: which axis of a leaf is its
        output axis (see :mod:`optareg.spectral`).
      metrics_every: record the σ metrics on the steps with ``count % metrics_every == 0``
        (``>= 1``). σ is a by-product of ``"exact"`` and ``"power"`` and is recorded every
        step; ``"newton_schulz"`` skips its metric-only power iteration in between. The
        updates are identical for every value.
      stack_axes: the number of leading layer axes of a leaf (each layer is its own matrix):
        ``None`` (none), an int ``≥ 0``, a pytree prefix of the params with int / ``None``
        leaves, or a callable ``(path, leaf) -> int | None``; not together with an int
        ``matrix_axes`` (its alias).
      max_update_norm: ``"soft_cap"`` only: a bound ``b >= 0`` on the spectral norm of the
        incoming update (a constant or a schedule, e.g. Muon's learning rate times its shape
        factor); ``None`` (default) uses ``‖u‖_F`` of each matrix.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose state is :class:`SpectralClipState`
      (inside ``optax.MaskedState`` when a mask is given). ``optareg.metrics`` reads
      ``"spectral_clip/sigma/<path>"`` (per matrix, ``/<i>`` for stacked leaves) and
      ``"spectral_clip/sigma_max"``.

    Raises:
      TypeError: ``matrix_axes`` is an int inside ``optax.inject_hyperparams`` (it decides
        shapes): pass ``static_args=("matrix_axes",)``. The integer arguments ``num_iters``,
        ``init_iters``, ``ns_steps`` and ``metrics_every`` need no ``static_args``: traced, they
        are loop bounds and the metrics predicate.

    Example:
      >>> import jax.numpy as jnp, optax, optareg
      >>> params = {"w": jnp.diag(jnp.array([3.0, 0.5])), "b": jnp.ones(2)}
      >>> tx = optareg.chain(optax.sgd(0.1), optareg.spectral_clip(1.0))
      >>> state = tx.init(params)
      >>> zeros = {"w": jnp.zeros((2, 2)), "b": jnp.zeros(2)}
      >>> updates, state = tx.update(zeros, state, params)
      >>> new = optax.apply_updates(params, updates)
      >>> [round(float(x), 4) for x in jnp.diag(new["w"])], new["b"].tolist()
      ([1.0, 0.5], [1.0, 1.0])

    References:
      Miyato et al., "Spectral Normalization for Generative Adversarial Networks", ICLR 2018.
      Gouk et al., "Regularisation of Neural Networks by Enforcing Lipschitz Continuity", 2021.
      Sedghi, Gupta & Long, "The Singular Values of Convolutional Layers", ICLR 2019.
      Amsel et al., "The Polar Express", 2025 (arXiv:2505.16932).
      Newhouse, Hess, Cesista, Zahorodnii, Bernstein & Isola, "Training Transformers with
      Enforced Lipschitz Constants", 2025 (arXiv:2507.13338): the spectral soft cap.
    """
    ints = _check_int_args(
        num_iters=num_iters, init_iters=init_iters, ns_steps=ns_steps, metrics_every=metrics_every
    )
    _validation.check_scalar("max_norm", max_norm, low=0.0, low_inclusive=False)
    _validation.check_choice("method", method, _METHODS)
    _check_max_update_norm(max_update_norm, method)
    _masking.check_mask("mask", mask)
    _check_axes_args(matrix_axes, stack_axes)
    _paths.check_layout(layout)
    leaf_fn, every = _LEAF_FNS[method], ints["metrics_every"]

    def init_state(params):
        if _validation.is_params_placeholder(params):
            marker = _NotParams()
            return {f: marker if f in _FIELDS[method] else None for f in _ALL_FIELDS}
        return _init_fields(params, method, ints["init_iters"])

    def operator(leaf, max_norm, metrics_step=True, max_update_norm=None):
        plan, dt = _ACTIVE_PLANS.get()[leaf.path], leaf.x.dtype
        kw = dict(ints, metrics_step=metrics_step)
        if max_update_norm is not None:
            kw["max_update_norm"] = _scalar(max_update_norm, dt)
        y, new = leaf_fn(leaf, plan, _scalar(max_norm, dt), **kw)
        return y, {k: None if v is None else v.astype(leaf.state[k].dtype) for k, v in new.items()}

    hyperparams = {"max_norm": max_norm}
    if max_update_norm is not None:
        hyperparams["max_update_norm"] = max_update_norm
    if method == "newton_schulz":
        # Always a traced predicate behind a barrier, also for every == 1: one compiled program
        # whatever `metrics_every` is, so the updates are bit-identical across its values.
        hyperparams["metrics_step"] = lambda count: jax.lax.optimization_barrier(count % every == 0)
    inner = _poststep.transformation(
        operator,
        name=_NAME,
        hyperparams=hyperparams,
        mask=mask,
        select=lambda p, path: _ACTIVE_PLANS.get().get(path) is not None,
        init_state=init_state,
        state_cls=SpectralClipState,
        inequality=_exact_inside if method == "exact" else None,
    )
    return _with_plans(inner, matrix_axes, layout, stack_axes=stack_axes, masked=mask is not None)


def _check_axes_args(matrix_axes: Any, stack_axes: Any) -> None:
    """``matrix_axes`` and ``stack_axes`` checked; an int ``matrix_axes`` is an alias of
    ``stack_axes``, so the two are not given together."""
    _check_matrix_axes(matrix_axes)
    _paths.check_stack_axes(stack_axes)
    if _is_int(matrix_axes) and stack_axes is not None:
        raise ValueError(
            f"`matrix_axes`={matrix_axes} is an alias of `stack_axes`={matrix_axes}; give one "
            "of them, not both."
        )


def _init_fields(params: Any, method: str, init_iters: int) -> dict[str, Any]:
    """The per-leaf state fields at ``init`` (params-structured trees, ``None`` off matrices)."""
    plans = _ACTIVE_PLANS.get()
    treedef = jax.tree.structure(params, is_leaf=_is_none)
    flat, paths = treedef.flatten_up_to(params), _paths.leaf_paths(params, treedef)
    outs = [
        None
        if p is None or plans.get(path) is None
        else _init_leaf(p, plans[path], method, init_iters)
        for p, path in zip(flat, paths, strict=True)
    ]
    return {
        f: treedef.unflatten([None if o is None else o[f] for o in outs])
        if f in _FIELDS[method]
        else None
        for f in _ALL_FIELDS
    }


def spectral_norms(
    params: Any, matrix_axes: Any = None, *, layout: str = "auto", stack_axes: Any = None
) -> Any:
    """Exact spectral norm of every matrix in ``params`` (a diagnostic, not for the hot path).

    Leaves are viewed as matrices exactly as in :func:`spectral_clip` (same ``matrix_axes`` and
    ``layout``). Computed by a (float32 or wider) SVD.

    Args:
      params: a pytree of arrays.
      matrix_axes: as in :func:`spectral_clip`.
      layout: as in :func:`spectral_clip`: ``"auto"``, ``"flax"`` or ``"torch"``.
      stack_axes: as in :func:`spectral_clip` (a stack of ``L`` layers gives ``L`` norms).

    Returns:
      A tree shaped like ``params``: per matrix leaf an array of shape ``batch_shape`` (``()``
      for a plain matrix, ``(L,)`` for a stack of ``L``) holding σ_max of each matrix; ``None``
      for leaves that are not matrices.

    Example:
      >>> import jax.numpy as jnp, optareg
      >>> norms = optareg.spectral_norms({"w": jnp.diag(jnp.array([3.0, 0.5])), "b": jnp.ones(2)})
      >>> round(float(norms["w"]), 4), norms["b"]
      (3.0, None)
      >>> stack = {"kernel": jnp.stack([2 * jnp.eye(2), 0.5 * jnp.eye(2)])}  # 2 layers
      >>> optareg.spectral_norms(stack, stack_axes=1)["kernel"]
      Array([2. , 0.5], dtype=float32)
    """
    _check_axes_args(matrix_axes, stack_axes)
    _paths.check_layout(layout)
    treedef, _, plans = _plans(matrix_axes, layout, params, stack_axes)
    out = []
    for p, plan in zip(treedef.flatten_up_to(params), plans, strict=True):
        if plan is None:
            out.append(None)
            continue

        def sigma(x, plan=plan):
            w = _to_mats(_numerics.upcast(x), plan)
            return jnp.linalg.svd(w, compute_uv=False)[..., 0].reshape(plan.batch_shape)

        # explicit-sharding meshes: the SVD needs each matrix whole (optareg.sharding)
        out.append(sharding.run_gathered(sigma, jnp.asarray(p)))
    return treedef.unflatten(out)
