"""Sharding: optareg's operators on explicit-sharding meshes, and shardings for optimizer state.

Two meshes exist in JAX ≥ 0.7. On an *Auto* mesh (``jax.sharding.Mesh(devices, names)``) the
compiler propagates shardings through every operation. On an *Explicit* mesh (the default of
``jax.make_mesh``, used under ``jax.set_mesh``) an array's sharding is part of its type and an
operation whose output layout is ambiguous (a contraction over a sharded axis, a reshape that
merges a sharded axis, an SVD of a sharded matrix) is a ``ShardingTypeError``.

optareg's operators are written once, for one device. On explicit-sharded inputs they run
through one of two helpers, which give the same numbers as on one device and return outputs
with the inputs' shardings:

* :func:`run_local`: the explicit mesh axes are treated as Auto inside the operator
  (``jax.sharding.auto_axes``), so the compiler keeps what it can local (elementwise ops, norms
  over an unsharded axis, matrix-vector products with an all-reduce: power iteration) exactly as
  on an Auto mesh, and the outputs are given their shardings back;
* :func:`run_gathered`: for operators that need the whole matrix (SVD, ``eigh``): the inputs
  are resharded to replicated (``jax.sharding.reshard``: one explicit all-gather), the operator
  runs on every device, and the outputs are resharded to their shardings (a local slice).

On an Auto mesh, on one device and outside ``jit`` with unsharded arrays both call the operator
directly. :func:`state_shardings` gives every leaf of an optimizer state a sharding.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import jax
import optax
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

__all__ = [
    "explicit_ready",
    "explicit_spec",
    "match_sharding",
    "run_gathered",
    "run_local",
    "state_shardings",
]


def _spec_axes(spec: P) -> list[str]:
    names: list[str] = []
    for entry in spec:
        if entry is None:
            continue
        names.extend(entry if isinstance(entry, tuple) else (entry,))
    return names


def explicit_spec(x: Any) -> P | None:
    """The ``PartitionSpec`` of ``x`` when an explicit mesh axis shards it, else ``None``.

    ``None`` for non-arrays, arrays on one device, replicated arrays and arrays on Auto meshes
    (where the compiler places them and no operator needs help).
    """
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        return None
    try:
        sharding = jax.typeof(x).sharding
    except (TypeError, AttributeError):  # a numpy array or ShapeDtypeStruct without sharding
        return None
    if not isinstance(sharding, NamedSharding):
        return None
    types = dict(zip(sharding.mesh.axis_names, sharding.mesh.axis_types, strict=True))
    used = _spec_axes(sharding.spec)
    return sharding.spec if any(types.get(a) == AxisType.Explicit for a in used) else None


def _any_explicit(tree: Any) -> bool:
    return any(explicit_spec(x) is not None for x in jax.tree.leaves(tree))


def _explicit_mesh(tree: Any) -> Any:
    """The (abstract) mesh of the first explicit-sharded leaf of ``tree``, or ``None``."""
    for x in jax.tree.leaves(tree):
        if explicit_spec(x) is not None:
            return jax.typeof(x).sharding.mesh
    return None


def _mesh_context(mesh: Any) -> Any:
    """``mesh`` as the context mesh (``auto_axes`` / ``reshard`` read it) unless one is set:
    arrays carry their explicit shardings outside ``jax.set_mesh`` too."""
    if jax.sharding.get_abstract_mesh().empty:
        return jax.sharding.use_abstract_mesh(mesh)
    return contextlib.nullcontext()


def _spec_or_replicated(x: Any) -> P:
    spec = explicit_spec(x)
    return P() if spec is None else spec


def _out_specs(out_shapes: Any, like: Any) -> Any:
    """A spec per output leaf: the spec of the ``like`` leaf at the same place when its shape
    matches (``like`` is a prefix-compatible tree, or ``None``), else replicated."""
    if like is None:
        return jax.tree.map(lambda _: P(), out_shapes)

    def one(shape, ref):
        if ref is None or getattr(ref, "shape", None) != shape.shape:
            return P()
        return _spec_or_replicated(ref)

    try:
        return jax.tree.map(one, out_shapes, like)
    except (ValueError, TypeError):  # structures differ: the first ``like`` leaf of that shape
        refs = [r for r in jax.tree.leaves(like) if hasattr(r, "shape")]

        def by_shape(shape):
            ref = next((r for r in refs if r.shape == shape.shape), None)
            return P() if ref is None else _spec_or_replicated(ref)

        return jax.tree.map(by_shape, out_shapes)


def run_local(fn: Callable[..., Any], *args: Any, like: Any = None) -> Any:
    """``fn(*args)``, with explicit mesh axes treated as Auto inside ``fn``.

    Args:
      fn: a function of arrays (pytrees), written for one device.
      *args: its arguments.
      like: a tree shaped like ``fn``'s output whose leaves' explicit shardings the outputs
        take where the shapes agree (with another structure: each output takes the sharding of
        the first ``like`` leaf of its shape); the other outputs are replicated. ``None``:
        every output replicated.

    Returns:
      ``fn(*args)``: the same numbers as on one device.
    """
    mesh = _explicit_mesh(args)
    if mesh is None:
        return fn(*args)
    with _mesh_context(mesh):
        shapes = jax.eval_shape(jax.sharding.auto_axes(fn, out_sharding=P()), *args)
        specs = _out_specs(shapes, like)
        return jax.sharding.auto_axes(fn, out_sharding=specs)(*args)


def run_gathered(fn: Callable[..., Any], *args: Any, like: Any = None) -> Any:
    """``fn(*args)`` on replicated copies of explicit-sharded arguments, outputs resharded.

    For operators that need whole matrices (SVD, ``eigh``): one explicit all-gather per
    sharded input, the operator on every device, and a local slice per output. Arguments as
    in :func:`run_local`.
    """
    mesh = _explicit_mesh(args)
    if mesh is None:
        return fn(*args)
    with _mesh_context(mesh):
        return _gathered(fn, args, like)


def _gathered(fn: Callable[..., Any], args: tuple, like: Any) -> Any:
    full = jax.tree.map(
        lambda x: jax.sharding.reshard(x, P()) if explicit_spec(x) is not None else x, args
    )
    out = fn(*full)
    specs = _out_specs(jax.eval_shape(lambda: out), like)
    return jax.tree.map(lambda y, s: jax.sharding.reshard(y, s) if _spec_axes(s) else y, out, specs)


def match_sharding(y: jax.Array, x: jax.Array) -> jax.Array:
    """``y`` resharded to ``x``'s explicit sharding where they differ (e.g. a loop carry that
    must keep its type: a Hessian-vector product of sharded parameters applied to a replicated
    warm start); ``y`` itself when neither is explicit-sharded."""
    sy, sx = explicit_spec(y), explicit_spec(x)
    if sy is None and sx is None:
        return y
    target = P() if sx is None else sx
    if sy == target:
        return y
    with _mesh_context(_explicit_mesh((y, x))):
        return jax.sharding.reshard(y, target)


def explicit_ready(tx: Any) -> Any:
    """``tx`` whose ``init`` and ``update`` run through :func:`run_local` on explicit-sharded
    inputs (the same ``optax`` class; a pass-through everywhere else).

    ``update``'s new updates take the incoming updates' shardings and the new state the
    incoming state's; ``init``'s params-shaped state leaves take their parameter's sharding
    (by shape), the rest is replicated. Extra keyword arguments (``grad_fn``) are forwarded.
    """
    inner_init, inner_update = tx.init, tx.update

    def init_fn(params):
        return run_local(inner_init, params, like=params)

    def update_fn(updates, state, params=None, **extra_args):
        def step(u, s, p):
            return inner_update(u, s, p, **extra_args)

        return run_local(step, updates, state, params, like=(updates, state))

    return type(tx)(init_fn, update_fn)


# --------------------------------------------------------------------------------------------
# optimizer-state shardings
# --------------------------------------------------------------------------------------------


def _is_placeholder(x: Any) -> bool:
    return x is None or isinstance(x, optax.MaskedNode)


def _params_like(node: Any, treedef: Any) -> list[Any] | None:
    """``node``'s leaves at the params' leaf positions if it has the params' structure (leaves
    arrays or placeholders: ``None``, ``MaskedNode``), else ``None``."""
    try:
        leaves = treedef.flatten_up_to(node)
    except (ValueError, TypeError):
        return None
    if all(_is_placeholder(x) or hasattr(x, "shape") for x in leaves):
        return leaves
    return None


def _assign(node: Any, treedef: Any, params: list[Any], shard: list[Any], rep: Any) -> Any:
    if _is_placeholder(node):
        return node
    if hasattr(node, "shape"):  # a state leaf outside any params-structured subtree
        if treedef.num_leaves == 1 and treedef.num_nodes == 1 and node.shape == params[0].shape:
            return shard[0]  # params is a single array: match by shape
        return rep
    leaves = None if treedef.num_nodes == 1 else _params_like(node, treedef)
    if leaves is not None:
        out = [
            x if _is_placeholder(x) else (s if x.shape == p.shape else rep)
            for x, p, s in zip(leaves, params, shard, strict=True)
        ]
        return treedef.unflatten(out)
    children, node_def = jax.tree_util.tree_flatten(
        node, is_leaf=lambda x: x is not node or _is_placeholder(x)
    )
    if node_def.num_leaves == 1 and node_def.num_nodes == 1:  # an opaque leaf (not an array)
        return rep
    return node_def.unflatten([_assign(c, treedef, params, shard, rep) for c in children])


def state_shardings(tx: Any, params_or_shapes: Any, param_shardings: Any, mesh: Any) -> Any:
    """A sharding for every leaf of ``tx.init(params)``: for ``jax.jit(tx.init, out_shardings=)``.

    Every subtree of the state that has the parameters' tree structure (the moments of
    ``optax.adam``, a decay reference, power-iteration vectors, ``track(per_leaf=True)``'s
    metric trees...) is matched leaf by leaf: a leaf with its parameter's shape gets the
    parameter's sharding, any other leaf (a per-leaf scalar metric, a vector) is replicated.
    Every leaf outside such a subtree (step counters, scalar statistics) is replicated.
    ``None`` leaves (``low_precision_updates("kahan")``'s buffers of float32 leaves) and
    ``optax.MaskedNode`` stay as they are: the result has exactly the state's tree structure.

    Unlike ``optax.tree.map_params``, a scalar metric tree that looks like the parameters is not
    given the kernels' shardings, and ``None`` buffers need no special casing.

    Args:
      tx: any ``optax.GradientTransformation`` (an ``optax.chain`` of optax and optareg parts).
      params_or_shapes: the parameters, or their ``jax.ShapeDtypeStruct``\\ s
        (``jax.eval_shape`` output): only shapes and dtypes are used.
      param_shardings: a tree with the parameters' structure of ``jax.sharding.Sharding`` or
        ``PartitionSpec`` (read on ``mesh``) leaves.
      mesh: the ``jax.sharding.Mesh`` the replicated leaves live on.

    Returns:
      A tree with the structure of ``tx.init(params)`` whose leaves are shardings.

    Raises:
      ValueError: ``param_shardings`` does not have the parameters' tree structure.
      TypeError: a ``param_shardings`` leaf is not a sharding or ``PartitionSpec``, or ``mesh``
        is not a mesh.

    Example:
      >>> import jax, jax.numpy as jnp, optax, optareg
      >>> from jax.sharding import NamedSharding, PartitionSpec as P
      >>> mesh = jax.make_mesh((1,), ("model",))
      >>> params = {"w": jnp.ones((4, 2)), "b": jnp.zeros(2)}
      >>> shard = {"w": NamedSharding(mesh, P(None, "model")), "b": NamedSharding(mesh, P())}
      >>> tx = optax.chain(optax.adam(1e-3), optareg.track(per_leaf=True))
      >>> s = optareg.state_shardings(tx, params, shard, mesh)
      >>> s[0][0].mu["w"].spec, s[0][0].count.spec
      (P(None, 'model'), P())
      >>> state = jax.jit(tx.init, out_shardings=s)(params)
    """
    if not isinstance(mesh, jax.sharding.Mesh | jax.sharding.AbstractMesh):
        raise TypeError(f"state_shardings: `mesh` must be a jax.sharding.Mesh; got {mesh!r}.")
    shapes = jax.eval_shape(tx.init, params_or_shapes)
    p_leaves, treedef = jax.tree.flatten(params_or_shapes)
    try:
        s_leaves = treedef.flatten_up_to(param_shardings)
    except (ValueError, TypeError) as err:
        raise ValueError(
            "state_shardings: `param_shardings` must have the parameters' tree structure "
            f"({treedef}); {err}"
        ) from None

    def as_sharding(s):
        if isinstance(s, P):
            return NamedSharding(mesh, s)
        if isinstance(s, jax.sharding.Sharding):
            return s
        raise TypeError(
            "state_shardings: every `param_shardings` leaf must be a jax.sharding.Sharding or "
            f"a PartitionSpec; got {s!r}."
        )

    shard = [as_sharding(s) for s in s_leaves]
    p_shapes = [jax.ShapeDtypeStruct(p.shape, p.dtype) for p in p_leaves]
    return _assign(shapes, treedef, p_shapes, shard, NamedSharding(mesh, P()))
