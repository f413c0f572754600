"""Conformance entries for optareg.sam (sharpness-aware minimization, extra-args, first in chain)."""

import optax

import optareg
from registry._entry import MASK as _MASK
from registry._entry import Entry

_MASKED_REASON = (
    "optax.masked(sam_perturb) is an error by design: grad_fn needs the full parameters, but "
    "optax.masked hands the inner transform MaskedNode placeholders; use sam_perturb(mask=...)"
)
_MULTISTEPS_REASON = (
    "optax.MultiSteps(chain(sam_perturb, opt)) is an error by design: SAM would see the mean "
    "gradient with the last micro-batch's grad_fn. The right composition, "
    "chain(sam_perturb, MultiSteps(opt, k)), is checked (one SAM entry per state layout) by "
    "tests/test_sam_real_use.py::test_registry_sam_entries_before_multisteps"
)
_SKIP = {"masked": _MASKED_REASON, "multisteps": _MULTISTEPS_REASON}
_FLOATS = ("rho", "adaptive_eta", "gsam_alpha", "reuse_alpha", "eps")


def _entry(id_, kwargs, inject=("rho",)):
    return Entry(
        id_,
        optareg.sam_perturb,
        kwargs,
        inject=inject,
        position="first",
        needs_grad_fn=True,
        skip=_SKIP,
        atol=1e-5,
    )


ENTRIES: list[Entry] = [
    _entry("sam_perturb-l2", {"rho": 0.05}),
    _entry("sam_perturb-linf", {"rho": 0.01, "norm": "linf"}),
    _entry(
        "sam_perturb-adaptive",
        {"rho": 0.5, "adaptive": True, "adaptive_eta": 0.01},
        inject=("rho", "adaptive_eta"),
    ),
    _entry("sam_perturb-gsam", {"rho": 0.05, "gsam_alpha": 0.3}, inject=("rho", "gsam_alpha")),
    _entry(
        "sam_perturb-reuse3",
        {"rho": 0.05, "reuse_every": 3, "reuse_alpha": 0.7},
        inject=("rho", "reuse_alpha"),
    ),
    _entry("sam_perturb-schedule", {"rho": optax.linear_schedule(0.1, 0.01, 10)}, inject=()),
    _entry("sam_perturb-mask", {"rho": 0.05, "mask": _MASK}),
    # metrics_every > 1: the statistics under lax.cond (LookSAM too: a nested cond)
    _entry("sam_perturb-metrics_every", {"rho": 0.05, "reuse_every": 2, "metrics_every": 2}),
]
