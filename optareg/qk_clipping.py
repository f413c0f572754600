r"""QK-Clip (Kimi K2): rescale the query and key weights of heads whose attention logits grew
past a threshold (post-step, fed the step's per-head maximum logits).

After the optimizer step, every attention head ``h`` whose largest pre-softmax logit of the
step, ``S_max^h = max_{i,j} q_iᵀk_j`` (scale ``1/√d`` included, as the model computes it),
exceeds ``τ`` gets its query weights multiplied by ``γ_h^α`` and its key weights by
``γ_h^{1−α}``, ``γ_h = τ / S_max^h``, so that the logits of those weights are multiplied by
exactly ``γ_h`` and their maximum becomes ``τ``; the other heads are not touched. The logits
are measured by the model in its forward pass (they cost nothing there) and handed to
``update`` as ``max_logits=`` (``optax.chain`` forwards the keyword, as it does ``grad_fn``).
Helpers to get them out of Flax: :func:`max_logit_attention_fn`, :func:`collect_max_logits`,
:func:`attention_max_logits`.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import re
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optareg import _chain, _counters, _masking, _paths, _poststep, _validation

__all__ = [
    "QKClipState",
    "attention_max_logits",
    "collect_max_logits",
    "max_logit_attention_fn",
    "qk_clip",
]

_NAME = "qk_clip"
# Path components (whole, case-insensitive) that name the query, key and fused projections of
# the common attention modules: Flax linen / NNX MultiHeadAttention (query, key), Equinox
# (query_proj, key_proj), Hugging Face / Llama (q_proj, k_proj, wq, wk), nanoGPT (c_attn),
# torch.nn.MultiheadAttention (in_proj_weight / in_proj_bias), timm (qkv).
QUERY = r"query|query_proj|q_proj|q|wq|to_q"
KEY = r"key|key_proj|k_proj|k|wk|to_k"
QKV = r"qkv|c_attn|qkv_proj|wqkv|in_proj|in_proj_weight|in_proj_bias|to_qkv"


class QKClipState(NamedTuple):
    """State of :func:`qk_clip`.

    Attributes:
      count: int32 step counter of shape ``()``; a ``threshold`` schedule is evaluated on it.
      stats: ``"qk_clip/max_logit"`` (the largest logit handed in at the last metrics step, over
        all heads) and ``"qk_clip/heads_clipped"`` (how many heads were rescaled), float32.
      inner_state: the state of the shared post-step transform (``optax.MaskedState`` with a
        mask).
    """

    count: jax.Array  # int32, shape ()
    stats: dict[str, jax.Array]
    inner_state: Any

    def optareg_metrics(self) -> dict[str, jax.Array]:
        return dict(self.stats)


class _Head(NamedTuple):
    """How one selected leaf maps to attention heads."""

    role: str  # "q", "k" or "qkv"
    attention: str  # the attention module's path: the logits key
    stack: int  # leading layer axes
    head_axis: int  # absolute axis of the heads after the split
    split: tuple[int, tuple[int, ...]] | None  # (axis, new sizes) to reshape, or None


# --------------------------------------------------------------------------------------------
# which leaves, and how their heads are laid out
# --------------------------------------------------------------------------------------------


def _compile(pattern: str | None, what: str) -> re.Pattern | None:
    if pattern is None:
        return None
    if not isinstance(pattern, str):
        raise TypeError(f"`{what}` must be a regular expression (str) or None; got {pattern!r}.")
    try:
        return re.compile(rf"^(?:{pattern})$", re.IGNORECASE)
    except re.error as e:
        raise ValueError(f"`{what}`: not a valid regular expression ({e}): {pattern!r}.") from e


def _role(names: list[str], patterns: dict[str, re.Pattern | None]) -> tuple[str, int] | None:
    """The role and the index of the first path component that a pattern matches."""
    for i, comp in enumerate(names):
        for role in ("qkv", "q", "k"):
            pat = patterns[role]
            if pat is not None and pat.match(comp):
                return role, i
    return None


def _head_layout(shape, path, role, stack, layout, heads: int) -> tuple[int, Any]:
    """``(head_axis, split)`` of one leaf (absolute axes), or a ``ValueError``.

    An explicit head axis where the per-layer array has one of size ``heads`` (Flax: kernel
    ``(in, [3,] H, D)``, bias ``([3,] H, D)``); otherwise the output axis (last for ``"flax"``
    and for biases, first for a ``"torch"`` weight) split as ``([3,] H, D)``.
    """
    nd = len(shape) - stack
    is_bias = path.rsplit("/", 1)[-1] in ("bias", "b", "in_proj_bias")
    kind = _paths.leaf_layout(layout, path) or "flax"
    parts = 3 if role == "qkv" else 1
    need = (2 if is_bias else 3) + (role == "qkv")
    explicit = (kind == "flax" or is_bias) and nd >= need and shape[-2] == heads
    if explicit and (role != "qkv" or shape[-3] == 3):
        return len(shape) - 2, None
    unit = stack if (kind == "torch" and not is_bias) else len(shape) - 1
    size = shape[unit]
    if nd < 1 or size % (parts * heads):
        raise ValueError(
            f"qk_clip: cannot find {heads} heads in '{path}' (shape {tuple(shape)}, {stack} "
            f"stack axes, layout {kind!r}): its output axis (axis {unit}, size {size}) is not "
            f"{'3 × ' if parts == 3 else ''}{heads} heads of equal size, and it has no head axis "
            "of that size ((in, H, D) as Flax's MultiHeadAttention stores it). The number of "
            "heads is the last axis of the logits handed in as max_logits."
        )
    return unit + 1, (unit, (parts, heads, size // (parts * heads)))


def _roles(params, patterns, stack_axes) -> dict[str, tuple[str, str, int] | None]:
    """``(role, attention path, stack axes)`` of every leaf of ``params`` by path."""
    treedef = jax.tree.structure(params, is_leaf=_is_none)
    flat, paths = treedef.flatten_up_to(params), _paths.leaf_paths(params, treedef)
    stacks = _paths.stack_axes_of(stack_axes, params)
    out: dict[str, tuple[str, str, int] | None] = {}
    for p, path, k in zip(flat, paths, stacks, strict=True):
        names = path.split("/")
        found = None if p is None else _role(names, patterns)
        if found is not None and len(jnp.shape(p)) < k + 1:
            raise ValueError(
                f"qk_clip: `stack_axes`={k} leading layer axes do not exist on '{path}' of "
                f"shape {tuple(jnp.shape(p))}."
            )
        out[path] = None if found is None else (found[0], "/".join(names[: found[1]]), k)
    return out


def _heads(params, roles, logits, layout, num_heads) -> dict[str, _Head | None]:
    """The :class:`_Head` of every selected leaf, its number of heads from its logits."""
    treedef = jax.tree.structure(params, is_leaf=_is_none)
    flat, paths = treedef.flatten_up_to(params), _paths.leaf_paths(params, treedef)
    out: dict[str, _Head | None] = {}
    for p, path in zip(flat, paths, strict=True):
        if roles.get(path) is None:
            out[path] = None
            continue
        role, att, k = roles[path]
        heads = logits[att].shape[-1] if logits[att].ndim else 1
        if isinstance(num_heads, int) and heads != num_heads:
            raise ValueError(
                f"qk_clip: `num_heads`={num_heads} but the logits for the attention module at "
                f"'{att}' have {heads} heads (shape {tuple(logits[att].shape)})."
            )
        head_axis, split = _head_layout(tuple(jnp.shape(p)), path, role, k, layout, heads)
        out[path] = _Head(role, att, k, head_axis, split)
    return out


def _is_none(x: Any) -> bool:
    return x is None


# --------------------------------------------------------------------------------------------
# the logits handed in, and the per-head factors
# --------------------------------------------------------------------------------------------


def _match_logits(max_logits: Any, attentions: set[str]) -> dict[str, jax.Array]:
    """``{attention path: per-head logits}``: exact keys, or keys equal up to a leading path
    (``"attn"`` for ``"params/attn"``); a single array serves a single attention module."""
    if not isinstance(max_logits, Mapping):
        if len(attentions) == 1:
            return {next(iter(attentions)): jnp.asarray(max_logits)}
        raise ValueError(
            "qk_clip: `max_logits` must be a dict {attention path: per-head max logits} when "
            f"the params hold several attention modules ({sorted(attentions)})."
        )
    out = {}
    for att in attentions:
        hits = [k for k in max_logits if k == att]
        if not hits:
            hits = [k for k in max_logits if att.endswith("/" + k) or k.endswith("/" + att)]
        if len(hits) != 1:
            raise ValueError(
                f"qk_clip: `max_logits` has {'no' if not hits else 'several'} entr"
                f"{'y' if not hits else 'ies'} for the attention module at '{att}' (keys: "
                f"{sorted(max_logits)}). Key it by the module's path, e.g. "
                "optareg.collect_max_logits(intermediates)."
            )
        out[att] = jnp.asarray(max_logits[hits[0]])
    return out


def _clip_factor(logits: jax.Array, threshold: jax.Array) -> jax.Array:
    """``γ = τ/S`` where ``S > τ``, else exactly 1 (also for a non-finite ``S``)."""
    s = logits.astype(threshold.dtype)
    over = jnp.isfinite(s) & (s > threshold)
    return jnp.where(over, threshold / jnp.where(over, s, 1.0), 1.0)


def _factor(head: _Head, gamma: jax.Array, alpha: Any, shape: tuple[int, ...]) -> jax.Array:
    """Per-head factors for one leaf, broadcastable to its (split) shape (exactly 1 where
    ``γ = 1``, whatever ``α``)."""
    alpha = jnp.asarray(alpha, gamma.dtype)
    gq, gk = gamma**alpha, gamma ** (1.0 - alpha)
    if head.role == "qkv":
        f = jnp.stack([gq, gk, jnp.ones_like(gq)], axis=-2)  # stack + (3, H)
        axes = (head.head_axis - 1, head.head_axis)
    else:
        f = gq if head.role == "q" else gk
        axes = (head.head_axis,)
    dims = list(range(head.stack)) + list(axes)
    full = [1] * len(shape)
    for d, n in zip(dims, f.shape, strict=True):
        full[d] = n
    return f.reshape(full)


def _leaf_update(leaf, head: _Head, gamma: jax.Array, alpha: float) -> jax.Array:
    """The update ``u'``: ``γ-scaled (θ + u) − θ`` on the clipped heads, ``u`` itself on the
    others (so that untouched heads land bit-identically on ``θ + u``)."""
    x, theta, u = leaf.x, leaf.theta, leaf.u
    shape = x.shape
    if head.split is not None:
        axis, sizes = head.split
        shape = shape[:axis] + sizes + shape[axis + 1 :]
    want_h = shape[head.head_axis]
    if gamma.shape[-1] != want_h or gamma.shape[:-1] != shape[: head.stack]:
        raise ValueError(
            f"qk_clip: the logits for the attention module at '{head.attention}' have shape "
            f"{tuple(gamma.shape)}; '{leaf.path}' needs {shape[: head.stack] + (want_h,)} "
            "(stack axes, then one value per head)."
        )
    f = _factor(head, gamma.astype(x.dtype), alpha, shape)
    y = (x.reshape(shape) * f).reshape(x.shape)
    touched = jnp.broadcast_to(f != 1, shape).reshape(x.shape)
    return jnp.where(touched, y - theta, u.astype(x.dtype))


# --------------------------------------------------------------------------------------------
# the transform
# --------------------------------------------------------------------------------------------

_ACTIVE: contextvars.ContextVar[tuple[dict, dict]] = contextvars.ContextVar("optareg_qk_clip")


@contextlib.contextmanager
def _active(heads: dict, logits: dict):
    token = _ACTIVE.set((heads, logits))
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def _missing_logits() -> ValueError:
    return ValueError(
        "qk_clip: `max_logits` is missing. Pass the per-head maximum attention logits of this "
        "step: `tx.update(grads, state, params, max_logits={'<attention path>': s})`, with "
        "`s` of shape (num_heads,) (or (layers, num_heads) for stacked layers); "
        "optareg.max_logit_attention_fn and optareg.collect_max_logits get them out of Flax."
    )


def qk_clip(
    threshold: _validation.ScalarOrSchedule = 100.0,
    *,
    alpha: float = 0.5,
    query: str | None = QUERY,
    key: str | None = KEY,
    qkv: str | None = QKV,
    num_heads: int | None = None,
    layout: str = "auto",
    stack_axes: Any = None,
    mask: _validation.MaskOrFn = None,
    metrics_every: int = 1,
) -> optax.GradientTransformationExtraArgs:
    r"""QK-Clip: keep every attention head's maximum logit at or below ``τ`` (post-step).

    Kimi K2's QK-Clip (Kimi Team 2025, §2.1, MuonClip, Eq. 3–4 and Algorithm 1): for each
    head ``h`` with ``S_max^h > τ`` in the forward pass of this step, with
    ``γ_h = τ / S_max^h``,

    .. math::

        W_q^h \leftarrow \gamma_h^{\alpha}\, W_q^h,\qquad
        W_k^h \leftarrow \gamma_h^{1-\alpha}\, W_k^h,

    applied to the parameters after the step (``θ + u``); the logits ``q_iᵀk_j`` of the
    rescaled weights are multiplied by exactly ``γ_h``. Heads with ``S_max^h ≤ τ`` (or a
    non-finite ``S``) are not touched: their update is returned as it came, bit for bit.
    ``α = 0.5`` is the paper's choice (query and key share the scale). Query / key biases
    under the same module are scaled with their kernels, so ``q`` and ``k`` themselves scale.
    The paper's MLA specifics (a shared rotary key that is not scaled, its rotary query scaled
    by ``γ``) do not arise for the separate or fused projections handled here. For grouped
    query attention (fewer key heads) this version does not apply; use one key per head.

    Where the weights are found (by path; each pattern is a regular expression matched against
    whole path components, case-insensitive; the attention module's path is the part of the
    leaf's path before the matched component):

    * ``query`` / ``key``: separate projections. Flax linen / NNX ``MultiHeadAttention`` store
      ``query/kernel`` as ``(in, H, D)`` and ``query/bias`` as ``(H, D)``: the heads are an
      axis (``num_heads=None``). With ``num_heads`` the output axis (last for ``"flax"``, first
      for ``"torch"`` weights such as Equinox's ``query_proj.weight`` ``(H·D, in)``; always the
      last for a bias) is split as ``(H, D)``, heads outermost.
    * ``qkv``: one fused projection whose output axis is ``(3, H, D)``: q, k, v blocks, heads
      contiguous within each (nanoGPT ``c_attn``, timm ``qkv``, ``torch.nn.MultiheadAttention``
      ``in_proj_weight``); ``num_heads`` is needed unless the kernel is ``(in, 3, H, D)``.

    The logits: ``update(..., max_logits=...)`` with a dict ``{attention path: S}``, ``S`` of
    shape ``(H,)`` (``stack_shape + (H,)`` for stacked layers) holding the maximum over the
    batch and all query/key positions of the scaled pre-softmax logits of each head (a key
    may also be the path without a leading prefix, ``"attn"`` for ``"params/attn"``; a single
    array serves a model with one attention module). Flax: build the attention module with
    ``attention_fn=optareg.max_logit_attention_fn`` and call it with ``sow_weights=True``
    (linen: pass ``mutable=["intermediates"]`` to ``apply``; NNX: read ``nnx.state(model,
    nnx.Intermediate)``), then ``optareg.collect_max_logits(intermediates)``; elsewhere,
    :func:`attention_max_logits` of the projected ``q`` and ``k``.

    Args:
      threshold: ``τ > 0``, a constant or a schedule of the step count (Kimi K2: 100).
      alpha: the balance exponent ``α ∈ [0, 1]`` (paper: 0.5).
      query: regex for the query projection's path component (``None``: none).
      key: regex for the key projection's path component.
      qkv: regex for a fused q/k/v projection's path component.
      num_heads: the number of heads, to split a flat output axis (``None``: the heads are an
        axis of their own, Flax ``MultiHeadAttention``).
      layout: ``"auto"``, ``"flax"`` or ``"torch"``: which axis of a kernel is its output
        axis (``"auto"``: ``"torch"`` for a leaf named ``weight``, else ``"flax"``).
      stack_axes: leading axes that index a stack of layers (``None``, an ``int``, a pytree
        prefix or a callable ``(path, leaf) -> int``, see :mod:`optareg.spectral`); the logits
        then carry the same leading axes.
      mask: optax mask; masked-out leaves pass through.
      metrics_every: record the metrics every this many steps (``>= 1``).

    Returns:
      An ``optax.GradientTransformationExtraArgs`` (post-step: put it last, after the
      optimizer) whose ``update`` takes ``max_logits=``; its state is :class:`QKClipState`;
      ``optareg.metrics`` reads ``"qk_clip/max_logit"`` and ``"qk_clip/heads_clipped"``.

    Raises:
      ValueError: at construction for a bad argument; at ``init`` for a selected leaf whose
        heads cannot be told; at ``update`` when ``max_logits`` is missing or does not match.

    Example:
      >>> import jax, jax.numpy as jnp, optax, optareg
      >>> params = {"attn": {"query": {"kernel": jnp.ones((4, 2, 3))},
      ...                    "key": {"kernel": jnp.ones((4, 2, 3))}}}
      >>> tx = optareg.chain(optax.sgd(0.1), optareg.qk_clip(50.0))
      >>> state = tx.init(params)
      >>> zeros = jax.tree.map(jnp.zeros_like, params)
      >>> updates, state = tx.update(zeros, state, params,
      ...                            max_logits={"attn": jnp.array([200.0, 10.0])})
      >>> new = optax.apply_updates(params, updates)
      >>> new["attn"]["query"]["kernel"][0, :, 0].tolist()  # head 0 by √(50/200), head 1 kept
      [0.5, 1.0]

    References:
      Kimi Team, "Kimi K2: Open Agentic Intelligence", 2025 (arXiv:2507.20534), §2.1.
    """
    _validation.check_scalar("threshold", threshold, low=0.0, low_inclusive=False)
    _validation.check_scalar("alpha", alpha, low=0.0, high=1.0)
    patterns = {
        "q": _compile(query, "query"),
        "k": _compile(key, "key"),
        "qkv": _compile(qkv, "qkv"),
    }
    if num_heads is not None:
        num_heads = _validation.check_int_or_traced("num_heads", num_heads, low=1)
    _paths.check_layout(layout)
    _paths.check_stack_axes(stack_axes)
    _masking.check_mask("mask", mask)
    every = _validation.check_metrics_every(metrics_every)

    def operator(leaf, threshold):
        heads, logits = _ACTIVE.get()
        head = heads[leaf.path]
        tau = jnp.asarray(threshold, leaf.x.dtype)
        return _leaf_update(leaf, head, _clip_factor(logits[head.attention], tau), alpha)

    inner = _poststep.transformation(
        operator,
        name=_NAME,
        hyperparams={"threshold": threshold},
        mask=mask,
        select=lambda p, path: _ACTIVE.get()[0].get(path) is not None,
        returns="update",
    )

    def init_fn(params):
        if not _validation.is_params_placeholder(params):
            _roles(params, patterns, stack_axes)  # stack axes checked against the leaves
        inner_state = inner.init(params)
        stats = {f"{_NAME}/max_logit": jnp.zeros([], jnp.float32)}
        stats[f"{_NAME}/heads_clipped"] = jnp.zeros([], jnp.float32)
        return QKClipState(_counters.init_count(), stats, inner_state)

    def update_fn(updates, state, params=None, max_logits=None, **extra_args):
        _validation.require_params(params, _NAME)
        if max_logits is None:
            raise _missing_logits()
        roles = _roles(params, patterns, stack_axes)
        attentions = {r[1] for r in roles.values() if r is not None}
        logits = _match_logits(max_logits, attentions)
        heads = _heads(params, roles, logits, layout, num_heads)
        with _active(heads, logits):
            updates, inner_state = inner.update(updates, state.inner_state, params, **extra_args)
        tau = jnp.asarray(_counters.evaluate(threshold, state.count), jnp.float32)

        def compute():
            flat = [jnp.asarray(v, jnp.float32).reshape(-1) for v in logits.values()]
            s = jnp.concatenate(flat) if flat else jnp.zeros([0], jnp.float32)
            over = jnp.isfinite(s) & (s > tau)
            return {
                f"{_NAME}/max_logit": jnp.max(s, initial=-jnp.inf) if flat else jnp.zeros([]),
                f"{_NAME}/heads_clipped": jnp.sum(over).astype(jnp.float32),
            }

        stats = _counters.on_metrics_step(every, state.count, compute, state.stats)
        return updates, QKClipState(_counters.increment(state.count), stats, inner_state)

    tx = optax.GradientTransformationExtraArgs(init_fn, update_fn)
    return _chain.tag(tx, "post_step", _NAME)


# --------------------------------------------------------------------------------------------
# getting the logits out of a model
# --------------------------------------------------------------------------------------------


def attention_max_logits(
    query: jax.Array, key: jax.Array, *, mask: jax.Array | None = None, scale: float | None = None
) -> jax.Array:
    r"""Per-head maximum attention logit ``max_{b,i,j} scale·q_{b,i,h}ᵀk_{b,j,h}``.

    Args:
      query: ``(batch..., q_length, num_heads, head_dim)`` (Flax's layout).
      key: ``(batch..., kv_length, num_heads, head_dim)``.
      mask: optional boolean, broadcastable to ``(batch..., num_heads, q_length, kv_length)``;
        ``False`` entries are left out of the maximum.
      scale: the logit scale (default ``1/√head_dim``, as Flax's ``dot_product_attention``).

    Returns:
      A float32 array of shape ``(num_heads,)``, under ``jax.lax.stop_gradient``.

    Example:
      >>> import jax.numpy as jnp, optareg
      >>> q = jnp.ones((1, 2, 2, 4)); k = 2 * jnp.ones((1, 3, 2, 4))
      >>> optareg.attention_max_logits(q, k).tolist()  # 4·2/√4
      [4.0, 4.0]
    """
    q = jax.lax.stop_gradient(jnp.asarray(query, jnp.float32))
    k = jax.lax.stop_gradient(jnp.asarray(key, jnp.float32))
    if q.ndim < 3 or k.ndim != q.ndim or q.shape[-2:] != k.shape[-2:]:
        raise ValueError(
            "attention_max_logits: `query` and `key` must be [..., length, heads, head_dim] "
            f"arrays with the same heads and head_dim; got {q.shape} and {k.shape}."
        )
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    else:
        _validation.check_scalar("scale", scale, low=0.0, low_inclusive=False)
    logits = jnp.einsum("...qhd,...khd->...hqk", q, k) * scale
    if mask is not None:
        logits = jnp.where(mask, logits, -jnp.inf)
    axes = tuple(a for a in range(logits.ndim) if a != logits.ndim - 3)
    return jnp.max(logits, axis=axes)


def max_logit_attention_fn(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    *args: Any,
    module: Any = None,
    **kwargs: Any,
) -> jax.Array:
    """A drop-in ``attention_fn`` for Flax ``MultiHeadDotProductAttention`` (linen) and
    ``MultiHeadAttention`` (NNX) that also records the per-head maximum logit.

    Build the layer with ``attention_fn=optareg.max_logit_attention_fn`` and call it with
    ``sow_weights=True`` (the flag makes Flax hand the module in); each call sows
    ``(num_heads,)`` float32 maximum logits (:func:`attention_max_logits`, the layer's mask
    and ``is_causal`` honoured) as
    ``"max_logits"``: linen into the ``"intermediates"`` collection (``apply(...,
    mutable=["intermediates"])``), NNX as an ``nnx.Intermediate``. The attention itself is
    Flax's ``dot_product_attention`` (the attention weights are not sown).
    :func:`collect_max_logits` turns the collection into ``qk_clip``'s ``max_logits``.

    Example:
      >>> import jax, jax.numpy as jnp, flax.linen as nn, optareg
      >>> layer = nn.MultiHeadDotProductAttention(
      ...     num_heads=2, qkv_features=8, attention_fn=optareg.max_logit_attention_fn)
      >>> x = jnp.ones((1, 5, 8))
      >>> variables = layer.init(jax.random.PRNGKey(0), x)
      >>> _, inter = layer.apply(variables, x, sow_weights=True, mutable=["intermediates"])
      >>> optareg.collect_max_logits(inter)[""].shape
      (2,)
    """
    mask = kwargs.get("mask")
    causal = kwargs.get("is_causal", False)
    if causal:
        t, s = query.shape[-3], key.shape[-3]
        tri = jnp.tril(jnp.ones((t, s), bool))
        mask = tri if mask is None else jnp.logical_and(mask, tri)
    s_max = attention_max_logits(query, key, mask=mask)
    nnx = _flax_nnx()
    if nnx is not None and isinstance(module, nnx.Module):
        module.sow(nnx.Intermediate, "max_logits", s_max)
        return nnx.dot_product_attention(query, key, value, *args, **kwargs)
    from flax import linen

    if module is not None:
        module.sow("intermediates", "max_logits", s_max)
    kwargs.pop("is_causal", None)
    return linen.dot_product_attention(query, key, value, *args, **kwargs)


def _flax_nnx():
    try:
        from flax import nnx
    except ImportError:  # pragma: no cover - flax without nnx
        return None
    return nnx


def collect_max_logits(intermediates: Any) -> dict[str, jax.Array]:
    """``{attention path: per-head max logits}`` from the values sown by
    :func:`max_logit_attention_fn`, ready for ``qk_clip``'s ``max_logits``.

    Accepts linen's ``{"intermediates": ...}`` (or its inner dict) and an NNX
    ``nnx.state(model, nnx.Intermediate)``; the path of each entry is the attention module's
    (the ``intermediates`` prefix, the ``max_logits`` name and the tuple index dropped). A
    module called several times in one step (its tuple holds several arrays) gives their
    elementwise maximum.
    """
    out: dict[str, list] = {}
    tree = intermediates
    if isinstance(tree, Mapping) and set(tree) == {"intermediates"}:
        tree = tree["intermediates"]
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    for path, value in flat:
        names = _paths.path_str(path).split("/")
        if "max_logits" not in names:
            continue
        prefix = "/".join(names[: names.index("max_logits")])
        out.setdefault(prefix, []).append(jnp.asarray(value))
    return {k: _elementwise_max(v) for k, v in out.items()}


def _elementwise_max(values: list) -> jax.Array:
    """The elementwise maximum of a list of arrays."""
    out = values[0]
    for v in values[1:]:
        out = jnp.maximum(out, v)
    return out
