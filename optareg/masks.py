"""Boolean masks from tree paths, for Flax linen / NNX, Haiku and Equinox parameter trees.

A mask here is what optax expects for ``mask=``: a pytree with the structure of the params whose
leaves are Python bools (``True`` = "apply the transform to this leaf"). Both functions below
walk the params with their tree paths, so they work on any pytree:

* Flax linen: ``{"params": {"Dense_0": {"kernel", "bias"}, "LayerNorm_0": {"scale", ...}}}``;
* Flax NNX: ``nnx.state(model, nnx.Param)`` — a ``State`` of ``nnx.Param`` nodes whose array sits
  under a trailing ``.value`` path entry. The mask keeps the ``State``/``Param`` nodes (with a
  bool inside) so it has exactly the tree structure optax sees; the ``.value`` entry is not part
  of the path names. On a pure dict (``nnx.to_pure_dict``) the same names come out;
* Haiku: ``{"block/~/mlp/~/linear": {"w", "b"}}`` (the module name is one path component);
* Equinox: ``eqx.filter(model, eqx.is_array)`` — attribute names (``.mlp.layers[0].weight``),
  ``None`` for the non-array fields (left as they are).

Pass a mask *function* (``mask=optareg.masks.decay_mask`` or ``mask=by_path(...)``) rather than
a precomputed tree when the tree optax sees may differ in form from the one you hold (e.g.
``nnx.Optimizer`` passes its own view of the state): the function is applied to what optax sees.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import jax

from optareg import _paths, _validation

__all__ = ["by_path", "decay_mask", "path_names"]

DEFAULT_EXCLUDE = _paths.DEFAULT_EXCLUDE


# --------------------------------------------------------------------------------------------
# paths
# --------------------------------------------------------------------------------------------


def _map_with_names(fn: Callable[[tuple[str, ...], Any], Any], params: Any) -> Any:
    """``fn(names, leaf)`` on every array leaf; NNX variables keep their node around the result."""
    _validation.check_not_a_step_count(params, "a mask function", "mask")
    var_types = _paths.nnx_variable_types()

    def is_var(x):
        return bool(var_types) and isinstance(x, var_types)

    def outer(path, x):
        names = tuple(_paths.key_name(k) for k in path)
        if is_var(x):  # map inside the Variable: the mask keeps the node, drops `.value` names
            return jax.tree.map(lambda leaf: fn(names, leaf), x)
        return fn(names, x)

    return jax.tree_util.tree_map_with_path(outer, params, is_leaf=is_var)


def path_names(params: Any) -> Any:
    """The ``"a/b/c"`` path string of every leaf, as a tree shaped like ``params``.

    These are the strings :func:`by_path` matches its regex against (NNX ``.value`` entries
    dropped).

    Example:
      >>> import jax.numpy as jnp
      >>> path_names({"Dense_0": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}})
      {'Dense_0': {'bias': 'Dense_0/bias', 'kernel': 'Dense_0/kernel'}}
    """
    return _map_with_names(lambda names, _: "/".join(names), params)


# --------------------------------------------------------------------------------------------
# name matching
# --------------------------------------------------------------------------------------------


def _compile(pattern: Any, argname: str) -> tuple[re.Pattern, ...]:
    pats = (pattern,) if isinstance(pattern, (str, re.Pattern)) else tuple(pattern)
    if not pats:
        raise ValueError(f"`{argname}` must be a regex or a non-empty list of regexes; got [].")
    out = []
    for p in pats:
        if isinstance(p, re.Pattern):
            out.append(p)
            continue
        if not isinstance(p, str):
            raise TypeError(f"`{argname}` must hold regex strings; got {type(p).__name__} {p!r}.")
        try:
            out.append(re.compile(p))
        except re.error as e:
            raise ValueError(f"`{argname}`: {p!r} is not a valid regex ({e}).") from e
    return tuple(out)


# --------------------------------------------------------------------------------------------
# public
# --------------------------------------------------------------------------------------------


def decay_mask(
    params: Any,
    *,
    exclude: str | Sequence[str] = DEFAULT_EXCLUDE,
    min_ndim: int | None = 2,
    stack_axes: Any = None,
    stacked: str | Sequence[str] | None = None,
) -> Any:
    r"""The usual weight-decay mask: ``True`` on kernels / weight matrices, ``False`` elsewhere.

    A leaf is decayed (``True``) iff **both**

    1. *no path component matches a name in* ``exclude``, and
    2. *its per-layer rank is at least* ``min_ndim`` (its rank without its ``stack_axes``
       leading layer axes).

    **Name matching.** Every component of the leaf's path (module names *and* the leaf's own
    name) is split into lower-case tokens at non-alphanumeric characters and camelCase
    boundaries (``"LayerNorm_0"`` → ``layer, norm, 0``; ``"block/~/layer_norm"`` →
    ``block, layer, norm``). An exclude name ``e`` (compared case-insensitively) matches a token
    ``t`` when ``t == e``, when ``t`` is ``e`` followed by digits (``"ln1"``, ``"norm2"``), when
    ``t`` is its plural (``"embeddings"``), or, for names of 4 letters or more, when ``t`` ends with
    ``e`` (``"layernorm"``, ``"rmsnorm"``). Tokens never match inside a word otherwise: ``"ln"``
    matches ``"ln_1"`` and ``"ln_f"`` but not ``"kernel"``; ``"norm"`` does not match
    ``"normal"``. The exclusion is inherited: with ``"norm"`` excluded, every leaf under a
    ``norm1`` module is excluded (Equinox LayerNorm stores its scale as ``weight``). In addition,
    ``"bias"`` matches a leaf *named* ``"b"`` (Haiku's bias). So with the defaults:
    Flax ``Dense_0/kernel`` → True, ``Dense_0/bias``, ``LayerNorm_0/scale``, ``Embed_0/embedding``
    → False; Haiku ``linear/w`` → True, ``linear/b``, ``layer_norm/offset``,
    ``embed/embeddings`` → False; Equinox ``mlp.weight`` → True, ``ln1.weight`` → False. An
    array held by a module that Equinox itself defines counts that module's class name as a
    component too, so the ``weight`` of an ``eqx.nn.Embedding`` (``"Embedding"``) or of an
    ``eqx.nn.LayerNorm`` / ``RMSNorm`` / ``GroupNorm`` is excluded whatever the attribute is
    called (``tok_embed.weight``, ``wte.weight``).

    **min_ndim and stacked layers.** The rank rule alone ("decay ndim ≥ 2") fails on stacked or
    scanned layers (``nn.scan``, ``nnx.vmap``, ``hk.layer_stack``, ``eqx.filter_vmap``), where a
    bias has shape ``(L, d)``: it is the name rule that excludes such biases and norm scales, and
    it does not depend on rank. For leaves whose names say nothing (e.g. a custom ``"gain"``
    vector), say how many leading axes are layer axes with ``stack_axes`` (the keyword every
    grouping transform takes, with the same meaning: an int, a pytree prefix of ints / ``None``,
    or a callable ``(path, leaf) -> int | None``; see :mod:`optareg._paths`): the rank is
    counted without them. ``stacked`` (regexes over the ``"a/b/c"`` path, as in
    :func:`by_path`) is an alias of the callable ``stack_axes`` that gives the matching leaves
    one layer axis. ``min_ndim=None`` or ``0`` disables the rank rule. The same name and rank
    rules decide, without a mask, which leaves the grouping transforms (``max_norm``,
    ``prox_group_lasso``, ``spectral_clip`` ...) treat as weight matrices.

    Use it directly as ``mask=optareg.masks.decay_mask`` (a function of the params, applied to
    the tree optax sees), or with other options through ``functools.partial``.

    Args:
      params: the parameter pytree (Flax linen dict, NNX ``State``, Haiku dict, Equinox module
        filtered to arrays, or any pytree).
      exclude: names (or one name) whose presence in a path excludes the leaf; ``()`` for none.
      min_ndim: the minimum per-layer rank of a decayed leaf (``None`` or ``0``: no rank rule).
      stack_axes: leading layer axes per leaf: ``None`` (none), an int ``>= 0``, a pytree
        prefix of the params with int / ``None`` leaves, or a callable ``(path, leaf) -> int``.
      stacked: alias: regex or list of regexes of paths whose leaves carry one leading layer
        axis (``stack_axes=lambda path, _: 1 if re.search(stacked, path) else 0``).

    Returns:
      A pytree of Python bools with the structure of ``params`` (NNX variable nodes kept).

    Example:
      >>> import jax.numpy as jnp
      >>> params = {"Dense_0": {"kernel": jnp.ones((3, 4)), "bias": jnp.ones(4)},
      ...           "LayerNorm_0": {"scale": jnp.ones(4)}, "ln_f": {"w": jnp.ones((4, 4))}}
      >>> decay_mask(params)  # doctest: +NORMALIZE_WHITESPACE
      {'Dense_0': {'bias': False, 'kernel': True}, 'LayerNorm_0': {'scale': False},
       'ln_f': {'w': False}}
      >>> stack = {"mlp": {"kernel": jnp.ones((2, 3, 4)), "gain": jnp.ones((2, 4))}}  # 2 layers
      >>> decay_mask(stack, stack_axes=1)
      {'mlp': {'gain': False, 'kernel': True}}

    Raises:
      ValueError: a bad ``stack_axes``, both ``stack_axes`` and ``stacked``, a bad regex.
    """
    if isinstance(exclude, str):
        exclude = (exclude,)
    exclude = tuple(exclude)
    for e in exclude:
        if not isinstance(e, str) or not e:
            raise TypeError(f"`exclude` must hold non-empty strings; got {e!r}.")
    exclude = tuple(e.lower() for e in exclude)
    if min_ndim is not None:
        min_ndim = _validation.check_int("min_ndim", min_ndim, low=0)
    stack_axes = _stack_axes(stacked, stack_axes)
    owners = _paths.equinox_owners(params)
    stacks = _stacks_by_path(stack_axes, params)

    def leaf(names, x):
        if _paths.excluded(_paths.named(names, owners), exclude):
            return False
        if not min_ndim:
            return True
        return len(getattr(x, "shape", ())) - stacks.get("/".join(names), 0) >= min_ndim

    return _map_with_names(leaf, params)


def _stacks_by_path(stack_axes: Any, params: Any) -> dict[str, int]:
    paths, stacks = _paths.leaf_paths(params), _paths.stack_axes_of(stack_axes, params)
    return dict(zip(paths, stacks, strict=True))


def _stack_axes(stacked: Any, stack_axes: Any) -> Any:
    """``stack_axes``, or the callable that the ``stacked=`` regexes stand for (an alias)."""
    stack_axes = _paths.check_stack_axes(stack_axes)
    if stacked is None:
        return stack_axes
    if stack_axes is not None:
        raise ValueError(
            "decay_mask: give `stack_axes` or its alias `stacked` (regexes of paths with one "
            "leading layer axis), not both."
        )
    pats = _compile(stacked, "stacked")

    def one_if_stacked(path: str, leaf: Any) -> int:
        del leaf
        return int(any(p.search(path) for p in pats))

    return one_if_stacked


def by_path(pattern: str | Sequence[str]) -> Callable[[Any], Any]:
    r"""A mask function selecting the leaves whose path matches a regex.

    Each leaf's path is joined into a string ``"a/b/c"`` (dict keys, attribute names and
    sequence indices; NNX ``.value`` entries dropped; Haiku module names such as
    ``"mlp/~/linear_0"`` kept as they are) and the leaf is selected (``True``) when
    ``re.search`` finds any of the patterns in it. Matching is case-sensitive (add ``(?i)`` to
    change that); anchor with ``^``/``$`` and ``(^|/)`` to match whole components. See
    :func:`path_names` for the strings of a given tree.

    Args:
      pattern: a regex, or a list of regexes (a leaf is selected if any matches).

    Returns:
      A function ``params -> mask`` (a pytree of Python bools shaped like the params), usable
      as ``mask=`` in every optareg and optax transform.

    Example:
      >>> import jax.numpy as jnp
      >>> params = {"encoder": {"kernel": jnp.ones((2, 2))}, "head": {"kernel": jnp.ones((2, 2))}}
      >>> by_path(r"^head/")(params)
      {'encoder': {'kernel': False}, 'head': {'kernel': True}}
    """
    pats = _compile(pattern, "pattern")

    def mask_fn(params: Any) -> Any:
        return _map_with_names(
            lambda names, _: any(p.search("/".join(names)) for p in pats), params
        )

    mask_fn.__name__ = f"by_path({pattern!r})"
    mask_fn.__qualname__ = mask_fn.__name__
    return mask_fn
