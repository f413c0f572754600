"""``tx.update(g, s)`` without ``params``: the error names the transform and where it goes in a
chain, for every registry entry, also wrapped by ``optax.masked`` / ``inject_hyperparams`` and
inside a chain whose optax optimizer would otherwise raise its generic message first."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import optax
import pytest
from helpers import extra_args, grads_for, make_params
from registry import ENTRIES

import optareg
from optareg import _chain

_FIRST = [e for i, e in enumerate(ENTRIES) if e.factory not in {x.factory for x in ENTRIES[:i]}]


def _message(name: str, kind: str) -> str:
    return (
        rf"^{re.escape(name)}: `params` is None\. This transform needs the current parameters: "
        rf"call `tx\.update\(updates, state, params\)`.*It goes {re.escape(_chain._WHERE[kind])}\.$"
    )


def _zeros_like_init(tx, params):
    """A state of zeros shaped like ``tx.init(params)``, without compiling ``init``."""
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(tx.init, params))


def _param(entry):
    """The entry; skipped where the registry builds it through a test factory of its own (which
    may read ``params`` before the transform does)."""
    ours = getattr(optareg, entry.factory.__name__, None) is entry.factory  # a public factory
    reason = "the registry's factory for it is a test wrapper that reads params itself"
    return pytest.param(entry, id=entry.id, marks=[] if ours else [pytest.mark.skip(reason=reason)])


@pytest.mark.parametrize("entry", [_param(e) for e in _FIRST])
def test_every_transform_names_itself_and_its_place(entry):
    params, tx = make_params(), entry.make()
    ((kind, name),) = _chain._entries(tx)
    name = f"track(name={name!r})" if kind == "diagnostic" else name
    grads = grads_for(params)
    wrapped = {
        "plain": tx,
        # an extra-args transform inside optax.masked is an error of its own (use its mask=)
        "masked": optax.masked(tx, optareg.masks.decay_mask) if kind != "extra_args" else tx,
        "chain": optareg.chain(tx, optax.sgd(0.1))
        if entry.position == "first"
        else optareg.chain(optax.adamw(0.1, weight_decay=0.1), tx),
    }
    for how, t in wrapped.items():
        state = _zeros_like_init(t, params)
        with pytest.raises(ValueError, match=_message(name, kind)):
            t.update(grads, state, **extra_args(entry))
        assert how  # (the loop variable names the failing wrapper in the traceback)


def test_masked_inject_and_nested_chain():
    """optax's own generic message came first with a mask function or adamw's decay."""
    params = {"w": jnp.ones((3, 3)), "b": jnp.ones(3)}
    prox = optareg.prox_l1(0.1, 0.1, mask=optareg.masks.decay_mask)
    cases = [
        optax.masked(optareg.prox_l1(0.1, 0.1), optareg.masks.decay_mask),
        optax.inject_hyperparams(optareg.prox_l1)(0.1, 0.1),
        optareg.chain(optax.adamw(0.1, mask=optareg.masks.decay_mask), prox),
        optareg.chain(optareg.chain(optax.adamw(0.1), optareg.track()), prox),
    ]
    for tx in cases:
        with pytest.raises(ValueError, match=_message("prox_l1", "post_step")):
            tx.update(params, tx.init(params))
    # a chain of optax transforms only keeps optax's message; with params everything runs
    plain = optareg.chain(optax.adamw(0.1))
    with pytest.raises(ValueError, match="not passing `params`"):
        plain.update(params, plain.init(params))
    tx = cases[2]
    updates, _ = tx.update(params, tx.init(params), params)
    assert updates["w"].shape == (3, 3)
