"""Conformance entries for optareg.sharpness (the sharpness monitor: extra-args, first in chain)."""

import optareg
from registry._entry import MASK as _MASK
from registry._entry import Entry

_SKIP = {
    "masked": (
        "optax.masked(sharpness_monitor) is an error by design: grad_fn needs the full "
        "parameters, but optax.masked hands the inner transform MaskedNode placeholders; use "
        "sharpness_monitor(mask=...)"
    ),
    "multisteps": (
        "optax.MultiSteps(chain(sharpness_monitor, opt)) is an error by design (the shared "
        "extra-args check): it would measure the last micro-batch's loss only; put the monitor "
        "outside, chain(sharpness_monitor(), MultiSteps(opt, k))"
    ),
}


def _entry(id_, kwargs, inject=()):
    return Entry(
        id_,
        optareg.sharpness_monitor,
        kwargs,
        inject=inject,
        position="first",
        needs_grad_fn=True,
        skip=_SKIP,
        atol=1e-5,
    )


# Few HVPs per measurement: the suite checks plumbing (dtypes, jit, chains, NaN-safety), the
# accuracy of the estimate is tested against dense Hessians in tests/test_sharpness.py.
ENTRIES: list[Entry] = [
    _entry("sharpness_monitor", {"num_iters": 3}),
    _entry(
        "sharpness_monitor-every2-lr",
        {"num_iters": 3, "metrics_every": 2, "learning_rate": 0.1},
        inject=("learning_rate",),
    ),
    _entry("sharpness_monitor-mask", {"num_iters": 3, "mask": _MASK}),
]
