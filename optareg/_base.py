"""Temporary re-exports while the families move to the split modules (removed at the end)."""

from optareg._counters import evaluate, increment, init_count  # noqa: F401
from optareg._masking import check_mask, check_mask_matches, masked_if  # noqa: F401
from optareg._numerics import (  # noqa: F401
    compute_dtype,
    nonfinite_counts,
    pow2_scale,
    zero_counts,
    zeros_fraction,
)
from optareg._validation import (  # noqa: F401
    NO_PARAMS_MSG,
    MaskOrFn,
    ScalarOrSchedule,
    check_choice,
    check_int,
    check_scalar,
    is_concrete,
    is_params_placeholder,
    require_params,
)
