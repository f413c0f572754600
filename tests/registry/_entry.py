"""The record the conformance suite needs to build and exercise one transform."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import optax

# The mask every masked entry uses, over the conformance params tree (tests/helpers.py).
MASK = {"conv": {"kernel": True}, "dense": {"bias": False, "kernel": True}, "scale": False}


@dataclasses.dataclass(frozen=True)
class Entry:
    """One transform (or one variant of it) in the conformance suite.

    Attributes:
      id: test id, e.g. ``"add_decayed_weights-mask"``.
      factory: the public constructor (``optareg.<name>``), called as ``factory(**kwargs)``.
      kwargs: the arguments it is built with.
      inject: names in ``kwargs`` holding float hyperparameters; the suite checks that
        ``optax.inject_hyperparams`` of them gives identical results, and that replacing each
        with a constant schedule does too.
      position: ``"first"`` (extra-args / gradient-side, e.g. SAM), ``"last"`` (post-step),
        or ``"any"`` (gradient-side transforms that may sit anywhere before the lr).
      needs_grad_fn: the transform takes ``grad_fn`` as an extra keyword argument.
      skip: check name -> reason, for checks that do not apply to this transform.
      atol: tolerance for jit-vs-eager comparisons.
    """

    id: str
    factory: Callable[..., optax.GradientTransformation]
    kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    inject: tuple[str, ...] = ()
    position: str = "last"
    needs_grad_fn: bool = False
    skip: Mapping[str, str] = dataclasses.field(default_factory=dict)
    atol: float = 1e-6

    def make(self, **overrides: Any) -> optax.GradientTransformation:
        return self.factory(**{**self.kwargs, **overrides})


def code_path_key(entry: Entry) -> tuple:
    """What decides an entry's arithmetic (factory, method, norm, SAM variant, per-leaf).

    Tests that run one entry per code path de-duplicate on this key (extending it where they
    care about more, e.g. a decay reference).
    """
    kw = entry.kwargs
    return (
        entry.factory,
        kw.get("method"),
        kw.get("norm"),
        kw.get("adaptive", False),
        bool(kw.get("gsam_alpha", 0)),
        kw.get("reuse_every", 1) > 1,
        kw.get("per_leaf", False),
    )
