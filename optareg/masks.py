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

import functools
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any

import jax

from optareg import _paths, _validation

__all__ = ["by_path", "decay_mask", "path_names"]

DEFAULT_EXCLUDE = ("bias", "scale", "norm", "ln", "embedding")

# Names that stand for an exclude name when they are the *leaf's own* name (last component).
_LEAF_ALIASES = {"bias": ("b",)}


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


def _equinox_owners(params: Any) -> dict[tuple[str, ...], str]:
    """For an Equinox module tree: the path of every submodule that Equinox itself defines
    (``eqx.nn.Embedding``, ``eqx.nn.LayerNorm`` ...) → its class name; empty otherwise.

    Such a module's arrays are named like any other (``weight``), so the class name is the
    only sign that a ``weight`` is an embedding table or a norm's scale.
    """
    eqx = sys.modules.get("equinox")
    if eqx is None or not isinstance(params, eqx.Module):
        return {}
    owners: dict[tuple[str, ...], str] = {}

    def walk(node: Any, prefix: tuple[str, ...]) -> None:
        if type(node).__module__.split(".")[0] == "equinox":
            owners[prefix] = type(node).__name__

        def is_child(x):
            return x is not node and isinstance(x, eqx.Module)

        for path, child in jax.tree_util.tree_flatten_with_path(node, is_leaf=is_child)[0]:
            if is_child(child):
                walk(child, prefix + tuple(_paths.key_name(k) for k in path))

    walk(params, ())
    return owners


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

_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_SPLIT = re.compile(r"[^a-z0-9]+")


@functools.lru_cache(maxsize=4096)
def _tokens(component: str) -> tuple[str, ...]:
    """Lower-case tokens of one path component: split on non-alphanumerics and camelCase."""
    return tuple(t for t in _SPLIT.split(_CAMEL.sub("_", component).lower()) if t)


def _token_matches(token: str, name: str) -> bool:
    stem = token.rstrip("0123456789") or token
    if name in (token, stem):  # "bias", "ln_1" -> "ln", "norm2" -> "norm"
        return True
    if stem in (name + "s", name + "es"):  # plural: "embeddings", "biases"
        return True
    # compound word ending in a long-enough name: "layernorm", "rmsnorm", "groupnorm"
    return len(name) >= 4 and stem.endswith(name)


def _excluded(names: tuple[str, ...], exclude: tuple[str, ...]) -> bool:
    for i, comp in enumerate(names):
        toks = _tokens(comp)
        last = i == len(names) - 1
        for name in exclude:
            if any(_token_matches(t, name) for t in toks):
                return True
            if last and comp.lower() in _LEAF_ALIASES.get(name, ()):
                return True
    return False


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
    stacked: str | Sequence[str] | None = None,
) -> Any:
    r"""The usual weight-decay mask: ``True`` on kernels / weight matrices, ``False`` elsewhere.

    A leaf is decayed (``True``) iff **both**

    1. *no path component matches a name in* ``exclude``, and
    2. *its rank is at least* ``min_ndim`` (rank without the leading layer axis for leaves
       under a ``stacked`` path).

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
    vector), name the stacked subtrees with ``stacked`` (regexes over the ``"a/b/c"`` path, as in
    :func:`by_path`): their rank is counted without the leading layer axis. ``min_ndim=None`` or
    ``0`` disables the rank rule.

    Use it directly as ``mask=optareg.masks.decay_mask`` (a function of the params, applied to
    the tree optax sees), or with other options through ``functools.partial``.

    Args:
      params: the parameter pytree (Flax linen dict, NNX ``State``, Haiku dict, Equinox module
        filtered to arrays, or any pytree).
      exclude: names (or one name) whose presence in a path excludes the leaf; ``()`` for none.
      min_ndim: the minimum rank of a decayed leaf (``None`` or ``0``: no rank rule).
      stacked: regex or list of regexes of paths whose leaves carry a leading layer axis.

    Returns:
      A pytree of Python bools with the structure of ``params`` (NNX variable nodes kept).

    Example:
      >>> import jax.numpy as jnp
      >>> params = {"Dense_0": {"kernel": jnp.ones((3, 4)), "bias": jnp.ones(4)},
      ...           "LayerNorm_0": {"scale": jnp.ones(4)}, "ln_f": {"w": jnp.ones((4, 4))}}
      >>> decay_mask(params)  # doctest: +NORMALIZE_WHITESPACE
      {'Dense_0': {'bias': False, 'kernel': True}, 'LayerNorm_0': {'scale': False},
       'ln_f': {'w': False}}
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
    stacked_pats = () if stacked is None else _compile(stacked, "stacked")

    owners = _equinox_owners(params)

    def leaf(names, x):
        owner = owners.get(names[:-1])  # the Equinox module holding this array, if any
        if _excluded(names if owner is None else (*names[:-1], owner, names[-1]), exclude):
            return False
        if not min_ndim:
            return True
        ndim = len(getattr(x, "shape", ()))
        path = "/".join(names)
        if stacked_pats and any(p.search(path) for p in stacked_pats):
            ndim -= 1
        return ndim >= min_ndim

    return _map_with_names(leaf, params)


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
