"""Proximal regularizers (post-step). Being implemented."""

from __future__ import annotations

__all__ = ["prox_adam", "prox_elastic_net", "prox_group_lasso", "prox_l1", "prox_nuclear"]


def prox_l1(l1, learning_rate, mask=None):
    raise NotImplementedError


def prox_elastic_net(l1, l2, learning_rate, mask=None):
    raise NotImplementedError


def prox_group_lasso(strength, learning_rate, *, axis=-1, mask=None):
    raise NotImplementedError


def prox_nuclear(strength, learning_rate, mask=None):
    raise NotImplementedError


def prox_adam(learning_rate, l1, *, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0, mask=None):
    raise NotImplementedError
