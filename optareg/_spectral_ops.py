"""Matrix-sign and spectral-clipping operators (implementation; public in :mod:`optareg.operators`).

Being implemented.
"""

from __future__ import annotations


def msign(x, steps=8):
    raise NotImplementedError


def spectral_clip_matrix(x, c=1.0, method="exact"):
    raise NotImplementedError
