"""Boxes and the relations between them: GenEval's position rule, shared by the shapes world
(which captions relations by it) and the GenEval scorer (which checks them by it)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

RELATIONS = ("left of", "right of", "above", "below")
OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
POSITION_THRESHOLD = 0.1  # GenEval's margin, as a fraction of the two boxes' summed sides


def relative_position(box_a: Sequence[float], box_b: Sequence[float],
                      margin: float = POSITION_THRESHOLD) -> set[str]:
    """Where box a (x0, y0, x1, y1) lies relative to box b (x right, y down), GenEval's rule.

    The centre offset shrinks by `margin` x the two boxes' summed sides on each axis; a relation
    holds when the shrunk offset, divided by the length of the unshrunk offset, is beyond 0.5 on
    its axis. Shrunk offsets that vanish (< 1e-3 on both axes) give no relation.
    """
    a = np.asarray(box_a[:4], dtype=np.float64)
    b = np.asarray(box_b[:4], dtype=np.float64)
    offset = (a[:2] + a[2:]) / 2 - (b[:2] + b[2:]) / 2
    sides = np.abs(a[2:] - a[:2]) + np.abs(b[2:] - b[:2])
    revised = np.maximum(np.abs(offset) - margin * sides, 0) * np.sign(offset)
    if np.all(np.abs(revised) < 1e-3):
        return set()
    dx, dy = revised / np.linalg.norm(offset)
    found = set()
    if dx < -0.5:
        found.add("left of")
    if dx > 0.5:
        found.add("right of")
    if dy < -0.5:
        found.add("above")
    if dy > 0.5:
        found.add("below")
    return found
