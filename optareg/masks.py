"""Boolean masks from tree paths (Flax linen / NNX, Haiku, Equinox). Being implemented."""

from __future__ import annotations

__all__ = ["by_path", "decay_mask"]


def decay_mask(params, *, exclude=("bias", "scale", "norm", "ln", "embedding"), min_ndim=2):
    raise NotImplementedError


def by_path(pattern):
    raise NotImplementedError
