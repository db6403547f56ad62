"""The flow settings a model was trained with, saved beside its weights (`scheduler/`)."""

from __future__ import annotations

from typing import Sequence

from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from ..config import FlowConfig, check_mode
from .schedule import FlowPlan


class NamiFlowScheduler(SchedulerMixin, ConfigMixin):
    """Stage resolutions, window ratios, gamma, grid, jump type, timestep rounding and sampling
    defaults (`default_cfg`: one guidance scale, or one per stage).

    `plan(mode, stage_ends, pixels_per_token)` turns it into the `FlowPlan` a mode runs.
    """

    config_name = "scheduler_config.json"
    order = 1

    @register_to_config
    def __init__(
        self,
        resolutions: Sequence[int] = (256, 512, 1024),
        window_ratios: Sequence[float] = (1.0, 1.0, 1.0),
        gamma: float = 1.0 / 3.0,
        grid: str = "exact",
        jump: str = "renoise",
        default_steps: Sequence[int] = (10, 10, 10),
        default_cfg: float | Sequence[float] = 3.0,
        default_mode: str = "nami",
        timestep_rounding: str = "none",
    ) -> None:
        self.flow = FlowConfig(
            resolutions=tuple(resolutions), window_ratios=tuple(window_ratios), gamma=gamma, grid=grid, jump=jump,
            timestep_rounding=timestep_rounding,
        )
        check_mode(default_mode)

    @classmethod
    def from_flow(cls, flow: FlowConfig, **defaults) -> "NamiFlowScheduler":
        return cls(
            resolutions=list(flow.resolutions),
            window_ratios=list(flow.window_ratios),
            gamma=flow.gamma,
            grid=flow.grid,
            jump=flow.jump,
            timestep_rounding=flow.timestep_rounding,
            **defaults,
        )

    def plan(self, mode: str, stage_ends: Sequence[int], pixels_per_token: int) -> FlowPlan:
        return FlowPlan(mode, self.flow, stage_ends, pixels_per_token)
