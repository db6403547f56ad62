"""The staged training loss (docs/method.md §4, Algorithm 1): every sample trains one stage
window; a step's loss is the per-stage-weighted mean of the samples' flow losses.

`stage_losses` builds each group's targets in float32, runs the network through
`StagedObjective` (the trained module: one forward for every group of a step, so DDP and FSDP
see one graph, and whose inputs are only what the network takes, so FSDP's input cast cannot
touch a target), and scores the outputs in float32. `StageLossWeights` weights the stages:
fixed (`"1,1,1"`) or `auto`.

`auto` balances the stages dynamically: each stage's weight is the inverse of a running mean
(exponential, decay 0.99) of that stage's loss, normalised so the weights average to 1 over the
current stage mix. Low-resolution stages have much smaller losses (less noise left to remove
per pixel); without balancing their gradient is drowned by the last stage's. Weights are updated
from the losses of each step after the optimizer step (and not from a skipped, non-finite one),
so a step's weights depend only on earlier steps; they live on the device and are saved in
checkpoints.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from ..denoiser import Denoiser
from ..errors import ConfigError
from ..flow.objective import flow_loss, stage_targets
from ..flow.parameterization import to_velocity
from ..flow.plan import FlowPlan
from ..text.embeddings import TextEmbeddings
from .batches import StageGroup
from .checkpointing import CheckpointPolicy
from .config import parse_loss_weights


@dataclass
class ModelInput:
    """What the network of one stage group takes: the noisy grid x_r (b, C, h, w), timesteps tau
    (b,) and the text. The grid may be non-square (a bucket of `--buckets` data): the denoiser
    patchifies it and builds its rotary ids from its own (h, w), never from the window's side."""

    window: int
    x_r: torch.Tensor
    tau: torch.Tensor
    text: TextEmbeddings


class StagedObjective(nn.Module):
    """The trained module: the network's raw output for each group's `ModelInput`, through the
    group window's block prefix (recomputing in backward as `policy` says)."""

    def __init__(self, transformer, plan: FlowPlan, patch_size: int, policy: CheckpointPolicy | None = None) -> None:
        super().__init__()
        self.transformer = transformer
        self.plan = plan
        self.patch_size = patch_size
        self.policy = policy

    def forward(self, inputs: list[ModelInput]) -> list[torch.Tensor]:
        """Outputs (b, C, h, w) of each group, in the order given."""
        denoiser = Denoiser(self.transformer, self.patch_size)
        outputs = []
        for item in inputs:
            recompute = self.policy.recompute_from(item.window) if self.policy is not None else None
            outputs.append(denoiser.predict(item.x_r, item.tau, self.plan[item.window], item.text, recompute))
        return outputs


def stage_losses(objective, groups: list[StageGroup], plan: FlowPlan, prediction: str) -> list[torch.Tensor]:
    """Per-sample flow losses (b,) of each group. Targets, the velocity conversion and the MSE are
    float32 and outside `objective` (the possibly DDP- or FSDP-wrapped `StagedObjective`)."""
    targets = [stage_targets(g.latents.float(), g.noise.float(), g.r.float(), plan[g.window]) for g in groups]
    outputs = objective([ModelInput(g.window, t.x_r, t.tau, g.text) for g, t in zip(groups, targets)])
    return [
        flow_loss(to_velocity(out.float(), t.x_r, t.r, plan[g.window], prediction), t.velocity)
        for g, t, out in zip(groups, targets, outputs)
    ]


def weighted_loss(groups: list[StageGroup], losses: list[torch.Tensor], stage_weights: torch.Tensor | Sequence[float],
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
    """Per-window loss weights, fixed or `auto` (module docstring), as a (K,) float32 device tensor."""

    def __init__(self, spec: str | Sequence[float], num_stages: int, decay: float = 0.99, device=None) -> None:
        self.auto = spec == "auto"
        self.decay = decay
        self.num_stages = num_stages
        self.device = torch.device(device or "cpu")
        if self.auto:
            fixed = [1.0] * num_stages
        else:
            values = parse_loss_weights(spec)
            if len(values) != num_stages:
                raise ConfigError(f"--stage-loss-weights has {len(values)} values for {num_stages} stage window(s)")
            fixed = list(values)
        self.fixed = torch.tensor(fixed, dtype=torch.float32, device=self.device)
        self.running = torch.zeros(num_stages, dtype=torch.float64, device=self.device)
        self.seen = torch.zeros(num_stages, dtype=torch.bool, device=self.device)

    def weights(self, mix: Sequence[float]) -> torch.Tensor:
        """(K,) float32: the fixed weights, or `auto`'s for the window mix in force."""
        if not self.auto:
            return self.fixed
        from ..runtime import host_to_device

        share = host_to_device(torch.tensor([float(r) / sum(mix) for r in mix], dtype=torch.float64), self.device)
        known = self.seen.any()
        fallback = (self.running * self.seen).sum() / self.seen.sum().clamp_min(1)
        inverse = 1.0 / torch.where(self.seen, self.running, fallback).clamp_min(1e-12)
        norm = (share * inverse).sum()
        weights = inverse / torch.where(norm == 0, torch.ones_like(norm), norm)
        return torch.where(known, weights, torch.ones_like(weights)).float()

    def update(self, sums: torch.Tensor, taken: torch.Tensor | None = None) -> None:
        """Fold a step's per-window [loss sum, count] (from `stage_sums`) into the running means;
        a step with `taken` 0 changes nothing."""
        if not self.auto:
            return
        total, count = sums[0::2], sums[1::2]
        has = count > 0
        if taken is not None:
            has = has & (taken > 0)
        mean = total / count.clamp_min(1)
        blended = torch.where(self.seen, self.decay * self.running + (1 - self.decay) * mean, mean)
        self.running = torch.where(has, blended, self.running)
        self.seen = self.seen | has

    def state_dict(self) -> dict:
        """JSON-ready: {"running": [mean or None per window]} (reads the device once)."""
        running, seen = self.running.tolist(), self.seen.tolist()
        return {"running": [m if s else None for m, s in zip(running, seen)]}

    def load_state_dict(self, state: dict) -> None:
        values = list(state["running"])
        self.seen = torch.tensor([v is not None for v in values], dtype=torch.bool, device=self.device)
        self.running = torch.tensor([0.0 if v is None else float(v) for v in values], dtype=torch.float64,
                                    device=self.device)
