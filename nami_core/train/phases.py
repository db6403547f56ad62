"""Piecewise-constant schedules over training steps: stage sampling ratios and learning rate.

Written as `"STEP:VALUES,STEP:VALUES"`, each phase starting at its step:

* the stage mix, one weight per stage low to high resolution: `"0:4:2:1,120000:2:4:1,200000:1:2:4"`
  (the paper's schedule and the default for three stages); one mix without a step, `"4:2:1"`,
  holds from step 0 on (`parse_stage_mix`);
* learning rate: `"0:1e-4,200000:5e-5"` (the paper's, the default).
"""

from __future__ import annotations

import math

from dataclasses import dataclass
from typing import Any, Callable, Sequence

from ..config import list_items, number_text, parse_weights
from ..errors import ConfigError

PAPER_RATIOS = "0:4:2:1,120000:2:4:1,200000:1:2:4"
PAPER_LR = "0:1e-4,200000:5e-5"


def split_batch(batch: int, ratios: Sequence[float]) -> list[int]:
    """Samples per stage for a batch mixed by `ratios`: proportional counts, rounded by largest
    remainder so they sum to `batch`. split_batch(7, (4, 2, 1)) == [4, 2, 1]."""
    total = float(sum(ratios))
    if total <= 0 or any(w < 0 for w in ratios):
        raise ConfigError(f"--ratio must be non-negative with a positive sum, got {':'.join(map(str, ratios))}")
    exact = [batch * w / total for w in ratios]
    counts = [int(x) for x in exact]
    order = sorted(range(len(ratios)), key=lambda k: (counts[k] - exact[k], k))
    for k in order[: batch - sum(counts)]:
        counts[k] += 1
    return counts


@dataclass(frozen=True)
class Phase:
    start: int
    values: tuple[float, ...]


def parse_phases(text: str, name: str, width: int | None = None,
                 check: Callable[[tuple[float, ...], str], Any] = parse_weights) -> list[Phase]:
    """Parse a schedule; `width` is the number of values each phase must have (None: any, >= 1).
    `check(values, where)` checks a phase's values; by default they are weights
    (`config.parse_weights`: finite, non-negative, not all 0)."""
    phases = []
    for part in list_items(text, name):
        fields = part.split(":")
        try:
            start = int(fields[0])
            values = tuple(float(v) for v in fields[1:])
        except ValueError:
            raise ConfigError(f"{name}: cannot read phase {part!r} (expected STEP:VALUE[:VALUE...])") from None
        if start < 0:
            raise ConfigError(f"{name}: phase {part!r} starts at a negative step")
        if not all(math.isfinite(v) for v in values):
            raise ConfigError(f"{name}: phase {part!r} holds a value that is not a finite number")
        if not values or (width is not None and len(values) != width):
            raise ConfigError(f"{name}: phase {part!r} has {len(values)} values, expected {width}")
        check(values, f"{name}: phase {part!r}")
        phases.append(Phase(start, values))
    if phases[0].start != 0:
        raise ConfigError(f"{name}: the first phase must start at step 0, not {phases[0].start}")
    if any(b.start <= a.start for a, b in zip(phases, phases[1:])):
        raise ConfigError(f"{name}: phase steps must increase")
    return phases


def value_at(phases: Sequence[Phase], step: int) -> tuple[float, ...]:
    """Values of the phase in force at `step`."""
    current = phases[0]
    for phase in phases:
        if phase.start <= step:
            current = phase
    return current.values


def default_ratios(num_stages: int) -> str:
    return PAPER_RATIOS if num_stages == 3 else "0:" + ":".join(["1"] * num_stages)


def parse_stage_mix(text: str, num_stages: int, name: str = "--stage-mix") -> list[Phase]:
    """A stage mix: `num_stages` weights ("4:2:1", from step 0 on) or a schedule of them
    ("0:4:2:1,120000:2:4:1"): a phase of exactly `num_stages` values has no step."""
    parts = list_items(text, name)
    if len(parts) == 1:
        values = len(parts[0].split(":"))
        if values == num_stages:
            text = "0:" + parts[0]
        elif values != num_stages + 1:
            raise ConfigError(f"{name} has {values} weights for {num_stages} stages")
    return parse_phases(text, name, num_stages)


def format_phases(phases: Sequence[Phase]) -> str:
    """Phases as they are written: "0:4:2:1,120000:2:4:1" (values exactly, as short as they read)."""
    return ",".join(":".join([str(p.start), *map(number_text, p.values)]) for p in phases)
