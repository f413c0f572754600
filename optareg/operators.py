"""Pure operators: soft thresholds, proximal maps, matrix sign and spectral clipping.

Every function here is pure, jit-, vmap- and grad-safe, and works on one array (matrix operators
batch over leading axes). The chainable transforms in :mod:`optareg` are thin wrappers of these.
"""

from optareg._prox_ops import (
    elastic_net_threshold,
    group_soft_threshold,
    singular_value_threshold,
    soft_threshold,
)
from optareg._spectral_ops import msign, spectral_clip_matrix

__all__ = [
    "elastic_net_threshold",
    "group_soft_threshold",
    "msign",
    "singular_value_threshold",
    "soft_threshold",
    "spectral_clip_matrix",
]
