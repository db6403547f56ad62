"""NamiFlowScheduler: the flow settings saved beside a model (`scheduler/`), the Euler grid
inside each stage window, and the Euler step (docs/method.md §5, §7).

As in diffusers, the scheduler owns the timesteps and the update; the stage windows it lays
them on come from a `FlowPlan`, and the `ProgressiveSampler` runs the loop.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from ..config import TIMESTEP_ROUNDINGS, FlowConfig, check_mode
from ..errors import ConfigError
from .plan import FlowPlan, PublicWindows
from .saved import SCHEDULER_CONFIG, SCHEDULER_DEFAULTS


def public_fine_intervals(public: PublicWindows, k: int) -> int:
    """N: the intervals of window k's fine grid in the public scheduler, `int(t_max - t_min)` in float32."""
    span = np.float32(public.timestep_max[k]) - np.float32(public.timestep_min[k])
    intervals = int(span)
    if intervals < 1:
        raise ConfigError(
            f"window {k + 1} spans {float(span):.3f} timesteps, less than one step of the public grid; "
            "use wider window ratios"
        )
    return intervals


def public_stage_grid(public: PublicWindows, k: int, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """The public scheduler's grid in window k: a fine grid of N + 1 points from t_max to t_min
    (local ratios 1 to 0) with its last point dropped; `steps` points evenly between the fine
    grid's first and last. Returns (ratios (steps + 1,) ending in 0, taus (steps,) in [0, 1]):
    last timesteps 745 / 387 / 2 and last ratios 1/256, 1/358, 1/385 for 1:1:1 windows."""
    n = public_fine_intervals(public, k)
    t_max, t_min = public.timestep_max[k], public.timestep_min[k]
    t_last = t_max + (n - 1) * ((t_min - t_max) / n)  # point n - 1 of the fine grid
    last_ratio = 1.0 + (n - 1) * (-1.0 / n)
    ratios = np.append(np.linspace(1.0, last_ratio, steps), 0.0)
    return ratios, np.linspace(t_max, t_last, steps) / 1000.0


def round_timesteps(taus: np.ndarray, rounding: str) -> np.ndarray:
    """Model timesteps in [0, 1] as a pipeline passes them: "none" keeps them, "fp16" rounds the
    x1000 timestep to float16 and divides it by 1000 in float16 (the release's float16 pipeline)."""
    if rounding == "none":
        return taus
    scaled = torch.as_tensor(np.asarray(taus, dtype=np.float64) * 1000.0).to(torch.float16)
    return (scaled / 1000).double().numpy()


class NamiFlowScheduler(SchedulerMixin, ConfigMixin):
    """Stage resolutions, window ratios, gamma, grid, jump type, timestep rounding and sampling
    defaults (`default_cfg`: one guidance scale, or one per stage); the Euler grid and step.

    `grid` "exact" spaces a window's steps evenly in local ratio (through flux-base's time shift);
    "public" uses the public release's integer grid. `timestep_rounding` "fp16" rounds the model
    timesteps as the release's float16 pipeline does.
    """

    config_name = SCHEDULER_CONFIG
    order = 1

    @register_to_config
    def __init__(
        self,
        resolutions: Sequence[int] = SCHEDULER_DEFAULTS["resolutions"],
        window_ratios: Sequence[float] = SCHEDULER_DEFAULTS["window_ratios"],
        gamma: float = SCHEDULER_DEFAULTS["gamma"],
        grid: str = SCHEDULER_DEFAULTS["grid"],
        jump: str = SCHEDULER_DEFAULTS["jump"],
        default_steps: Sequence[int] = SCHEDULER_DEFAULTS["default_steps"],
        default_cfg: float | Sequence[float] = SCHEDULER_DEFAULTS["default_cfg"],
        default_mode: str = SCHEDULER_DEFAULTS["default_mode"],
        timestep_rounding: str = SCHEDULER_DEFAULTS["timestep_rounding"],
    ) -> None:
        self.flow = FlowConfig(
            resolutions=tuple(resolutions), window_ratios=tuple(window_ratios), gamma=gamma, grid=grid, jump=jump
        )
        check_mode(default_mode)
        if timestep_rounding not in TIMESTEP_ROUNDINGS:
            raise ConfigError(
                f"timestep_rounding must be one of {', '.join(TIMESTEP_ROUNDINGS)}, got {timestep_rounding!r}"
            )

    @classmethod
    def from_flow(cls, flow: FlowConfig, **settings) -> "NamiFlowScheduler":
        return cls(
            resolutions=list(flow.resolutions),
            window_ratios=list(flow.window_ratios),
            gamma=flow.gamma,
            grid=flow.grid,
            jump=flow.jump,
            **settings,
        )

    def stage_grid(self, plan: FlowPlan, k: int, steps: int) -> tuple[np.ndarray, np.ndarray]:
        """Euler grid of window k of `plan`: (local ratios (steps + 1,) from 1 to 0, model
        timesteps (steps,) in [0, 1])."""
        if steps <= 0:
            raise ConfigError(f"steps must be positive, got {steps}")
        window = plan[k]
        if plan.public is not None:
            ratios, taus = public_stage_grid(plan.public, k, steps)
        else:
            ratios = window.warp(np.linspace(1.0, 0.0, steps + 1))
            taus = window.tau(ratios[:-1])
        return ratios, round_timesteps(taus, self.config.timestep_rounding)

    @staticmethod
    def step(z: torch.Tensor, velocity: torch.Tensor, r: float, r_next: float) -> torch.Tensor:
        """One Euler step from local ratio r to r_next: z (B, C, h, w) + (r_next - r) * velocity."""
        return z + float(r_next - r) * velocity.float()
