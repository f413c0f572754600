"""Tree paths as strings, and which axis of a leaf indexes its units (the ``layout`` rules).

One path-to-string function for masks, metric keys and matrix plans, so that
``optareg.masks.path_names`` and every ``"<name>/.../<path>"`` metric key agree.
"""

from __future__ import annotations

import sys
from typing import Any

import jax

__all__ = [
    "LAYOUTS",
    "check_layout",
    "key_name",
    "leaf_paths",
    "nnx_variable_types",
    "path_str",
    "unit_axis",
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
