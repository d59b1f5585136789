"""Small inline SVG charts: the geometry is computed here from numbers, the SVG is drawn by
the ``spark`` and ``bar`` macros of ``_macros.html`` (autoescaped like every template).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

WIDTH = 120
HEIGHT = 28


@dataclasses.dataclass(frozen=True, slots=True)
class Spark:
    points: str
    pct: int
    label: str
    width: int = WIDTH
    height: int = HEIGHT


@dataclasses.dataclass(frozen=True, slots=True)
class Bar:
    width: float
    pct: int
    hot: bool


def sparkline(values: Sequence[float], top: float, *, label: str = "") -> Spark:
    """A polyline of ``values`` scaled to ``top`` (the capacity), newest on the right."""
    top = max(top, max(values, default=0.0), 1e-9)

    def y(v: float) -> float:
        return HEIGHT - v / top * (HEIGHT - 2) - 1

    n = len(values)
    if n == 0:
        points = ""
    elif n == 1:
        points = f"0,{y(values[0]):.1f} {WIDTH},{y(values[0]):.1f}"
    else:
        step = WIDTH / (n - 1)
        points = " ".join(f"{i * step:.1f},{y(v):.1f}" for i, v in enumerate(values))
    last = values[-1] if values else 0.0
    return Spark(points, round(100 * last / top), label)


def bar(used: float, total: float) -> Bar:
    """A horizontal bar of ``used`` out of ``total``."""
    frac = 0.0 if total <= 0 else max(0.0, min(1.0, used / total))
    return Bar(round(frac * 100, 1), int(frac * 100), frac >= 0.9)
