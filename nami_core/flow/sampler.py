"""Progressive sampler (docs/method.md §5, Algorithm 2): Euler per stage window, CFG, jumps between windows."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from .plan import FlowPlan, StageWindow
from .pyramid import noise_down, randn
from .scheduler import NamiFlowScheduler

# velocity(z (B,C,h,w), r (B,), tau (B,), window, text) -> (B,C,h,w)
VelocityFn = Callable[..., torch.Tensor]
# callback(stage index, step index within the stage, state z) after every Euler step
StepCallback = Callable[[int, int, torch.Tensor], None]


@dataclass
class SampleResult:
    """Final latent grid (B, C, H, W) at full resolution and wall seconds spent per stage window."""

    latents: torch.Tensor
    stage_seconds: list[float] = field(default_factory=list)


def initial_noise(
    batch: int,
    channels: int,
    full_hw: tuple[int, int],
    plan: FlowPlan,
    generators: Sequence[torch.Generator] | None,
    device,
) -> torch.Tensor:
    """Noise at the first window's resolution: `randn` at full latent resolution, then
    `2 * Down` per level, so one seed gives the same image whatever the number of stages.
    Returns (B, C, h_1, w_1)."""
    eps = randn((batch, channels, *full_hw), generators, device)
    levels_down = plan.flow.num_stages - 1 - plan.windows[0].level
    for _ in range(levels_down):
        eps = noise_down(eps)
    return eps


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class ProgressiveSampler:
    """Runs a `FlowPlan`: Euler steps on each window's grid, then the jump to the next window.

    `velocity` is a `Denoiser` (or any callable with its signature); `jump(z, k, generators)`
    is a `RenoiseJump` or `BridgeJump`; `scheduler` lays out each window's grid and takes the
    Euler step (default: `NamiFlowScheduler` with the plan's flow).
    """

    def __init__(self, velocity: VelocityFn, plan: FlowPlan, jump, scheduler: NamiFlowScheduler | None = None) -> None:
        self.velocity = velocity
        self.plan = plan
        self.jump = jump
        self.scheduler = scheduler if scheduler is not None else NamiFlowScheduler.from_flow(plan.flow)

    def guided_velocity(self, z, r: float, tau: float, window: StageWindow, cond, uncond, cfg: float):
        """Classifier-free guidance `v_u + w (v_c - v_u)`; one batched forward for both branches."""
        b = z.shape[0]
        if uncond is None or cfg == 1.0:
            rr = torch.full((b,), r, device=z.device)
            return self.velocity(z, rr, torch.full((b,), tau, device=z.device), window, cond)
        from ..text.encoder import TextEmbeddings

        rr = torch.full((2 * b,), r, device=z.device)
        tt = torch.full((2 * b,), tau, device=z.device)
        v = self.velocity(torch.cat([z, z]), rr, tt, window, TextEmbeddings.cat([uncond, cond]))
        v_uncond, v_cond = v.chunk(2)
        return v_uncond + cfg * (v_cond - v_uncond)

    @torch.no_grad()
    def run_window(self, z: torch.Tensor, k: int, steps: int, cond, uncond, cfg: float = 1.0,
                   callback: StepCallback | None = None) -> torch.Tensor:
        """`steps` Euler steps through window k from its start state z (B, C, h_k, w_k) to its end
        state, same shape. No jump: `self.jump(z, k, generators)` takes the result to window k + 1."""
        window = self.plan.windows[k]
        ratios, taus = self.scheduler.stage_grid(self.plan, k, steps)
        for i in range(steps):
            v = self.guided_velocity(z, float(ratios[i]), float(taus[i]), window, cond, uncond, cfg)
            z = self.scheduler.step(z, v, ratios[i], ratios[i + 1])
            if callback is not None:
                callback(k, i, z)
        return z

    @torch.no_grad()
    def __call__(
        self,
        cond,
        uncond,
        noise: torch.Tensor,
        steps: Sequence[int],
        cfg: float | Sequence[float] = 1.0,
        generators: Sequence[torch.Generator] | None = None,
        callback: StepCallback | None = None,
    ) -> SampleResult:
        """Sample from `noise` (B, C, h_1, w_1) at the first window's resolution.

        cond/uncond: `TextEmbeddings` of batch B (uncond may be None: no guidance).
        steps: Euler steps per window; cfg: one guidance scale, or one per window.
        Returns latents (B, C, H, W) at full resolution.
        """
        if len(steps) != len(self.plan):
            raise ValueError(f"{len(steps)} step counts for a plan of {len(self.plan)} windows")
        scales = self.plan.stage_guidance(cfg)
        z = noise.float()
        seconds: list[float] = []
        for k in range(len(self.plan)):
            _synchronize(z.device)
            t0 = time.perf_counter()
            z = self.run_window(z, k, steps[k], cond, uncond, scales[k], callback)
            if k < len(self.plan) - 1:
                z = self.jump(z, k, generators)
            _synchronize(z.device)
            seconds.append(time.perf_counter() - t0)
        return SampleResult(latents=z, stage_seconds=seconds)
