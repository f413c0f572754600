"""Where each optareg transform goes in a chain, and :func:`chain`, which checks it.

Every optareg factory tags the transform it returns with its *kind* (see :func:`tag`):

* ``"extra_args"``: needs ``grad_fn`` and sees the raw gradient (``sam_perturb``,
  ``sharpness_monitor``); goes **first**;
* ``"gradient"``: gradient-side (``add_decayed_weights``, ``add_penalty``); goes before the
  learning-rate scaling, so before every post-step transform;
* ``"post_step"``: returns ``P(θ + u) − θ`` (``prox_*``, ``decoupled_weight_decay``,
  ``spectral_clip``, the constraints); goes **last**, after the optimizer;
* ``"final"``: ``low_precision_updates``; the very last non-diagnostic transform;
* ``"optimizer"``: a complete optimizer that needs no other (``prox_adam``);
* ``"diagnostic"``: pass-through (``track``); anywhere.

A transform optareg did not make (an optax optimizer, ``optax.scale_by_adam`` ...) has no tag
and is treated as part of the optimizer. The tags live in a weak dictionary keyed by the
transform's ``init`` function, so they cost nothing and never keep a transform alive.
"""

from __future__ import annotations

import weakref
from typing import Any

import optax

__all__ = ["KINDS", "chain", "kind_of", "tag"]

KINDS = ("extra_args", "gradient", "post_step", "final", "optimizer", "diagnostic")

_TAGS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

_WHERE = {
    "extra_args": "first in the chain, before the optimizer (it must see the raw gradient)",
    "gradient": "before the optimizer's learning-rate scaling, before every post-step transform",
    "post_step": "after the optimizer (post-step transforms go last)",
    "final": "last in the chain (only diagnostics may follow it)",
}


def tag(tx: Any, kind: str, name: str) -> Any:
    """Record ``tx``'s kind and name for :func:`chain`; returns ``tx`` itself."""
    if kind not in KINDS:  # pragma: no cover - a programming error in optareg itself
        raise ValueError(f"unknown kind {kind!r}")
    try:
        _TAGS[tx.init] = (kind, name, ())
    except TypeError:  # pragma: no cover - an init that cannot be weakly referenced
        pass
    return tx


def _entries(tx: Any) -> tuple[tuple[str, str], ...]:
    """The (kind, name) sequence of ``tx``: one entry, or the flattened entries of a chain."""
    info = _TAGS.get(getattr(tx, "init", None)) if hasattr(tx, "init") else None
    if info is None:
        return (("optimizer", type(tx).__name__),)
    kind, name, inner = info
    return inner if kind == "chain" else ((kind, name),)


def kind_of(tx: Any) -> str:
    """The kind of an optareg transform (``"optimizer"`` for anything untagged)."""
    info = _TAGS.get(getattr(tx, "init", None)) if hasattr(tx, "init") else None
    return "optimizer" if info is None else info[0]


def _check_order(entries: tuple[tuple[str, str], ...]) -> None:
    """Raise a ``ValueError`` naming the first misplaced transform and where it belongs."""
    core = [(i, k, n) for i, (k, n) in enumerate(entries) if k != "diagnostic"]
    for j, (i, kind, name) in enumerate(core):
        before = [k for _, k, _ in core[:j]]
        after = [k for _, k, _ in core[j + 1 :]]
        bad = None
        if kind == "extra_args" and any(k != "extra_args" for k in before):
            bad = "it comes after another transform"
        elif kind == "gradient" and any(k in ("post_step", "final") for k in before):
            bad = "it comes after a post-step transform"
        elif kind == "post_step" and "optimizer" in after:
            bad = "an optimizer comes after it"
        elif kind == "final" and after:
            bad = "another non-diagnostic transform comes after it"
        if bad:
            raise ValueError(
                f"optareg.chain: `{name}` (position {i}) is misplaced: {bad}. It must go "
                f"{_WHERE[kind]}. Order: extra-args (sam_perturb) first, then gradient-side "
                "transforms and the optimizer, then post-step transforms (prox_*, "
                "decoupled_weight_decay, spectral_clip, constraints), then "
                "low_precision_updates; diagnostics (track) anywhere."
            )


def chain(*transforms: Any) -> optax.GradientTransformationExtraArgs:
    """``optax.chain`` that checks where every optareg transform sits.

    The result is exactly ``optax.chain(*transforms)``; before building it, the kinds of the
    optareg transforms in it (nested :func:`chain` results are flattened) are checked against
    the order extra-args → gradient-side / optimizer → post-step → ``low_precision_updates``,
    with diagnostics allowed anywhere. Transforms that optareg did not make count as the
    optimizer. A misplaced transform is a ``ValueError`` that names it and where it belongs:
    ``chain(prox_l1(...), adam(...))`` (a prox before the optimizer, which never gives exact
    zeros), ``chain(sgd(lr), sam_perturb(rho))`` (SAM last: gradient *ascent*).

    Args:
      *transforms: the transforms, in order (like ``optax.chain``).

    Returns:
      The ``optax.GradientTransformationExtraArgs`` of ``optax.chain(*transforms)``.

    Raises:
      ValueError: an optareg transform is out of place.

    Example:
      >>> import optax, optareg
      >>> tx = optareg.chain(optax.sgd(0.1), optareg.prox_l1(1e-3, 0.1))
      >>> optareg.chain(optareg.prox_l1(1e-3, 0.1), optax.sgd(0.1))
      Traceback (most recent call last):
      ...
      ValueError: optareg.chain: `prox_l1` (position 0) is misplaced: ...
    """
    entries = tuple(e for tx in transforms for e in _entries(tx))
    _check_order(entries)
    out = optax.chain(*transforms)
    try:
        _TAGS[out.init] = ("chain", "chain", entries)
    except TypeError:  # pragma: no cover
        pass
    return out
