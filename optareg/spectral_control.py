r"""Rank-one spectral control for the Muon era: :func:`spectral_hammer` and
:func:`spectral_weight_decay` (post-step).

Both act on the *top singular triple* ``(σ₁, u₁, v₁)`` of every weight matrix only, found by
warm-started power iteration (the vectors are optimizer state, carried from step to step, so
one or two matrix-vector products per step track them), and subtract a multiple of ``u₁v₁ᵀ``:

.. math::

    W \leftarrow W - s\,u_1 v_1^\top,\qquad
    s = (\sigma_1 - c)_+ \ \text{(hammer)},\qquad s = \lambda_t\,\sigma_1 \ \text{(decay)}.

With exact vectors this changes ``σ₁`` alone (to ``min(σ₁, c)``, or to ``(1 − λ_t)σ₁``) and
keeps every other singular value and vector. Both are from Newhouse et al. (2025, §3,
"spectral hammer" and "spectral weight decay"), who designed them for Muon, whose update has a
fixed spectral norm: a matrix inside the ball is pushed out along few directions per step, and
a rank-one correction per step is what it takes to push it back.

They share :func:`optareg.spectral_clip`'s matrix views (``layout``, ``stack_axes``: a scanned
stack of layers is handled one matrix per layer, see :mod:`optareg.spectral`), its mask
semantics and the shared post-step path (:mod:`optareg._poststep`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optareg import _masking, _numerics, _paths, _poststep, _validation, decay, spectral
from optareg._spectral_ops import power_iterate, start_vectors

__all__ = [
    "SpectralHammerState",
    "SpectralWeightDecayState",
    "spectral_hammer",
    "spectral_weight_decay",
]

_FIELDS = ("u", "v", "sigma", "sigma_after")


def _sigma_metrics(name: str, sigma: Any, after: Any) -> dict[str, jax.Array]:
    """``"<name>/sigma/<path>"`` per matrix (``/<i>`` for stacks), and the maxima before and
    after the step over all matrices (0 when there is none)."""
    out: dict[str, jax.Array] = {}
    top = {"sigma_max": jnp.zeros([], jnp.float32), "sigma_max_after": jnp.zeros([], jnp.float32)}
    for key, tree in (("sigma_max", sigma), ("sigma_max_after", after)):
        for path, s in jax.tree_util.tree_flatten_with_path(tree)[0]:
            s32 = jnp.asarray(s, jnp.float32)
            top[key] = jnp.maximum(top[key], jnp.max(s32, initial=0.0))
            if key == "sigma_max":
                base = f"{name}/sigma/{_paths.path_str(path)}"
                if s32.ndim == 0:
                    out[base] = s32
                for idx in range(s32.size if s32.ndim else 0):
                    out[f"{base}/{idx}"] = s32.reshape(-1)[idx]
    out.update({f"{name}/{k}": v for k, v in top.items()})
    return out


class SpectralHammerState(NamedTuple):
    """State of :func:`spectral_hammer`.

    Attributes:
      count: int32 step counter of shape ``()``; a ``max_norm`` schedule is evaluated on it.
      u: params-structured tree of left power-iteration vectors (unit norm), shape
        ``batch_shape + (m,)`` per matrix leaf (float32, or wider); ``None`` off matrices.
      v: the right vectors, shape ``batch_shape + (n,)``.
      sigma: the estimate σ̂₁ of ``θ + u`` before the hammer at the last step (``batch_shape``).
      sigma_after: σ̂₁ after it, ``min(σ̂₁, c)``.
    """

    count: jax.Array  # int32, shape ()
    u: Any
    v: Any
    sigma: Any
    sigma_after: Any

    def optareg_metrics(self) -> dict[str, jax.Array]:
        """``"spectral_hammer/sigma/<path>"`` (before), ``"spectral_hammer/sigma_max"`` and
        ``"spectral_hammer/sigma_max_after"``."""
        return _sigma_metrics("spectral_hammer", self.sigma, self.sigma_after)


class SpectralWeightDecayState(NamedTuple):
    """State of :func:`spectral_weight_decay`.

    Attributes:
      count: int32 step counter of shape ``()``; the decay schedule is evaluated on it.
      u: params-structured tree of left power-iteration vectors of θ, ``batch_shape + (m,)``.
      v: the right vectors, ``batch_shape + (n,)``.
      sigma: σ̂₁(θ) at the last step (``batch_shape`` per matrix leaf).
      sigma_after: ``(1 − λ_t)·σ̂₁(θ)``, the top singular value the decay left.
    """

    count: jax.Array  # int32, shape ()
    u: Any
    v: Any
    sigma: Any
    sigma_after: Any

    def optareg_metrics(self) -> dict[str, jax.Array]:
        """``"spectral_weight_decay/sigma/<path>"``, ``".../sigma_max"``, ``".../sigma_max_after"``
        (before and after the decay)."""
        return _sigma_metrics("spectral_weight_decay", self.sigma, self.sigma_after)


# --------------------------------------------------------------------------------------------
# the shared per-leaf machinery
# --------------------------------------------------------------------------------------------


def _check_ints(num_iters: Any, init_iters: Any, metrics_every: Any) -> dict[str, Any]:
    """Python ints, or traced ints under ``optax.inject_hyperparams`` without ``static_args``
    (loop bounds accept them)."""
    return {
        "num_iters": _validation.check_int_or_traced("num_iters", num_iters, low=1),
        "init_iters": _validation.check_int_or_traced("init_iters", init_iters, low=0),
        "metrics_every": _validation.check_metrics_every(metrics_every),
    }


@_numerics.jit_static_ints(1, 2)
def _init_leaf(p: jax.Array, plan: Any, init_iters: Any) -> dict[str, jax.Array]:
    """Vectors from ``init_iters`` power iterations on θ₀ (a fixed Gaussian start), and σ̂₁."""
    w = spectral._to_mats(_numerics.upcast(p), plan)
    a, b = start_vectors(plan.batch, plan.m, plan.n, w.dtype)
    sigma = jnp.zeros((plan.batch,), w.dtype)
    if isinstance(init_iters, jax.core.Tracer):  # inject_hyperparams under a jitted init
        a, b, sigma = jax.lax.cond(
            init_iters > 0, lambda: power_iterate(w, a, b, init_iters), lambda: (a, b, sigma)
        )
    elif init_iters:
        a, b, sigma = power_iterate(w, a, b, init_iters)
    shapes = plan.batch_shape
    return {
        "u": a.reshape(shapes + (plan.m,)),
        "v": b.reshape(shapes + (plan.n,)),
        "sigma": sigma.reshape(shapes),
        "sigma_after": sigma.reshape(shapes),
    }


def _init_fields(params: Any, init_iters: int) -> dict[str, Any]:
    plans = spectral._ACTIVE_PLANS.get()
    treedef = jax.tree.structure(params, is_leaf=_is_none)
    flat, paths = treedef.flatten_up_to(params), _paths.leaf_paths(params, treedef)
    outs = [
        None if p is None or plans.get(path) is None else _init_leaf(p, plans[path], init_iters)
        for p, path in zip(flat, paths, strict=True)
    ]
    return {f: treedef.unflatten([None if o is None else o[f] for o in outs]) for f in _FIELDS}


def _is_none(x: Any) -> bool:
    return x is None


def _rank_one(w: jax.Array, a: jax.Array, b: jax.Array, s: jax.Array) -> jax.Array:
    """``W − s·a bᵀ`` per matrix (``w``: (B, m, n), ``a``: (B, m), ``b``: (B, n), ``s``: (B,))."""
    return w - (s[:, None] * a)[:, :, None] * b[:, None, :]


def _transform(name, hyperparams, correction, mask, layout, stack_axes, ints, state_cls):
    """The post-step transform: power iteration on the matrix ``correction`` names, then
    ``θ + u − s·a bᵀ`` with ``(s, σ_after) = correction(σ̂, **hp)``."""
    on_theta = correction.on_theta  # spectral weight decay reads θ, the hammer θ + u

    def init_state(params):
        if _validation.is_params_placeholder(params):
            marker = spectral._NotParams()
            return dict.fromkeys(_FIELDS, marker)
        return _init_fields(params, ints["init_iters"])

    def operator(leaf, **hp):
        plan = spectral._ACTIVE_PLANS.get()[leaf.path]
        dt = leaf.x.dtype
        st = leaf.state
        a = st["u"].astype(dt).reshape(plan.batch, plan.m)
        b = st["v"].astype(dt).reshape(plan.batch, plan.n)
        target = spectral._to_mats(leaf.theta if on_theta else leaf.x, plan)
        a, b, sigma = power_iterate(target, a, b, ints["num_iters"])
        hp = {k: spectral._scalar(v, dt) for k, v in hp.items()}
        s, after = correction(sigma, **hp)
        y = spectral._from_mats(_rank_one(spectral._to_mats(leaf.x, plan), a, b, s), plan)
        shapes = plan.batch_shape
        new = {
            "u": a.reshape(shapes + (plan.m,)),
            "v": b.reshape(shapes + (plan.n,)),
            "sigma": sigma.reshape(shapes),
            "sigma_after": after.reshape(shapes),
        }
        return y, {k: v.astype(st[k].dtype) for k, v in new.items()}

    inner = _poststep.transformation(
        operator,
        name=name,
        hyperparams=hyperparams,
        mask=mask,
        select=lambda p, path: spectral._ACTIVE_PLANS.get().get(path) is not None,
        init_state=init_state,
        state_cls=state_cls,
    )
    return spectral._with_plans(
        inner, None, layout, name, stack_axes=stack_axes, masked=mask is not None
    )


def _check_common(mask: Any, layout: str, stack_axes: Any) -> None:
    _masking.check_mask("mask", mask)
    _paths.check_layout(layout)
    _paths.check_stack_axes(stack_axes)


# --------------------------------------------------------------------------------------------
# the transforms
# --------------------------------------------------------------------------------------------


def _hammer_correction(sigma, max_norm):
    excess = jnp.maximum(sigma - max_norm, 0.0)  # False for NaN: that matrix is left as is
    excess = jnp.where(jnp.isfinite(excess), excess, 0.0)
    return excess, sigma - excess


_hammer_correction.on_theta = False


def spectral_hammer(
    max_norm: _validation.ScalarOrSchedule = 1.0,
    *,
    num_iters: int = 1,
    init_iters: int = 100,
    layout: str = "auto",
    stack_axes: Any = None,
    mask: _validation.MaskOrFn = None,
    metrics_every: int = 1,
) -> optax.GradientTransformationExtraArgs:
    r"""Bring the top singular value of every weight matrix down to ``c`` (post-step).

    The spectral hammer of Newhouse et al. (2025, §3): after each step, with
    ``W = θ + u`` and ``(σ̂₁, u₁, v₁)`` its top singular triple from warm-started power
    iteration,

    .. math::

        W \leftarrow W - (\hat\sigma_1 - c)_+\, u_1 v_1^\top .

    With exact vectors only ``σ₁`` changes (to ``c``); every other singular value and vector
    stays. One step fixes one direction: if ``σ₂ > c`` too, the next steps hammer it in turn,
    so the bound ``σ_max ≤ c`` holds once the iteration has converged and no more than one
    singular value per step crosses ``c``: the regime of Muon, whose update has spectral norm
    ``η`` (the paper pairs the hammer with Muon and warns that under Adam, whose update is
    high-rank, many singular values cross at once). Cost per step: ``num_iters`` pairs of
    matrix-vector products on ``θ + u`` and one rank-one update. The bound is as good as the
    vectors: σ̂₁ is a power iterate (a lower bound on σ₁), so it is no certificate; for one
    use :func:`optareg.spectral_clip` (``"exact"``). The paper's version raises ``σ₁`` to ``c``
    when it is below (a hard norm, not a bound); this one only lowers it (the issue's
    ``(σ₁ − c)₊``), which is what "a spectral bound" asks of a Muon run.

    Args:
      max_norm: the bound ``c > 0`` (a constant or a schedule of the step count).
      num_iters: power iterations per step, warm-started from the last step's vectors
        (``>= 1``).
      init_iters: power iterations on θ₀ at ``init`` (``>= 0``).
      layout: ``"auto"``, ``"flax"`` or ``"torch"``: the matrix view of each leaf, as in
        :func:`optareg.spectral_clip`.
      stack_axes: leading axes of a leaf that index a stack of layers (``None``, an ``int``, a
        pytree prefix of those, or a callable ``(path, leaf) -> int | None``, see
        :mod:`optareg.spectral`): each layer's matrix is hammered on its own.
      mask: optax mask; masked-out leaves pass through. Without a mask, leaves that are not
        weight matrices (per-layer rank < 2, biases, norm scales, embeddings) pass through.
      metrics_every: accepted for uniformity (``>= 1``); σ̂₁ before and after is a by-product
        of the method and recorded every step.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose state is :class:`SpectralHammerState`;
      ``optareg.metrics`` reads ``"spectral_hammer/sigma/<path>"``,
      ``"spectral_hammer/sigma_max"`` and ``"spectral_hammer/sigma_max_after"``.

    Example:
      >>> import jax.numpy as jnp, optax, optareg
      >>> params = {"w": jnp.diag(jnp.array([3.0, 2.0, 0.5]))}
      >>> tx = optareg.chain(optax.sgd(0.1), optareg.spectral_hammer(1.0))
      >>> state = tx.init(params)
      >>> updates, state = tx.update({"w": jnp.zeros((3, 3))}, state, params)
      >>> [round(float(x), 3) for x in jnp.diag(optax.apply_updates(params, updates)["w"])]
      [1.0, 2.0, 0.5]

    References:
      Newhouse, Hess, Cesista, Zahorodnii, Bernstein & Isola, "Training Transformers with
      Enforced Lipschitz Constants", 2025 (arXiv:2507.13338), §3 (spectral hammer).
    """
    ints = _check_ints(num_iters, init_iters, metrics_every)
    _validation.check_scalar("max_norm", max_norm, low=0.0, low_inclusive=False)
    _check_common(mask, layout, stack_axes)
    return _transform(
        "spectral_hammer",
        {"max_norm": max_norm},
        _hammer_correction,
        mask,
        layout,
        stack_axes,
        ints,
        SpectralHammerState,
    )


def _decay_correction(sigma, weight_decay):
    s = jnp.where(jnp.isfinite(sigma), weight_decay * sigma, 0.0)
    return s, sigma - s


_decay_correction.on_theta = True


def spectral_weight_decay(
    weight_decay: _validation.ScalarOrSchedule = 0.1,
    *,
    learning_rate: _validation.ScalarOrSchedule | None = None,
    convention: str = "pytorch",
    num_iters: int = 1,
    init_iters: int = 100,
    layout: str = "auto",
    stack_axes: Any = None,
    mask: _validation.MaskOrFn = None,
    metrics_every: int = 1,
) -> optax.GradientTransformationExtraArgs:
    r"""Weight decay on the top singular direction of every weight matrix only (post-step).

    Spectral weight decay (Newhouse et al. 2025, §3): with ``(σ̂₁, u₁, v₁)`` the top singular
    triple of the current parameters θ (warm-started power iteration) and ``u`` the incoming
    update,

    .. math::

        \theta_{\mathrm{new}} = \theta + u - \lambda_t\,\hat\sigma_1\, u_1 v_1^\top ,

    so that for ``u = 0`` the top singular value becomes ``(1 − λ_t)σ₁`` and every other one
    stays. Like :func:`optareg.decoupled_weight_decay` (and ``optax.adamw``) the decay is
    computed from θ *before* the step. Plain weight decay shrinks every singular value by
    ``(1 − λ_t)``, the small ones the network needs too; this one shrinks only the largest, the
    one that sets the layer's Lipschitz constant.

    ``λ_t`` follows the conventions of :func:`optareg.decay_schedule`: with
    ``learning_rate=None`` it is ``weight_decay`` as given per step (``"independent"``; a
    schedule is evaluated on the transform's counter); with ``learning_rate`` (the optimizer's,
    a constant or the same schedule object) it is
    ``decay_schedule(weight_decay, learning_rate, convention)``: ``"pytorch"`` (default,
    ``λ·η_t`` as in ``optax.adamw`` and ``optax.contrib.muon``'s ``weight_decay``),
    ``"paper"`` (``λ·η_t/η_max``), ``"adamc"`` or ``"independent"``.

    Args:
      weight_decay: λ (``λ_t`` itself in ``[0, 1]`` when ``learning_rate`` is ``None``).
      learning_rate: the optimizer's learning rate η, or ``None``.
      convention: with ``learning_rate``: ``"pytorch"``, ``"paper"``, ``"adamc"`` or
        ``"independent"``.
      num_iters: power iterations per step on θ, warm-started (``>= 1``).
      init_iters: power iterations on θ₀ at ``init`` (``>= 0``).
      layout: ``"auto"``, ``"flax"`` or ``"torch"`` (as in :func:`optareg.spectral_clip`).
      stack_axes: leading axes that index a stack of layers (see :func:`spectral_hammer`).
      mask: optax mask; masked-out leaves and leaves that are not matrices pass through.
      metrics_every: accepted for uniformity (``>= 1``); σ̂₁ is a by-product, recorded every
        step.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose state is
      :class:`SpectralWeightDecayState`; ``optareg.metrics`` reads
      ``"spectral_weight_decay/sigma/<path>"``, ``".../sigma_max"`` and
      ``".../sigma_max_after"``.

    Example:
      >>> import jax.numpy as jnp, optax, optareg
      >>> params = {"w": jnp.diag(jnp.array([3.0, 2.0, 0.5]))}
      >>> tx = optareg.chain(optax.sgd(0.1), optareg.spectral_weight_decay(0.1))
      >>> state = tx.init(params)
      >>> updates, state = tx.update({"w": jnp.zeros((3, 3))}, state, params)
      >>> [round(float(x), 3) for x in jnp.diag(optax.apply_updates(params, updates)["w"])]
      [2.7, 2.0, 0.5]

    References:
      Newhouse, Hess, Cesista, Zahorodnii, Bernstein & Isola, "Training Transformers with
      Enforced Lipschitz Constants", 2025 (arXiv:2507.13338), §3 (spectral weight decay).
      Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019.
    """
    ints = _check_ints(num_iters, init_iters, metrics_every)
    _validation.check_choice("convention", convention, decay._CONVENTIONS)
    if learning_rate is None:
        _validation.check_scalar("weight_decay", weight_decay, low=0.0, high=1.0)
        lam = weight_decay
    else:
        lam = decay.decay_schedule(weight_decay, learning_rate, convention)
    _check_common(mask, layout, stack_axes)
    return _transform(
        "spectral_weight_decay",
        {"weight_decay": lam},
        _decay_correction,
        mask,
        layout,
        stack_axes,
        ints,
        SpectralWeightDecayState,
    )
