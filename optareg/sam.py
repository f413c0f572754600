"""Sharpness-aware minimization as one extra-args transform. Being implemented."""

from __future__ import annotations

__all__ = ["sam_perturb"]


def sam_perturb(
    rho=0.05,
    *,
    norm="l2",
    adaptive=False,
    adaptive_eta=0.01,
    gsam_alpha=0.0,
    reuse_every=1,
    reuse_alpha=0.7,
    eps=1e-12,
    mask=None,
    axis_name=None,
):
    raise NotImplementedError
