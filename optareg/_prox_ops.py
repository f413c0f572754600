"""Proximal operators (implementation; public in :mod:`optareg.operators`). Being implemented."""

from __future__ import annotations


def soft_threshold(x, tau):
    raise NotImplementedError


def elastic_net_threshold(x, tau_l1, tau_l2):
    raise NotImplementedError


def group_soft_threshold(x, tau, axis=-1):
    raise NotImplementedError


def singular_value_threshold(x, tau):
    raise NotImplementedError
