"""Placement and burst policies: the expression language, filters and rankers, burst rules.

Everything here is pure and synchronous over snapshots; it imports :mod:`broker` and nothing
from ``frontends`` or ``backends``.
"""
