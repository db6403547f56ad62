"""Per-stage loss weights.

Fixed weights (`"1,1,1"`) multiply each sample's loss by its stage's weight.

`auto` balances the stages dynamically: each stage's weight is the inverse of a running mean
(exponential, decay 0.99) of that stage's loss, normalised so the weights average to 1 over the
current stage ratios. Low-resolution stages have much smaller losses (less noise left to remove
per pixel); without balancing their gradient is drowned by the last stage's. Weights are updated
from the losses of each step after the optimizer step, so a step's weights depend only on
earlier steps, and they are saved in checkpoints.
"""

from __future__ import annotations

from typing import Sequence

from ..config import parse_float_list
from ..errors import ConfigError


class StageLossWeights:
    def __init__(self, spec: str, num_stages: int, decay: float = 0.99) -> None:
        self.auto = spec == "auto"
        self.decay = decay
        self.num_stages = num_stages
        if self.auto:
            self.fixed = [1.0] * num_stages
        else:
            values = parse_float_list(spec, "--stage-loss-weights")
            if len(values) != num_stages:
                raise ConfigError(f"--stage-loss-weights has {len(values)} values for {num_stages} stages")
            if any(v < 0 for v in values):
                raise ConfigError("--stage-loss-weights must be non-negative")
            self.fixed = list(values)
        self.running: list[float | None] = [None] * num_stages

    def weights(self, ratios: Sequence[float]) -> list[float]:
        if not self.auto:
            return list(self.fixed)
        known = [m for m in self.running if m is not None]
        if not known:
            return [1.0] * self.num_stages
        fallback = sum(known) / len(known)
        inverse = [1.0 / max(m if m is not None else fallback, 1e-12) for m in self.running]
        share = [float(r) / sum(ratios) for r in ratios]
        norm = sum(s * w for s, w in zip(share, inverse)) or 1.0
        return [w / norm for w in inverse]

    def update(self, stage_means: dict[int, float]) -> None:
        for k, value in stage_means.items():
            prev = self.running[k]
            self.running[k] = value if prev is None else self.decay * prev + (1 - self.decay) * value

    def state_dict(self) -> dict:
        return {"running": list(self.running)}

    def load_state_dict(self, state: dict) -> None:
        self.running = list(state["running"])
