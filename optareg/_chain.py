"""Where each optareg transform goes in a chain, and :func:`chain`, which checks it.

Every optareg factory tags the transform it returns with its *kind* (see :func:`tag`):

* ``"extra_args"``: needs ``grad_fn`` and sees the raw gradient (``sam_perturb``,
  ``sharpness_monitor``); goes **first**;
* ``"gradient"``: gradient-side (``add_decayed_weights``, ``add_penalty``); goes before the
  learning-rate scaling, so before every post-step transform;
* ``"post_step"``: returns ``P(θ + u) − θ`` (``prox_*``, ``decoupled_weight_decay``,
  ``spectral_clip``, the constraints); goes **last**, after the optimizer;
* ``"final"``: ``low_precision_updates``; the last transform that changes the update (only
  averaging transforms and diagnostics follow it);
* ``"averaging"``: pass-through parameter averages (``ema_params``, ``swa``); after everything
  else, ``low_precision_updates`` included, since they average the parameters actually landed
  on (only other averaging transforms and diagnostics may follow them);
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

from optareg import _validation, sharding

__all__ = ["KINDS", "chain", "kind_of", "tag"]

KINDS = ("extra_args", "gradient", "post_step", "final", "averaging", "optimizer", "diagnostic")

_TAGS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

_WHERE = {
    "extra_args": "first in the chain, before the optimizer (it must see the raw gradient)",
    "gradient": "before the optimizer's learning-rate scaling, before every post-step transform",
    "post_step": "after the optimizer (post-step transforms go last)",
    "final": "last in the chain (only averaging transforms and diagnostics may follow it)",
    "averaging": (
        "last, after the optimizer, the post-step transforms and low_precision_updates (it "
        "averages the parameters the full update lands on; only diagnostics may follow it)"
    ),
    "complete": (
        "after every other optimizer transform: it is a complete optimizer, so only post-step "
        "transforms, low_precision_updates and diagnostics may follow it"
    ),
    "diagnostic": "anywhere (it passes the updates through)",
}

# kind by transform name, recorded by `tag`, for the missing-params error (`where_of`)
_KIND_OF_NAME: dict[str, str] = {}

# entry kinds that make (part of) the optimizer: untagged transforms, a tagged complete
# optimizer (prox_adam), and the optax wrappers that skip calls (MultiSteps, apply_if_finite)
_OPTIMIZERS = ("optimizer", "complete", "skipping")


# the kinds whose operators are written for one device and run on explicit-sharding meshes
# through optareg.sharding.run_local (gradient-side and extra-args ones call the user's penalty /
# grad_fn, which may close over explicit-sharded arrays: they are left as they are)
_EXPLICIT_READY = ("post_step", "final", "optimizer", "averaging")


def tag(tx: Any, kind: str, name: str) -> Any:
    """Record ``tx``'s kind and name for :func:`chain`; returns ``tx`` (for the kinds in
    ``_EXPLICIT_READY``, wrapped by :func:`optareg.sharding.explicit_ready`)."""
    if kind not in KINDS:  # pragma: no cover - a programming error in optareg itself
        raise ValueError(f"unknown kind {kind!r}")
    _KIND_OF_NAME[name] = "complete" if kind == "optimizer" else kind
    if kind in _EXPLICIT_READY:  # explicit-sharding meshes: see optareg.sharding
        tx = sharding.explicit_ready(tx)
    try:
        _TAGS[tx.init] = (kind, name, ())
    except TypeError:  # pragma: no cover - an init that cannot be weakly referenced
        pass
    return tx


def where_of(name: str) -> str | None:
    """Where the transform called ``name`` goes in a chain (None for an unknown name); a
    ``track(name=...)`` is a diagnostic."""
    kind = "diagnostic" if name.startswith("track(") else _KIND_OF_NAME.get(name)
    return _WHERE.get(kind)


def _cells(fn: Any) -> dict[str, Any]:
    """The closure variables of ``fn`` by name (empty for anything else)."""
    code, closure = getattr(fn, "__code__", None), getattr(fn, "__closure__", None)
    if code is None or closure is None:
        return {}
    out = {}
    for name, cell in zip(code.co_freevars, closure, strict=False):
        try:
            out[name] = cell.cell_contents
        except ValueError:  # an empty cell
            pass
    return out


def _injected_kind(cells: dict[str, Any]) -> tuple[tuple[str, str], ...] | None:
    """The entries of ``optax.inject_hyperparams(factory)(...)``: those of the transform that
    ``factory`` builds from the same hyperparameters (built once, here, and dropped)."""
    factory = cells.get("inner_factory")
    if not getattr(factory, "__module__", "").startswith("optareg"):
        return None
    try:
        values = {k: f(f.init()) for k, f in cells.get("sched_hps", {}).items()}
        inner = factory(**cells.get("other_hps", {}), **cells.get("numeric_hps", {}), **values)
    except Exception:  # noqa: BLE001 - not buildable outside optax: left unchecked
        return None
    return _entries(inner)


# optax wrappers after which a post-step transform would run on calls the wrapper skips
_SKIPPED = {"optax.MultiSteps": "every micro-batch", "optax.apply_if_finite": "every skipped step"}


def _tag_of(init: Any) -> tuple[str, str, tuple] | None:
    """The tag recorded for the transform whose ``init`` this is (None: not optareg's)."""
    try:
        return _TAGS.get(init)
    except TypeError:  # an init that cannot be weakly referenced was never tagged
        return None


def _entries_of_init(init: Any, label: str) -> tuple[tuple[str, str], ...]:
    """The (kind, name) entries behind an ``init`` function: a tagged optareg transform, or
    what optax's ``chain`` / ``named_chain`` / ``masked`` / ``inject_hyperparams`` wrap (so a
    wrapped prox is still a prox); ``MultiSteps`` and ``apply_if_finite`` are ``"skipping"``
    optimizers; anything else is part of the optimizer."""
    info = _tag_of(init)
    if info is not None:
        kind, name, inner = info
        if kind == "chain":
            return inner
        return (("complete" if kind == "optimizer" else kind, name),)  # a tagged optimizer
    owner = getattr(init, "__self__", None)
    if isinstance(owner, optax.MultiSteps):
        return (("skipping", "optax.MultiSteps"),)
    outer = getattr(init, "__qualname__", "").split(".<locals>")[0]
    cells = _cells(init)
    if outer == "apply_if_finite":
        return (("skipping", "optax.apply_if_finite"),)
    if outer == "chain" and "init_fns" in cells:
        return tuple(e for fn in cells["init_fns"] for e in _entries_of_init(fn, label))
    if outer == "named_chain" and "transforms" in cells:
        return tuple(e for _, tx in cells["transforms"] for e in _entries(tx))
    if outer == "masked" and "inner" in cells:
        return _entries(cells["inner"])
    if outer == "inject_hyperparams":
        injected = _injected_kind(cells)
        if injected is not None:
            return injected
    return (("optimizer", label),)


def _entries(tx: Any) -> tuple[tuple[str, str], ...]:
    """The (kind, name) sequence of ``tx``: one entry, or the flattened entries of a chain."""
    if not hasattr(tx, "init"):
        return (("optimizer", type(tx).__name__),)
    return _entries_of_init(tx.init, type(tx).__name__)


def kind_of(tx: Any) -> str:
    """The kind of an optareg transform (``"optimizer"`` for anything untagged)."""
    info = _tag_of(tx.init) if hasattr(tx, "init") else None
    return "optimizer" if info is None else info[0]


def _misplaced(kind: str, name: str, before: list, after: list) -> tuple[str, str] | None:
    """Why a transform of ``kind`` is out of place between ``before`` and ``after`` (lists of
    (kind, name)), and where it must go; None when it is in place."""
    kinds_before, kinds_after = [k for k, _ in before], [k for k, _ in after]
    if kind == "extra_args" and any(k != "extra_args" for k in kinds_before):
        return "it comes after another transform", _WHERE[kind]
    if kind == "gradient" and any(k in ("post_step", "final") for k in kinds_before):
        return "it comes after a post-step transform", _WHERE[kind]
    if kind == "post_step" and any(k in _OPTIMIZERS for k in kinds_after):
        return "an optimizer comes after it", _WHERE[kind]
    if kind in ("post_step", "averaging") and "skipping" in kinds_before:
        wrapper = next(n for k, n in before if k == "skipping")
        return (
            f"it comes after {wrapper}, so it also runs on {_SKIPPED[wrapper]} (the calls that "
            "wrapper turns into a zero update), and its schedule counts them",
            f"inside the wrapper, after the optimizer: {wrapper}(optareg.chain(opt, {name}), ...)",
        )
    if kind == "final" and any(k != "averaging" for k in kinds_after):
        return "another non-diagnostic transform comes after it", _WHERE[kind]
    if kind == "averaging" and any(k != "averaging" for k in kinds_after):
        return "a transform that changes the update comes after it", _WHERE[kind]
    if kind == "complete" and any(k in _OPTIMIZERS for k in kinds_after):
        return "another optimizer transform comes after it", _WHERE[kind]
    return None


def _check_order(entries: list[tuple[int, str, str]]) -> None:
    """Raise a ``ValueError`` naming the first misplaced transform and where it belongs.

    ``entries`` are ``(position, kind, name)``: ``position`` is the argument of :func:`chain`
    the entry comes from (a nested chain or wrapper contributes several entries).
    """
    core = [(i, k, n) for i, k, n in entries if k != "diagnostic"]
    for j, (i, kind, name) in enumerate(core):
        before = [(k, n) for _, k, n in core[:j]]
        after = [(k, n) for _, k, n in core[j + 1 :]]
        found = _misplaced(kind, name, before, after)
        if found:
            bad, where = found
            raise ValueError(
                f"optareg.chain: `{name}` (position {i}) is misplaced: {bad}. It must go "
                f"{where}. Order: extra-args (sam_perturb) first, then gradient-side "
                "transforms and the optimizer, then post-step transforms (prox_*, "
                "decoupled_weight_decay, spectral_clip, constraints), then "
                "low_precision_updates, then averaging (ema_params, swa); diagnostics (track) "
                "anywhere."
            )


def chain(*transforms: Any) -> optax.GradientTransformationExtraArgs:
    """``optax.chain`` that checks where every optareg transform sits.

    The result is ``optax.chain(*transforms)`` (whose ``update`` without ``params`` raises the
    error of the first optareg transform in it, naming where it goes); before building it, the
    kinds of the optareg transforms in it are checked against the order extra-args → gradient-side /
    optimizer → post-step → ``low_precision_updates`` → averaging (``ema_params``, ``swa``),
    with diagnostics allowed anywhere.
    Transforms that optareg did not make count as the optimizer. The check sees through nested
    :func:`chain` and ``optax.chain`` / ``optax.named_chain`` results, ``optax.masked`` and
    ``optax.inject_hyperparams`` (a wrapped prox is still a prox). A misplaced transform is a
    ``ValueError`` that names it and where it belongs:

    * ``chain(prox_l1(...), adam(...))``: a prox before the optimizer, which never gives exact
      zeros (also when the prox is wrapped in ``inject_hyperparams`` or ``masked``);
    * ``chain(sgd(lr), sam_perturb(rho))``: SAM last, i.e. gradient *ascent*;
    * ``chain(MultiSteps(opt, k), prox_l1(...))`` (or after ``optax.apply_if_finite``): the
      prox would run on every call, each micro-batch or skipped step included; it belongs
      inside, ``MultiSteps(chain(opt, prox_l1(...)), k)``;
    * ``chain(prox_adam(...), sgd(lr))``: ``prox_adam`` is a complete optimizer, and a further
      optimizer after it loses its exact zeros;
    * ``chain(ema_params(), adam(lr))`` or ``chain(opt, ema_params(), low_precision_updates())``:
      an average of parameters the final update does not land on.

    Not caught, since an optax optimizer and its pieces look alike from outside:
    ``add_decayed_weights`` after a *complete* optimizer (``chain(sgd(lr),
    add_decayed_weights(λ))`` adds ``λ·θ`` to the final step, so the weights grow): it goes
    before the learning-rate scaling, e.g. ``chain(add_decayed_weights(λ), sgd(lr))``.

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
    entries = [(i, k, n) for i, tx in enumerate(transforms) for k, n in _entries(tx)]
    _check_order(entries)
    out = _params_first(optax.chain(*transforms), [(k, n) for _, k, n in entries])
    try:
        _TAGS[out.init] = ("chain", "chain", tuple((k, n) for _, k, n in entries))
    except TypeError:  # pragma: no cover
        pass
    return out


def _params_first(tx: Any, entries: list[tuple[str, str]]) -> Any:
    """``tx`` whose ``update`` without ``params`` raises the error of the first optareg
    transform in it (its name and where it goes), before any optax transform raises its
    generic one (``optax.adamw``'s decay, ``optax.masked`` with a mask function)."""
    ours = [(k, n) for k, n in entries if k not in ("optimizer", "skipping")]  # optareg's
    if not ours:
        return tx
    # a diagnostic is named only when nothing else needs the params
    kind, name = min(ours, key=lambda e: e[0] == "diagnostic")
    name = f"track(name={name!r})" if kind == "diagnostic" else name

    def update_fn(updates, state, params=None, **extra_args):
        if params is None:
            raise ValueError(_validation.no_params_message(name))
        return tx.update(updates, state, params, **extra_args)

    return optax.GradientTransformationExtraArgs(tx.init, update_fn)
