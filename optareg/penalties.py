"""Ready penalties ``R(θ)`` for :func:`optareg.add_penalty` (pure functions of a parameter tree).

Each penalty maps a parameter tree (a dict, a Flax NNX ``State``, an Equinox module, the masked
tree that ``optax.masked`` hands its inner transform) to a scalar, in at least float32 (float64
for float64 parameters), and is differentiable with ``jax.grad``:

* :func:`l2` — ``½‖θ‖²``; ``add_penalty(l2, λ)`` is ``add_decayed_weights(λ)``, bit for bit;
* :func:`l1` — ``‖θ‖₁`` with the subgradient ``sign(θ)`` (0 at 0): a subgradient penalty that
  never lands on exact zeros — use :func:`optareg.prox_l1` for sparsity;
* :func:`orthogonality` — ``Σ_W ‖WᵀW − I‖²_F`` over the matrix leaves, units as columns
  (Brock et al.'s orthogonal regularization), layout-aware;
* :func:`l2_to` — ``½‖θ − θ_ref‖²`` (L2-SP as a penalty).

Leaves that ``optax.masked`` replaced by ``optax.MaskedNode`` have no array leaves and contribute
nothing; so does a ``None`` leaf.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from optareg import _numerics, _paths, _validation, sharding

__all__ = ["l1", "l2", "l2_to", "orthogonality"]

Penalty = Callable[[Any], jax.Array]


def _arrays(params: Any) -> list[jax.Array]:
    _validation.check_not_a_step_count(params, "a penalty function", "penalty")
    return [jnp.asarray(x) for x in jax.tree.leaves(params)]


def _total(terms: list[jax.Array]) -> jax.Array:
    return sum(terms, jnp.zeros([], jnp.float32))


@jax.custom_jvp
def _half_sq_sum(x: jax.Array) -> jax.Array:
    """``½Σx²`` whose gradient is ``x`` itself, exactly and without overflow (autodiff of
    ``0.5·x²`` forms ``2·x``, which overflows for ``|x| > max/2``)."""
    return 0.5 * jnp.sum(jnp.square(x))


@_half_sq_sum.defjvp
def _half_sq_sum_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    return _half_sq_sum(x), jnp.sum(x * t)


def l2(params: Any) -> jax.Array:
    r"""The squared L2 norm ``R(θ) = ½‖θ‖² = ½ Σ_i θ_i²`` over every leaf.

    Its gradient is ``θ`` itself, exactly (a custom JVP; no ``2·θ`` that could overflow), so
    ``add_penalty(penalties.l2, λ)`` gives the same updates as ``add_decayed_weights(λ)``, bit for
    bit (``tests/test_penalties.py`` checks float32, bfloat16 and float64).

    Args:
      params: a parameter tree.

    Returns:
      A float32 scalar (float64 for float64 parameters).

    Example:
      >>> import jax.numpy as jnp
      >>> from optareg import penalties
      >>> float(penalties.l2({"w": jnp.array([3.0, 4.0]), "b": jnp.array(1.0)}))
      13.0
    """
    return _total([_half_sq_sum(_numerics.upcast(x)) for x in _arrays(params)])


def l1(params: Any) -> jax.Array:
    r"""The L1 norm ``R(θ) = ‖θ‖₁ = Σ_i |θ_i|`` over every leaf.

    Its gradient under ``jax.grad`` is the subgradient ``sign(θ)`` (0 where ``θ_i = 0``). Added to
    the gradient (``add_penalty(penalties.l1, λ)``) it pushes every weight toward zero by ``η·λ``
    per step, so the weights *oscillate around* zero and never become exactly 0; for exact zeros
    use the proximal step :func:`optareg.prox_l1` (post-step, last in the chain).

    Args:
      params: a parameter tree.

    Returns:
      A float32 scalar (float64 for float64 parameters).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from optareg import penalties
      >>> w = {"w": jnp.array([-2.0, 0.0, 0.5])}
      >>> float(penalties.l1(w))
      2.5
      >>> jax.grad(penalties.l1)(w)["w"]  # sign(θ), 0 at 0
      Array([-1.,  0.,  1.], dtype=float32)
    """
    return _total([_abs_sum(_numerics.upcast(x)) for x in _arrays(params)])


def _abs_sum(x: jax.Array) -> jax.Array:
    """``Σ|x|`` as ``Σ x·sign(x)`` (exact) with ``sign`` held constant, so that the gradient is
    ``sign(x)``, 0 at 0 (the minimal-norm subgradient; ``jnp.abs`` differentiates to 1 at 0)."""
    return jnp.sum(x * jax.lax.stop_gradient(jnp.sign(x)))


def _as_unit_matrices(x: jax.Array, path: str, layout: str, stack: int) -> jax.Array:
    """``x`` as ``(layers, fan_in, units)`` matrices: its ``stack`` leading axes flattened into
    one layer axis, the unit axis (within a layer) last, every other axis into ``fan_in``."""
    kept = _paths.kept_axes("orthogonality", layout, None, x, path, stack)
    rest = tuple(a for a in range(x.ndim) if a not in kept)
    w = jnp.transpose(_numerics.upcast(x), kept[:-1] + rest + kept[-1:])
    return w.reshape(math.prod(w.shape[:stack]), -1, w.shape[-1])


def _gram_residual(
    x: jax.Array, layout: str, off_diagonal: bool, path: str, stack: int = 0
) -> jax.Array:
    """``Σ_l ‖W_lᵀW_l − I‖²_F`` (or its off-diagonal part) of one leaf read as ``(fan_in,
    units)`` matrices, one per layer of its ``stack`` leading axes."""
    w = _as_unit_matrices(x, path, layout, stack)
    eye = jnp.eye(w.shape[-1], dtype=w.dtype)
    gram = jnp.swapaxes(w, -1, -2) @ w
    residual = gram * (1 - eye) if off_diagonal else gram - eye
    return jnp.sum(jnp.square(residual))


def _orthogonality(params: Any, layout: str, off_diagonal: bool, stack_axes: Any) -> jax.Array:
    _validation.check_not_a_step_count(params, "a penalty function", "penalty")
    terms = []
    flat = jax.tree_util.tree_flatten_with_path(params, is_leaf=lambda x: x is None)[0]
    for (path, x), lay in zip(flat, _paths.leaf_layouts(stack_axes, params), strict=True):
        if x is None or not lay.matrix:  # (a MaskedNode is an empty node: no leaf)
            continue
        x = jnp.asarray(x)
        term = functools.partial(
            _gram_residual,
            layout=layout,
            off_diagonal=off_diagonal,
            path=_paths.path_str(path),
            stack=lay.stack,
        )
        # explicit-sharding meshes: the Gram product contracts a sharded axis (optareg.sharding)
        terms.append(sharding.run_local(term, x))
    return _total(terms)


def orthogonality(
    params: Any = None,
    *,
    layout: str = "auto",
    off_diagonal: bool = False,
    stack_axes: Any = None,
) -> jax.Array | Penalty:
    r"""Orthogonal regularization ``R(θ) = Σ_W ‖WᵀW − I‖²_F`` over the matrix leaves.

    Each weight matrix is read as a matrix ``W`` of shape ``(fan_in, units)`` whose
    columns are its units (output features): the unit axis follows the ``layout`` rules of
    :func:`optareg.max_norm` (``"auto"``: a leaf named ``weight`` has its units on the first
    axis, ``kernel`` / ``w`` and anything else on the last; ``"flax"``: last; ``"torch"``: first)
    and every other axis is flattened into ``fan_in`` (a conv kernel ``(H, W, I, O)`` gives
    ``(H·W·I, O)``). ``R = 0`` exactly when the units are orthonormal. The weight matrices are
    the leaves of per-layer rank ``≥ 2`` not named as a bias (an Equinox conv bias
    ``(O, 1, 1)`` too), a norm scale or an embedding (the rule of every grouping transform,
    :func:`optareg.masks.decay_mask`'s names); the others contribute 0. With
    ``stack_axes=k`` the leading ``k`` axes of a leaf index layers (``nn.scan``, ``nnx.vmap``,
    ``eqx.filter_vmap``) and the sum runs over the layers, ``Σ_l ‖W_lᵀW_l − I‖²_F``: a Gram
    matrix never spans two layers. With ``off_diagonal=True`` only the off-diagonal entries count,
    ``‖WᵀW ⊙ (1 − I)‖²_F`` (BigGAN's variant: orthogonal units of any norm). With more units
    than ``fan_in``, ``WᵀW`` has rank ``< units`` and ``R`` cannot reach 0.

    Two ways to call it: ``orthogonality(params)`` is the penalty itself (``layout="auto"``), so
    ``add_penalty(penalties.orthogonality, λ)`` works; without params,
    ``orthogonality(layout=..., off_diagonal=..., stack_axes=...)`` returns the penalty
    function with those options (``functools.partial(penalties.orthogonality, stack_axes=1)``
    is the same function).

    Args:
      params: a parameter tree, or ``None`` to get the configured penalty function.
      layout: ``"auto"``, ``"flax"`` or ``"torch"`` (which axis indexes the units).
      off_diagonal: penalize only the off-diagonal Gram entries.
      stack_axes: the number of leading layer axes: ``None`` (none), an int ``≥ 0``, a pytree
        prefix of the params with int / ``None`` leaves, or a callable
        ``(path, leaf) -> int | None``.

    Returns:
      The scalar ``R(params)`` (float32, float64 for float64 parameters), or, without
      ``params``, the function ``params -> R(params)``.

    Raises:
      ValueError: ``layout`` is not one of the three, a bad ``stack_axes``.

    Example:
      >>> import jax.numpy as jnp
      >>> from optareg import penalties
      >>> w = {"kernel": jnp.array([[1.0, 1.0], [0.0, 1.0]])}  # WᵀW = [[1, 1], [1, 2]]
      >>> float(penalties.orthogonality(w))
      3.0
      >>> float(penalties.orthogonality(off_diagonal=True)(w))
      2.0
      >>> float(penalties.orthogonality({"weight": jnp.eye(3), "bias": jnp.ones(3)}))
      0.0
      >>> stack = {"kernel": jnp.stack([jnp.eye(2), 2 * jnp.eye(2)])}  # 2 layers
      >>> float(penalties.orthogonality(stack_axes=1)(stack))  # 0 + ‖4I − I‖² = 18
      18.0

    References:
      Brock, Lim, Ritchie & Weston, "Neural Photo Editing with Introspective Adversarial
      Networks", ICLR 2017.
      Brock, Donahue & Simonyan, "Large Scale GAN Training for High Fidelity Natural Image
      Synthesis" (BigGAN), ICLR 2019.
    """
    layout = _paths.check_layout(layout)
    off_diagonal = _validation.check_bool("off_diagonal", off_diagonal)
    _paths.check_stack_axes(stack_axes)
    if params is None:
        return lambda p: _orthogonality(p, layout, off_diagonal, stack_axes)
    return _orthogonality(params, layout, off_diagonal, stack_axes)


def _is_empty_node(x: Any) -> bool:
    return x is None or isinstance(x, optax.MaskedNode)


def l2_to(reference: Any) -> Penalty:
    r"""L2-SP as a penalty: ``R(θ) = ½‖θ − θ_ref‖²``.

    Pulls the parameters toward a reference point (pretrained weights) instead of zero. Leaves
    that ``optax.masked`` masked out of ``θ`` (or ``None`` leaves) are skipped, so the same
    full-size reference works with a ``mask=``. The reference is held by the returned function
    (a constant of the compiled step); for very large models prefer
    ``optareg.add_decayed_weights(λ, reference=...)``, which keeps it in the optimizer state and
    gives the same update.

    Args:
      reference: a parameter tree of the same structure as the params (arrays or numbers).

    Returns:
      The penalty function ``params -> ½‖params − reference‖²`` (float32, float64 for float64
      parameters); it raises a ``ValueError`` naming ``reference`` when the trees do not match.

    Raises:
      ValueError: ``reference`` is ``None`` or an empty tree.

    Example:
      >>> import jax.numpy as jnp
      >>> from optareg import penalties
      >>> r = penalties.l2_to({"w": jnp.array([1.0, 1.0])})
      >>> float(r({"w": jnp.array([4.0, 5.0])}))  # ½(3² + 4²)
      12.5

    References:
      Li, Grandvalet & Davoine, "Explicit Inductive Bias for Transfer Learning with
      Convolutional Networks" (L2-SP), ICML 2018.
    """
    if reference is None or not jax.tree.leaves(reference):
        raise ValueError(
            "`reference` must be a non-empty parameter tree (the point to pull toward); "
            f"got {reference!r}. For a pull toward zero use `penalties.l2`."
        )
    reference = jax.tree.map(jnp.asarray, reference)

    def penalty(params):
        _validation.check_not_a_step_count(params, "a penalty function", "penalty")
        treedef = jax.tree.structure(params, is_leaf=_is_empty_node)
        try:
            refs = treedef.flatten_up_to(reference)
        except (ValueError, TypeError) as e:
            raise ValueError(
                "penalties.l2_to: `reference` must have the tree structure of the params; got "
                f"{jax.tree.structure(reference)} for params {jax.tree.structure(params)}."
            ) from e
        terms = []
        for p, r in zip(treedef.flatten_up_to(params), refs, strict=True):
            if _is_empty_node(p):
                continue
            p = _numerics.upcast(jnp.asarray(p))
            terms.append(_half_sq_sum(p - r.astype(p.dtype)))
        return _total(terms)

    return penalty
