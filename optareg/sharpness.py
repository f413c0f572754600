"""Sharpness monitor: the top Hessian eigenvalue along training, by warm-started LOBPCG on HVPs.

Two pieces, one estimate:

* :func:`sharpness_monitor`, a pass-through extra-args transform (updates unchanged, bit for bit)
  that measures ``λ_max`` of the Hessian of the loss behind ``grad_fn`` every ``metrics_every``
  steps, warm-started from the previous estimate's eigenvector, and records it with the
  edge-of-stability ratio ``λ_max·η/2``;
* :func:`hessian_top_eigenvalue`, the same estimate from a random start, as a plain function.

The eigensolver is LOBPCG with block size 1 (see :func:`sharpness_monitor` for exactly what is
computed); it maximizes the Rayleigh quotient, so it returns the largest *algebraic* eigenvalue,
never a negative eigenvalue of larger magnitude.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optareg import _chain, _counters, _extra_args, _masking, _numerics, _validation, sharding

__all__ = ["SharpnessMonitorState", "hessian_top_eigenvalue", "sharpness_monitor"]

_NAME = "sharpness_monitor"

# A direction whose norm drops below this fraction of its norm by orthogonalization against the
# current basis is numerically inside it: it is dropped from the Rayleigh–Ritz step (otherwise
# normalizing it would amplify rounding into a non-orthonormal basis, whose Ritz values are not
# bounded by λ_max).
_DROP = 1e-2
# The most rounding (in units of one HVP's) that the implicitly updated product A·p may carry.
_AMP_MAX = 10.0


class SharpnessMonitorState(NamedTuple):
    """State of :func:`sharpness_monitor`.

    Attributes:
      count: int32 step counter of shape ``()``; measurements happen when
        ``count % metrics_every == 0``, a ``learning_rate`` schedule is evaluated on it.
      vector: the current estimate of the top eigenvector (params-shaped, each leaf in its
        compute dtype: float32 for bf16/float32 params, float64 for float64 ones), of unit global
        norm over the masked-in leaves and zero on the others; the warm start of the next
        measurement. A seeded Gaussian at ``init``.
      top_eigenvalue: float32 ``λ_max`` estimate of the last measurement (0 before the first).
      edge_of_stability: float32 ``λ_max·η/2`` of the last measurement when ``learning_rate``
        was given, else ``None`` (fixed at construction).
    """

    count: jax.Array  # int32, shape ()
    vector: Any
    top_eigenvalue: jax.Array  # float32, shape ()
    edge_of_stability: jax.Array | None  # float32, shape (), or None

    def optareg_metrics(self) -> dict[str, jax.Array]:
        out = {f"{_NAME}/top_eigenvalue": self.top_eigenvalue}
        if self.edge_of_stability is not None:
            out[f"{_NAME}/edge_of_stability"] = self.edge_of_stability
        return out


# --------------------------------------------------------------------------------------------
# LOBPCG on lists of leaves (the masked-in leaves of the params): every vector operation is
# elementwise per leaf and every dot product one global sum, so a sharded leaf stays sharded
# --------------------------------------------------------------------------------------------

_dot = _extra_args.tree_dot  # Σ x·y over all leaves, in (at least) float32


def _lin(coeffs: Sequence[jax.Array], vecs: Sequence[Sequence[jax.Array]]) -> list[jax.Array]:
    """``Σ_k c_k·v_k`` leaf by leaf (one fused elementwise pass), in the leaves' dtypes."""
    return [
        sum(c * v[j] for c, v in zip(coeffs, vecs, strict=True)).astype(leaf.dtype)
        for j, leaf in enumerate(vecs[0])
    ]


def _normalize(v: Sequence[jax.Array]) -> tuple[list[jax.Array], jax.Array]:
    """``v/‖v‖`` and ``‖v‖``; zero for a vector whose norm is 0 or not finite.

    No rescaling: the vectors here are unit vectors, their images under ``H`` (of norm at most
    ``|λ|_max``) and differences of those, so ``‖v‖²`` overflows only for curvatures beyond
    ``1e19``; there the direction is dropped (reported ``ρ`` stays finite), never a NaN.
    """
    n = jnp.sqrt(_dot(v, v))
    ok = jnp.isfinite(n) & (n > 0)
    return _lin([jnp.where(ok, 1.0 / jnp.where(ok, n, 1.0), 0.0)], [v]), jnp.where(ok, n, 0.0)


def _orthonormalize(v, av, basis, a_basis):
    """``v`` minus its projections on the orthonormal ``basis`` (twice: CGS2), normalized.

    ``av`` (``A·v``, or ``None``) gets the same linear combination with ``a_basis``. Returns
    ``(v̂, A·v̂ or None, ok, coefficients, ‖v‖ before, ‖v‖ after)``; ``ok`` is False (and
    ``v̂ = 0``) when the direction is numerically inside the span of ``basis``.
    """
    n0 = jnp.sqrt(_dot(v, v))
    coeffs = [jnp.zeros([], n0.dtype) for _ in basis]
    for _ in range(2):
        for k, b in enumerate(basis):
            c = _dot(b, v)
            v = _lin([1.0, -c], [v, b])
            coeffs[k] = coeffs[k] + c
    v, n1 = _normalize(v)
    ok = (n1 > _DROP * n0) & (n1 > 0)
    v = [jnp.where(ok, x, jnp.zeros_like(x)) for x in v]
    if av is not None:
        inv = jnp.where(ok, 1.0 / jnp.where(ok, n1, 1.0), 0.0)
        av = _lin([inv] + [-inv * c for c in coeffs], [av, *a_basis])
    return v, av, ok, coeffs, n0, n1


def _ritz_coefficients(gram: jax.Array, valid: jax.Array) -> jax.Array:
    """The unit eigenvector of the largest eigenvalue of the valid block of a 3×3 ``gram``.

    Invalid rows/columns are decoupled and put below every eigenvalue of the valid block
    (Gershgorin: ``-(Σ|G| + 1)``), so they are never chosen, and get coefficient 0; the sign
    makes the coefficient of the first valid direction non-negative.
    """
    both = valid[:, None] & valid[None, :]
    gram = jnp.where(both, (gram + gram.T) / 2, 0.0)
    low = -(jnp.sum(jnp.abs(gram)) + 1.0)
    gram = gram + jnp.diag(jnp.where(valid, 0.0, low))
    _, vecs = jnp.linalg.eigh(gram)
    c = jnp.where(valid, vecs[:, -1], 0.0)
    lead = jnp.where(valid[0], c[0], c[1])
    return jnp.where(lead < 0, -c, c)


def _lobpcg_step(hvp: Callable, carry: tuple) -> tuple:
    """One LOBPCG iteration (block size 1): one HVP, a 3×3 Rayleigh–Ritz on ``{x, w, p}``.

    ``A·x`` and ``A·p`` are updated by linearity; ``amp_x``, ``amp_p`` bound their rounding
    error in units of one HVP's (relative to ``‖x‖``, ``‖p‖``). Orthonormalizing ``p`` against
    nearly parallel directions divides that error by a small norm; ``p`` is dropped (a restart)
    when the bound would exceed ``_AMP_MAX``, so the error cannot grow geometrically (without
    this, a rank-one Hessian drifts to Ritz values far above ``λ_max`` after convergence).
    """
    x, ax, w, p, ap, amp_x, amp_p, has_x, has_p = carry
    w, _, w_ok, _, _, _ = _orthonormalize(w, None, [x], None)
    aw = hvp(w)
    p, ap, p_ok, (cx, cw), n0, n1 = _orthonormalize(p, ap, [x, w], [ax, aw])
    amp_hat = (amp_p * n0 + jnp.abs(cx) * amp_x + jnp.abs(cw)) * _numerics.safe_inv(n1)
    p_ok = p_ok & has_p & (amp_hat <= _AMP_MAX)
    amp_hat = jnp.where(p_ok, amp_hat, 0.0)
    basis, a_basis = (x, w, p), (ax, aw, ap)
    gram = jnp.stack([jnp.stack([_dot(b, ab) for ab in a_basis]) for b in basis])
    c = _ritz_coefficients(gram, jnp.stack([has_x, w_ok, p_ok]))
    x_new, n = _normalize(_lin(c, basis))
    inv = _numerics.safe_inv(n)
    ax_new = _lin(inv * c, a_basis)
    amp_x = (jnp.abs(c[0]) * amp_x + jnp.abs(c[1]) + jnp.abs(c[2]) * amp_hat) * inv
    p_new, ap_new = _lin(c[1:], basis[1:]), _lin(c[1:], a_basis[1:])
    amp_p = (jnp.abs(c[1]) + jnp.abs(c[2]) * amp_hat) * _numerics.safe_inv(jnp.hypot(c[1], c[2]))
    w_new = _lin([1.0, -_dot(x_new, ax_new)], [ax_new, x_new])  # the residual: next direction
    return (x_new, ax_new, w_new, p_new, ap_new, amp_x, amp_p, jnp.array(True), has_x)


def _top_eigenpair(hvp: Callable, x0: list[jax.Array], num_iters: Any):
    """``num_iters`` LOBPCG iterations from ``x0``: the Ritz vector and ``ρ = xᵀHx``.

    Iteration 0 applies ``H`` to ``x0`` itself (``ρ`` is then its Rayleigh quotient); each
    later one to the current residual. Exactly ``num_iters`` HVPs, one compiled loop body.
    """
    zeros = [jnp.zeros_like(v) for v in x0]
    false = jnp.array(False)
    amp = jnp.zeros([], _dot(x0, x0).dtype)
    carry = (zeros, zeros, list(x0), zeros, zeros, amp, amp, false, false)
    carry = jax.lax.fori_loop(0, num_iters, lambda _, c: _lobpcg_step(hvp, c), carry)
    x, ax = carry[0], carry[1]
    return x, _dot(x, ax)


# --------------------------------------------------------------------------------------------
# shared by the transform and the function
# --------------------------------------------------------------------------------------------


def _check_num_iters(num_iters: Any) -> None:
    """``num_iters``: an int >= 1 (a traced value, from ``inject_hyperparams``, is accepted)."""
    if not isinstance(num_iters, jax.core.Tracer):
        _validation.check_int("num_iters", num_iters, low=1)


def _check_seed(seed: Any) -> None:
    if not isinstance(seed, jax.core.Tracer):
        _validation.check_int("seed", seed, low=None)


def _selection(params: Any, mask: Any) -> tuple[list[jax.Array], Any, list[bool]]:
    """Leaves, treedef, and which leaves are in the block (masked in and floating point)."""
    leaves, treedef = jax.tree.flatten(params)
    flags = _masking.leaf_flags(mask, params, treedef)
    sel = [
        f and jnp.issubdtype(jnp.result_type(p), jnp.inexact)
        for f, p in zip(flags, leaves, strict=True)
    ]
    return leaves, treedef, sel


def _random_start(seed: Any, leaves: list[Any], sel: list[bool]) -> list[jax.Array]:
    """A seeded Gaussian of unit global norm on the selected leaves, zero elsewhere."""
    key = jax.random.PRNGKey(seed)
    out = []
    for i, (p, s) in enumerate(zip(leaves, sel, strict=True)):
        dtype = _numerics.compute_dtype(p)
        if s:
            out.append(jax.random.normal(jax.random.fold_in(key, i), jnp.shape(p), dtype))
        else:
            out.append(jnp.zeros(jnp.shape(p), dtype))
    inv = _numerics.safe_inv(_extra_args.tree_norm(out))
    return [(inv * v).astype(v.dtype) for v in out]


def _estimate(grad_fn, params, leaves, sel, x_all, num_iters, name=_NAME):
    """``(new vector leaves, ρ)`` from the warm start ``x_all`` (all leaves)."""
    idx = [i for i, s in enumerate(sel) if s]
    if not idx:  # an empty block: nothing to multiply, the estimate is 0
        return list(x_all), jnp.zeros([], jnp.float32)

    def hvp(v):
        out = _extra_args.hessian_vector_product(grad_fn, params, v, sel, name)
        # (explicit-sharding meshes: the loop carry keeps the warm start's sharding)
        return [sharding.match_sharding(o.astype(x.dtype), x) for o, x in zip(out, x0, strict=True)]

    x0 = [x_all[i] for i in idx]
    x, rho = _top_eigenpair(hvp, x0, num_iters)
    ok = jnp.isfinite(rho)  # a non-finite Hessian: report it, keep the old warm start
    out = list(x_all)
    for j, i in enumerate(idx):
        out[i] = jnp.where(ok, x[j], x0[j])
    return out, rho.astype(jnp.float32)


# --------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------


def sharpness_monitor(
    *,
    num_iters: int = 20,
    metrics_every: int = 1,
    seed: int = 0,
    mask: _validation.MaskOrFn = None,
    learning_rate: _validation.ScalarOrSchedule | None = None,
) -> optax.GradientTransformationExtraArgs:
    r"""Pass-through transform that tracks the top Hessian eigenvalue ``λ_max`` along training.

    The updates come out unchanged, bit for bit. On the steps whose counter is a multiple of
    ``metrics_every`` (step 0 included) it estimates the largest eigenvalue of the Hessian
    ``H = ∇²L(θ)`` of the loss behind ``grad_fn`` at the current parameters, from
    ``num_iters`` Hessian-vector products by forward-over-reverse differentiation,

    .. math::

        H v = \frac{\partial}{\partial t}\,\mathrm{grad\_fn}(\theta + t v)\Big|_{t=0}
        \quad(\texttt{jax.jvp}),

    and records ``λ_max`` and, when ``learning_rate = η`` is given, ``λ_max·η/2``. Gradient
    descent on a quadratic of curvature ``λ`` is stable iff ``η < 2/λ``: an
    ``edge_of_stability`` near 1 means full-batch gradient descent runs at the edge of stability
    (Cohen et al., 2021), above 1 that the sharpest direction is locally unstable. On the other
    steps the measurement is skipped (``lax.cond``: no HVP runs) and both values are held.

    **What is computed.** LOBPCG with block size 1 (Knyazev, 2001) on the Rayleigh quotient
    ``ρ(x) = xᵀHx/xᵀx``, started from the unit vector ``x`` stored in the state (a seeded
    Gaussian at ``init``; afterwards the previous measurement's Ritz vector: a warm start, so a
    few iterations per step track ``λ_max`` as ``θ`` moves). Iteration ``j`` applies ``H`` to one
    new direction ``w_j`` (``w_0 = x``; then the residual ``Hx − ρ(x)x``), orthonormalizes
    ``{x, w_j, p_j}`` (``p_j`` the previous change of ``x``; a direction numerically inside the
    span of the others is dropped) and replaces ``x`` by the Ritz vector of the largest
    eigenvalue of the 3×3 matrix ``BᵀHB`` (an exact Rayleigh–Ritz step; ``HB`` is updated by
    linearity, so each iteration costs one HVP). The reported ``λ_max`` is ``ρ(x)`` at the final
    ``x``: the largest Ritz value, a lower bound of ``λ_max`` (up to rounding) that increases
    to it. Because the Rayleigh quotient is *maximized*, a dominant negative eigenvalue is never
    reported (unlike power iteration, which finds the largest ``|λ|``): for eigenvalues
    ``{−10, 3, 1}`` the estimate is 3. Convergence is like Lanczos' (its rate depends on the gap
    ``λ₁ − λ₂`` relative to the spread of the spectrum), much faster than power iteration.

    * ``mask``: only masked-in leaves are in the block; the others are held fixed, so the
      estimate is ``λ_max`` of the Hessian block ``H_SS`` of the masked-in leaves (``x`` is zero
      on masked-out leaves, and the JVP is taken with respect to the masked-in leaves only).
      Integer leaves are always out. An empty block gives 0.
    * Cost per measurement: ``num_iters`` HVPs (each about two to three gradient evaluations)
      and about twenty elementwise passes over the masked-in leaves per iteration (each leaf
      keeps its layout, so sharded parameters stay sharded); memory during a measurement:
      about eight copies of the masked-in leaves (``x``, ``Hx``, the residual and its
      product, ``p``, ``Hp``, temporaries), one params-shaped vector in the state.
      ``metrics_every = k`` divides the cost by ``k``.
    * Numerics: each vector leaf in its compute dtype (float32 for bf16 and float32 params,
      float64 for float64 ones; bf16 params get their HVP tangents cast to bf16), dot products
      accumulated in float32 or wider; ``top_eigenvalue`` is float32. A zero Hessian gives 0, never
      NaN; a non-finite HVP reports a non-finite ``λ_max`` for that step but keeps the previous
      warm start.

    ``grad_fn(params) -> grads`` must close over the same batch (and RNG) as the incoming
    gradient; the estimate is of that batch's loss. It composes with :func:`sam_perturb` in one
    chain (both read ``grad_fn``): ``optareg.chain(sharpness_monitor(), sam_perturb(ρ),
    optax.sgd(η))``; put it first, where ``params`` are the current ones. Do not wrap it in
    ``optax.masked`` or ``optax.MultiSteps`` (a ``ValueError`` at trace time).

    Args:
      num_iters: HVPs (LOBPCG iterations) per measurement, an int ``>= 1`` (1 reports the
        Rayleigh quotient of the stored vector without refining it).
      metrics_every: measure on the steps with ``count % metrics_every == 0``; an int ``>= 1``
        (``optax.inject_hyperparams`` may inject it: a traced value is used as it is).
      seed: int seed of the Gaussian start vector.
      mask: optax-style mask (pytree or prefix of bools, or a callable of the params; ``True`` =
        in the Hessian block).
      learning_rate: ``η > 0`` (constant or schedule of this transform's step count), or
        ``None`` to record no ``edge_of_stability``.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose ``update`` requires ``params`` and the
      keyword ``grad_fn``; its state is :class:`SharpnessMonitorState` (metrics
      ``"sharpness_monitor/top_eigenvalue"`` and, with ``learning_rate``,
      ``"sharpness_monitor/edge_of_stability"``, read by :func:`optareg.metrics`).

    Raises:
      ValueError: an argument out of range; ``update`` without ``grad_fn`` or ``params``.
      TypeError: an argument of the wrong type.

    Example:
      >>> import jax, jax.numpy as jnp, optax, optareg
      >>> curv = jnp.array([-10.0, 3.0, 1.0])  # Hessian eigenvalues of ½·Σ cᵢθᵢ²
      >>> loss = lambda p: 0.5 * jnp.sum(curv * p ** 2)
      >>> tx = optareg.chain(optareg.sharpness_monitor(learning_rate=0.5), optax.sgd(0.5))
      >>> params = jnp.ones(3)
      >>> state = tx.init(params)
      >>> g = jax.grad(loss)(params)
      >>> updates, state = tx.update(g, state, params, grad_fn=jax.grad(loss))
      >>> m = optareg.metrics(state)
      >>> round(float(m["sharpness_monitor/top_eigenvalue"]), 4)  # the top is 3, not -10
      3.0
      >>> round(float(m["sharpness_monitor/edge_of_stability"]), 4)  # 3 · 0.5 / 2
      0.75

    References:
      Cohen, Kaur, Li, Kolter & Talwalkar, "Gradient Descent on Neural Networks Typically
      Occurs at the Edge of Stability", ICLR 2021.
      Yao, Gholami, Keutzer & Mahoney, "PyHessian: Neural Networks Through the Lens of the
      Hessian", IEEE BigData 2020.
      Knyazev, "Toward the Optimal Preconditioned Eigensolver: Locally Optimal Block
      Preconditioned Conjugate Gradient Method", SIAM J. Sci. Comput. 23(2), 2001.
    """
    _check_num_iters(num_iters)
    every = _validation.check_metrics_every(metrics_every)
    _check_seed(seed)
    _masking.check_mask("mask", mask)
    if learning_rate is not None:
        _validation.check_scalar("learning_rate", learning_rate, low=0.0, low_inclusive=False)

    def init_fn(params):
        zero = jnp.zeros([], jnp.float32)
        if _validation.is_params_placeholder(params):  # optax.tree.map_params probing the state
            vector = params
        else:
            _masking.check_mask_matches("mask", mask, params)
            leaves, treedef, sel = _selection(params, mask)
            vector = treedef.unflatten(_random_start(seed, leaves, sel))
        eos = None if learning_rate is None else zero
        return SharpnessMonitorState(_counters.init_count(), vector, zero, eos)

    def update_fn(updates, state, params=None, *, grad_fn=None, **extra):
        del extra
        _extra_args.check_not_nested(_NAME)
        grad_fn = _extra_args.require_grad_fn(grad_fn, _NAME)
        _validation.require_params(params, _NAME)
        leaves, treedef, sel = _selection(params, mask)

        def measure():
            x_all = treedef.flatten_up_to(state.vector)
            x, top = _estimate(grad_fn, params, leaves, sel, x_all, num_iters)
            eos = None
            if learning_rate is not None:
                lr = jnp.asarray(_counters.evaluate(learning_rate, state.count))
                eos = (top * lr.astype(jnp.float32) / 2).astype(jnp.float32)
            return treedef.unflatten(x), top, eos

        previous = (state.vector, state.top_eigenvalue, state.edge_of_stability)
        vector, top, eos = _counters.on_metrics_step(every, state.count, measure, previous)
        new_state = SharpnessMonitorState(_counters.increment(state.count), vector, top, eos)
        return updates, new_state

    tx = optax.GradientTransformationExtraArgs(init_fn, update_fn)
    return _chain.tag(tx, "extra_args", _NAME)


def hessian_top_eigenvalue(
    grad_fn: Callable, params: Any, *, num_iters: int = 100, seed: int = 0
) -> jax.Array:
    r"""The largest eigenvalue of the Hessian of the loss behind ``grad_fn`` at ``params``.

    The estimate of :func:`sharpness_monitor` as a plain function, for use outside an optimizer:
    ``num_iters`` iterations of LOBPCG (block size 1) on Hessian-vector products
    ``Hv = jax.jvp(grad_fn, (θ,), (v,))[1]``, from a Gaussian start vector drawn with ``seed``
    (the one the monitor's ``init`` draws with the same seed, so the two agree on the first
    measurement). It returns the largest Ritz value ``ρ(x) = xᵀHx``: the largest *algebraic*
    eigenvalue (a dominant negative eigenvalue is not reported), approached from below. Every
    floating-point leaf of ``params`` is in the block; a zero Hessian gives 0.

    Args:
      grad_fn: ``params -> grads`` (e.g. ``jax.grad(loss)`` closed over a batch).
      params: the point ``θ`` (any pytree of arrays).
      num_iters: HVPs (LOBPCG iterations), an int ``>= 1``.
      seed: int seed of the start vector.

    Returns:
      A float32 scalar array, the estimate of ``λ_max``.

    Example:
      >>> import jax, jax.numpy as jnp, optareg
      >>> A = jnp.array([[2.0, 1.0], [1.0, 2.0]])  # eigenvalues 1 and 3
      >>> grad_fn = jax.grad(lambda p: 0.5 * p["w"] @ A @ p["w"])
      >>> lam = optareg.hessian_top_eigenvalue(grad_fn, {"w": jnp.zeros(2)}, num_iters=5)
      >>> round(float(lam), 4), lam.dtype
      (3.0, dtype('float32'))

    References:
      Yao, Gholami, Keutzer & Mahoney, "PyHessian: Neural Networks Through the Lens of the
      Hessian", IEEE BigData 2020.
      Knyazev, "Toward the Optimal Preconditioned Eigensolver: Locally Optimal Block
      Preconditioned Conjugate Gradient Method", SIAM J. Sci. Comput. 23(2), 2001.
    """
    name = "hessian_top_eigenvalue"
    grad_fn = _extra_args.require_grad_fn(grad_fn, name)
    _check_num_iters(num_iters)
    _check_seed(seed)
    leaves, _, sel = _selection(params, None)
    x0 = _random_start(seed, leaves, sel)
    return _estimate(grad_fn, params, leaves, sel, x0, num_iters, name)[1]
