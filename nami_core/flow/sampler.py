"""Progressive sampler (docs/method.md §5, Algorithm 2): Euler per stage window, CFG, jumps between windows."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from ..runtime import host_to_device
from ..text.embeddings import TextEmbeddings
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
        self._guidance_text: tuple | None = None  # (uncond, cond, [uncond; cond])

    def window_text(self, cond, uncond, cfg: float):
        """The text batch window steps run on: [uncond; cond] (2B rows) when guiding, else cond.
        The same object for the same (cond, uncond), so prepared stage inputs are reused."""
        if uncond is None or cfg == 1.0:
            return cond
        cached = self._guidance_text
        if cached is None or cached[0] is not uncond or cached[1] is not cond:
            cached = (uncond, cond, TextEmbeddings.cat([uncond, cond]))
            self._guidance_text = cached
        return cached[2]

    def prepare_window(self, k: int, side: tuple[int, int], text, device) -> None:
        """Build what window k's steps share before they run (for a velocity with `prepare`, such as
        a `Denoiser`), so the steps read nothing back from the device."""
        prepare = getattr(self.velocity, "prepare", None)
        if prepare is not None and text is not None:
            prepare(self.plan.windows[k], text, side[0], side[1], device)

    def guided_velocity(self, z, r: torch.Tensor, tau: torch.Tensor, window: StageWindow, text, cfg: float,
                        guided: bool):
        """Classifier-free guidance `v_u + w (v_c - v_u)`; with `guided`, `text` is the batch
        [uncond; cond] of 2B rows and both branches run in one forward. r and tau: 0-dim tensors
        on z's device."""
        if not guided:
            b = z.shape[0]
            return self.velocity(z, r.expand(b), tau.expand(b), window, text)
        b = 2 * z.shape[0]
        v = self.velocity(torch.cat([z, z]), r.expand(b), tau.expand(b), window, text)
        v_uncond, v_cond = v.chunk(2)
        return v_uncond + cfg * (v_cond - v_uncond)

    @torch.no_grad()
    def run_window(self, z: torch.Tensor, k: int, steps: int, cond, uncond, cfg: float = 1.0,
                   callback: StepCallback | None = None) -> torch.Tensor:
        """`steps` Euler steps through window k from its start state z (B, C, h_k, w_k) to its end
        state, same shape. No jump: `self.jump(z, k, generators)` takes the result to window k + 1.

        The grid goes to the device without the host waiting; the stage inputs are prepared unless
        `__call__` already did so for every window. The steps read nothing back from the device."""
        window = self.plan.windows[k]
        ratios, taus = self.scheduler.stage_grid(self.plan, k, steps)
        r_all = host_to_device(torch.tensor(ratios, dtype=torch.float32), z.device)
        tau_all = host_to_device(torch.tensor(taus, dtype=torch.float32), z.device)
        guided = uncond is not None and cfg != 1.0
        text = self.window_text(cond, uncond, cfg)
        self.prepare_window(k, z.shape[-2:], text, z.device)
        for i in range(steps):
            v = self.guided_velocity(z, r_all[i], tau_all[i], window, text, cfg, guided)
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
        sides = [(z.shape[-2] * 2**k, z.shape[-1] * 2**k) for k in range(len(self.plan))]
        for k in range(len(self.plan)):  # every window's inputs first: the stages then run without a sync
            self.prepare_window(k, sides[k], self.window_text(cond, uncond, scales[k]), z.device)
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
