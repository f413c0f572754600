"""Tree paths, layouts and layer stacks: the one module that says how a leaf is laid out.

* Paths: one path-to-string function for masks, metric keys and matrix plans, so that
  ``optareg.masks.path_names`` and every ``"<name>/.../<path>"`` metric key agree.
* ``layout``: which axis of a (per-layer) leaf indexes its units (:func:`unit_axis`).
* ``stack_axes``: how many leading axes of a leaf index a stack of layers (``nn.scan``,
  ``nnx.scan`` / ``nnx.vmap``, ``eqx.filter_vmap``, ``hk.layer_stack``): every grouping
  transform handles each layer on its own (:func:`check_stack_axes`, :func:`stack_axes_of`).
* The weight-matrix rule (:func:`leaf_layouts`): a leaf is a weight matrix when its per-layer
  rank is ``>= 2`` and its name is not a bias, a norm scale or an embedding (the name rules of
  :func:`optareg.masks.decay_mask`, which lives on them).

Stacks are never guessed from shapes, and none is read from Flax metadata: a linen
``nn.Partitioned`` / NNX sharding name that ``nn.scan`` / ``nnx.vmap`` adds is a name the user
chose (nothing marks it as the layer axis), leaves without a partitioning annotation carry no
trace of the stack, and ``nnx.Optimizer`` / ``nn.unbox`` hand optax plain arrays; so the user
says ``stack_axes=``.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import re
import sys
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optareg import _chain, _validation

__all__ = [
    "DEFAULT_EXCLUDE",
    "LAYOUTS",
    "LeafLayout",
    "check_layout",
    "check_stack_axes",
    "excluded",
    "kept_axes",
    "key_name",
    "layout_of",
    "layouts_active",
    "leaf_layouts",
    "leaf_paths",
    "nnx_variable_types",
    "path_str",
    "stack_axes_of",
    "unit_axis",
    "with_layouts",
]

LAYOUTS = ("auto", "flax", "torch")

_PAYLOAD = ("value", "raw_value")  # Flax NNX Variable payload attributes: not names


def nnx_variable_types() -> tuple[type, ...]:
    """Flax NNX variable node types, if flax.nnx has been imported (else none)."""
    nnx = sys.modules.get("flax.nnx")
    if nnx is None:
        return ()
    return tuple(
        t for t in (getattr(nnx, "Variable", None), getattr(nnx, "VariableState", None)) if t
    )


def key_name(key: Any) -> str:
    """The name of one path entry (dict key, attribute, index)."""
    tu = jax.tree_util
    if isinstance(key, tu.DictKey):
        return str(key.key)
    if isinstance(key, tu.GetAttrKey):
        return str(key.name)
    if isinstance(key, tu.SequenceKey):
        return str(key.idx)
    if isinstance(key, tu.FlattenedIndexKey):
        return str(key.key)
    return str(key).strip(".[]'\"")


def path_str(path: tuple[Any, ...]) -> str:
    """``"dense1/kernel"`` from a JAX key path; NNX ``.value`` / ``.raw_value`` entries dropped."""
    names = [
        key_name(k)
        for k in path
        if not (isinstance(k, jax.tree_util.GetAttrKey) and k.name in _PAYLOAD)
    ]
    return "/".join(names)


def _is_none(x: Any) -> bool:
    return x is None


def leaf_paths(tree: Any, treedef: Any | None = None) -> list[str]:
    """The path string of every leaf of ``tree`` (``None`` leaves included), in flatten order.

    With ``treedef`` (a prefix structure of ``tree``'s leaves), one string per leaf of it.
    """
    flat = jax.tree_util.tree_flatten_with_path(tree, is_leaf=_is_none)[0]
    paths = [path_str(p) for p, _ in flat]
    if treedef is not None and len(paths) != treedef.num_leaves:
        return [str(i) for i in range(treedef.num_leaves)]
    return paths


def check_layout(layout: Any) -> str:
    """Validate ``layout``: ``"auto"``, ``"flax"`` or ``"torch"``."""
    if not isinstance(layout, str) or layout not in LAYOUTS:
        raise ValueError(
            f"`layout` must be one of 'auto' (decide per leaf from its name), 'flax' (unit = "
            f"last axis: Flax linen/NNX, Haiku) or 'torch' (unit = first axis: Equinox, "
            f"PyTorch); got {layout!r}."
        )
    return layout


def leaf_layout(layout: str, path: str) -> str | None:
    """``"flax"`` / ``"torch"`` for one leaf, or ``None`` when ``"auto"`` cannot tell."""
    if layout != "auto":
        return layout
    last = path.rsplit("/", 1)[-1]
    if last == "weight":
        return "torch"
    if last in ("kernel", "w"):
        return "flax"
    return None


def unit_axis(layout: str, path: str, ndim: int, default: int = -1) -> int:
    """The axis that indexes a leaf's units (output features), as a non-negative int.

    ``"flax"``: the last axis (Dense ``(in, out)``, conv HWIO); ``"torch"``: the first axis
    (Linear ``(out, in)``, conv OIHW); ``"auto"``: ``"torch"`` for a leaf named ``weight``,
    ``"flax"`` for ``kernel`` or ``w``, else ``default``.
    """
    kind = leaf_layout(layout, path)
    axis = {"flax": -1, "torch": 0, None: default}[kind]
    return axis % ndim if ndim else 0


# --------------------------------------------------------------------------------------------
# the one weight-matrix rule: names (biases, norm scales, embeddings) and per-layer rank
# --------------------------------------------------------------------------------------------

DEFAULT_EXCLUDE = ("bias", "scale", "norm", "ln", "embedding")

# Names that stand for an exclude name when they are the *leaf's own* name (last component).
_LEAF_ALIASES = {"bias": ("b",)}

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


def excluded(names: tuple[str, ...], exclude: tuple[str, ...] = DEFAULT_EXCLUDE) -> bool:
    """Whether a path (its components) names a bias, a norm scale, an embedding (``exclude``)."""
    for i, comp in enumerate(names):
        toks = _tokens(comp)
        last = i == len(names) - 1
        for name in exclude:
            if any(_token_matches(t, name) for t in toks):
                return True
            if last and comp.lower() in _LEAF_ALIASES.get(name, ()):
                return True
    return False


def equinox_owners(params: Any) -> dict[tuple[str, ...], str]:
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
                walk(child, prefix + tuple(key_name(k) for k in path))

    walk(params, ())
    return owners


def named(names: tuple[str, ...], owners: dict[tuple[str, ...], str]) -> tuple[str, ...]:
    """``names`` with the class name of the Equinox module holding the leaf, if any, inserted
    before the leaf's own name (so ``tok_embed.weight`` of an ``eqx.nn.Embedding`` reads
    ``tok_embed/Embedding/weight``)."""
    owner = owners.get(names[:-1])
    return names if owner is None else (*names[:-1], owner, names[-1])


# --------------------------------------------------------------------------------------------
# stack axes: the leading axes of a leaf that index a stack of layers
# --------------------------------------------------------------------------------------------

_STACK_FORMS = (
    "None (no stack axes), an int >= 0 (the number of leading layer axes of every selected "
    "leaf), a pytree prefix of the params with int / None leaves, or a callable "
    "(path: str, leaf) -> int | None"
)


def _is_stack_fn(stack_axes: Any) -> bool:
    """A function of ``(path, leaf)`` (a callable that is itself one pytree leaf; an Equinox
    module of ints is a callable *tree*, i.e. a prefix)."""
    return callable(stack_axes) and jax.tree.leaves(stack_axes) == [stack_axes]


def _check_count(k: Any, where: str) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
        hint = ""
        if hasattr(k, "dtype") and hasattr(k, "shape"):
            hint = (
                " (optax.inject_hyperparams passes every number not in `static_args` as an "
                "array: pass static_args=('stack_axes',))"
            )
        raise ValueError(f"`stack_axes`{where} must be {_STACK_FORMS}; got {k!r}{hint}.")
    return int(k)


def check_stack_axes(stack_axes: Any) -> Any:
    """Validate ``stack_axes`` at construction (the form; leaves are checked when used).

    Raises:
      ValueError: naming ``stack_axes`` and its allowed forms.
    """
    if stack_axes is None or _is_stack_fn(stack_axes):
        return stack_axes
    if isinstance(stack_axes, (str, bytes, float, complex)) or hasattr(stack_axes, "dtype"):
        _check_count(stack_axes, "")
    for path, k in jax.tree_util.tree_flatten_with_path(stack_axes)[0]:
        _check_count(k, f" at '{path_str(path)}'" if path else "")
    return stack_axes


def _prefix_table(stack_axes: Any) -> list[tuple[str, int]]:
    """``[(path, k)]`` of a pytree-prefix ``stack_axes`` (``None`` leaves: ``k = 0``)."""
    flat = jax.tree_util.tree_flatten_with_path(stack_axes, is_leaf=_is_none)[0]
    return [(path_str(p), 0 if k is None else _check_count(k, "")) for p, k in flat]


def _under(path: str, prefix: str) -> bool:
    return not prefix or path == prefix or path.startswith(prefix + "/")


def _masked_out_paths(params: Any) -> list[str]:
    """Paths of the ``optax.MaskedNode`` placeholders of a masked tree (leaves masked out by an
    enclosing ``optax.masked``: they vanish from the flattened tree but are still its paths)."""

    def is_masked(x):
        return isinstance(x, optax.MaskedNode)

    flat = jax.tree_util.tree_flatten_with_path(params, is_leaf=is_masked)[0]
    return [path_str(p) for p, x in flat if is_masked(x)]


def stack_axes_of(stack_axes: Any, params: Any) -> list[int]:
    """The number of stack axes of every leaf of ``params`` (``None`` leaves included, as in
    :func:`leaf_paths`), in flatten order.

    A pytree prefix is matched by path (``"layers"`` covers ``"layers/…"``), so the same dict
    serves a Flax dict, an NNX ``State`` and a masked tree; a prefix entry that names no
    parameter is an error. A callable is called as ``stack_axes(path, leaf)``.

    Raises:
      ValueError: a prefix entry that is not in ``params``, or a callable returning something
        other than an int ``>= 0`` or ``None``.
    """
    treedef = jax.tree.structure(params, is_leaf=_is_none)
    flat, paths = treedef.flatten_up_to(params), leaf_paths(params, treedef)
    if stack_axes is None:
        return [0] * len(flat)
    if _is_stack_fn(stack_axes):
        out = []
        for path, leaf in zip(paths, flat, strict=True):
            k = None if leaf is None else stack_axes(path, leaf)
            out.append(0 if k is None else _check_count(k, f" (returned for '{path}')"))
        return out
    if not jax.tree.leaves(stack_axes, is_leaf=_is_none) or _is_count(stack_axes):
        return [_check_count(stack_axes, "")] * len(flat)
    table = _prefix_table(stack_axes)
    known = paths + _masked_out_paths(params)  # masked-out leaves are never validated
    for prefix, _ in table:
        if not any(_under(p, prefix) for p in known):
            raise ValueError(
                f"`stack_axes` has an entry at '{prefix}', which is no path of the params (its "
                f"structure must be a prefix of theirs; paths of the params: {paths[:6]}...)."
            )
    out = []
    for path in paths:
        hits = [(len(pre), k) for pre, k in table if _under(path, pre)]
        out.append(max(hits)[1] if hits else 0)
    return out


def _is_count(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


class LeafLayout(NamedTuple):
    """How one leaf is laid out: its stack axes and whether it is a weight matrix."""

    stack: int  # the number of leading layer axes
    matrix: bool  # the weight-matrix rule: per-layer rank >= 2, not a bias / scale / embedding
    excluded: bool = False  # named as a bias, a norm scale or an embedding


def _layout(names: tuple[str, ...], ndim: int, stack: int) -> LeafLayout:
    out = excluded(names)
    return LeafLayout(stack, ndim - stack >= 2 and not out, out)


def _names(path: tuple[Any, ...]) -> tuple[str, ...]:
    return tuple(
        key_name(k)
        for k in path
        if not (isinstance(k, jax.tree_util.GetAttrKey) and k.name in _PAYLOAD)
    )


def leaf_layouts(stack_axes: Any, params: Any) -> list[LeafLayout]:
    """The :class:`LeafLayout` of every leaf of ``params`` (``None`` leaves included), in
    flatten order: ``stack_axes`` resolved (:func:`stack_axes_of`) and the weight-matrix rule
    (per-layer rank ``>= 2`` and a name that is not a bias, a norm scale or an embedding, by
    :func:`optareg.masks.decay_mask`'s name rules, Equinox module classes included)."""
    stacks = stack_axes_of(stack_axes, params)
    owners = equinox_owners(params)
    flat = jax.tree_util.tree_flatten_with_path(params, is_leaf=_is_none)[0]
    return [
        LeafLayout(k, False, True) if x is None else _layout(named(_names(p), owners), x.ndim, k)
        for (p, x), k in zip(flat, stacks, strict=True)
    ]


_ACTIVE: contextvars.ContextVar[tuple[Any, dict[str, LeafLayout]]] = contextvars.ContextVar(
    "optareg_layouts"
)


@contextlib.contextmanager
def layouts_active(stack_axes: Any, params: Any):
    """Make the layouts of the whole ``params`` (by path) visible to per-leaf operators, which
    see one leaf (possibly inside ``optax.masked``) and read them with :func:`layout_of`."""
    paths = leaf_paths(params)
    table = dict(zip(paths, leaf_layouts(stack_axes, params), strict=True))
    token = _ACTIVE.set((stack_axes, table))
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def layout_of(path: str, leaf: Any) -> LeafLayout:
    """The layout of the leaf at ``path`` of the params being transformed (from
    :func:`layouts_active`; a leaf it does not know is resolved on its own, without a tree)."""
    stack_axes, table = _ACTIVE.get((None, {}))
    if path in table:
        return table[path]
    if _is_stack_fn(stack_axes):
        k = stack_axes(path, leaf)
        k = 0 if k is None else _check_count(k, f" (returned for '{path}')")
    else:
        k = _check_count(stack_axes, "") if _is_count(stack_axes) else 0
    return _layout(tuple(path.split("/")), jnp.ndim(leaf), k)


def with_layouts(tx: Any, stack_axes: Any, name: str, kind: str = "post_step") -> Any:
    """``tx`` with the layouts of the whole params active during ``init`` and ``update``
    (re-tagged ``kind`` / ``name`` for :func:`optareg.chain`)."""

    def init_fn(params):
        if _validation.is_params_placeholder(params):
            return tx.init(params)
        with layouts_active(stack_axes, params):
            return tx.init(params)

    def update_fn(updates, state, params=None, **extra_args):
        _validation.require_params(params, name)
        with layouts_active(stack_axes, params):
            return tx.update(updates, state, params, **extra_args)

    return _chain.tag(optax.GradientTransformationExtraArgs(init_fn, update_fn), kind, name)


def kept_axes(
    name: str, layout: str, axis: int | None, x: Any, path: str, stack: int
) -> tuple[int, ...]:
    """The axes that index one unit / group of a leaf: its ``stack`` leading layer axes and its
    unit axis (``layout`` or ``axis``, counted within the per-layer array; negative from the
    end); every axis when the per-layer array has rank < 2 (each entry is its own unit).

    Raises:
      ValueError: more stack axes than the leaf has, or an ``axis`` the per-layer array lacks.
    """
    nd = x.ndim - stack
    if nd < 0:
        raise ValueError(
            f"{name}: `stack_axes`={stack} leading layer axes do not exist on the selected leaf "
            f"'{path}' of shape {x.shape}; mask that leaf out or give it fewer stack axes."
        )
    if nd < 2:
        return tuple(range(x.ndim))
    if axis is None:
        unit = unit_axis(layout, path, nd)
    elif not -nd <= axis < nd:
        raise ValueError(
            f"{name}: `axis`={axis} does not exist on the selected leaf '{path}' of shape "
            f"{x.shape} (per-layer shape {x.shape[stack:]} after {stack} stack axes); mask that "
            "leaf out or choose an axis valid for every selected leaf."
        )
    else:
        unit = axis % nd
    return (*range(stack), stack + unit)
