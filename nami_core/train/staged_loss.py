"""The staged training loss (docs/method.md §4, Algorithm 1): every sample trains one stage
window; a step's loss is the per-stage-weighted mean of the samples' flow losses.

`StagedObjective` is the trained module: one forward runs every stage group of a step, so
DDP and FSDP see one graph. `StageLossWeights` weights the stages: fixed (`"1,1,1"`) or `auto`.

`auto` balances the stages dynamically: each stage's weight is the inverse of a running mean
(exponential, decay 0.99) of that stage's loss, normalised so the weights average to 1 over the
current stage mix. Low-resolution stages have much smaller losses (less noise left to remove
per pixel); without balancing their gradient is drowned by the last stage's. Weights are updated
from the losses of each step after the optimizer step, so a step's weights depend only on
earlier steps, and they are saved in checkpoints.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..config import parse_float_list
from ..denoiser import Denoiser
from ..errors import ConfigError
from ..flow.objective import flow_loss, stage_targets
from ..flow.plan import FlowPlan
from .batches import StageGroup


class StagedObjective(nn.Module):
    """Per-sample flow losses of a step's stage groups, each through its window's block prefix."""

    def __init__(self, transformer, plan: FlowPlan, patch_size: int) -> None:
        super().__init__()
        self.transformer = transformer
        self.plan = plan
        self.patch_size = patch_size

    def forward(self, groups: list[StageGroup]) -> list[torch.Tensor]:
        """Per-sample losses (b,) of each group."""
        denoiser = Denoiser(self.transformer, self.patch_size)
        losses = []
        for group in groups:
            window = self.plan[group.window]
            target = stage_targets(group.latents, group.noise, group.r, window)
            velocity = denoiser(target.x_r, group.r, target.tau, window, group.text)
            losses.append(flow_loss(velocity, target.velocity))
        return losses


def weighted_loss(groups: list[StageGroup], losses: list[torch.Tensor], stage_weights: Sequence[float],
                  batch_size: int) -> torch.Tensor:
    """The step's loss: every sample's loss times its stage's weight, averaged over the batch."""
    return sum(stage_weights[g.window] * l.sum() for g, l in zip(groups, losses)) / batch_size


def stage_sums(groups: list[StageGroup], losses: list[torch.Tensor], num_windows: int, device) -> torch.Tensor:
    """(2 * num_windows,) float64 on `device`: [loss sum, sample count] per window, for logging and `auto` weights."""
    stats = torch.zeros(2 * num_windows, dtype=torch.float64, device=device)
    for g, l in zip(groups, losses):
        stats[2 * g.window] += l.detach().double().sum()
        stats[2 * g.window + 1] += l.numel()
    return stats


class StageLossWeights:
    """Per-window loss weights, fixed or `auto` (module docstring); `mix` is the window mix in force."""

    def __init__(self, spec: str, num_stages: int, decay: float = 0.99) -> None:
        self.auto = spec == "auto"
        self.decay = decay
        self.num_stages = num_stages
        if self.auto:
            self.fixed = [1.0] * num_stages
        else:
            values = parse_float_list(spec, "--stage-loss-weights")
            if len(values) != num_stages:
                raise ConfigError(f"--stage-loss-weights has {len(values)} values for {num_stages} stage window(s)")
            if any(v < 0 for v in values):
                raise ConfigError("--stage-loss-weights must be non-negative")
            self.fixed = list(values)
        self.running: list[float | None] = [None] * num_stages

    def weights(self, mix: Sequence[float]) -> list[float]:
        if not self.auto:
            return list(self.fixed)
        known = [m for m in self.running if m is not None]
        if not known:
            return [1.0] * self.num_stages
        fallback = sum(known) / len(known)
        inverse = [1.0 / max(m if m is not None else fallback, 1e-12) for m in self.running]
        share = [float(r) / sum(mix) for r in mix]
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
