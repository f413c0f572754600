"""Spectral-norm control of weight matrices (post-step). Being implemented."""

from __future__ import annotations

__all__ = ["spectral_clip", "spectral_norms"]


def spectral_clip(
    max_norm=1.0,
    *,
    method="power",
    num_iters=1,
    init_iters=15,
    ns_steps=8,
    mask=None,
    matrix_axes=None,
):
    raise NotImplementedError


def spectral_norms(params, matrix_axes=None):
    raise NotImplementedError
