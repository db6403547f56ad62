"""The flow settings a model directory keeps in `scheduler/scheduler_config.json`, read without torch.

`NamiFlowScheduler` writes that file (its diffusers config) and takes the defaults of its settings
from `SCHEDULER_DEFAULTS`; `read_saved_flow` reads the file back the same way, a missing key taking
the same default, for `nami info` and `nami bench`, which need no weights and no torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import STEPS_PER_STAGE, FlowConfig
from ..errors import NamiError

SCHEDULER_CONFIG = "scheduler_config.json"
SCHEDULER_DEFAULTS: dict[str, Any] = {
    "resolutions": (256, 512, 1024),
    "window_ratios": (1.0, 1.0, 1.0),
    "gamma": 1.0 / 3.0,
    "grid": "exact",
    "jump": "renoise",
    "default_steps": (STEPS_PER_STAGE,) * 3,
    "default_cfg": 3.0,
    "default_mode": "nami",
    "timestep_rounding": "none",
}
FLOW_FIELDS = ("resolutions", "window_ratios", "gamma", "grid", "jump")


@dataclass(frozen=True)
class SavedFlow:
    """A model's flow and the sampling defaults saved with it."""

    flow: FlowConfig
    default_steps: tuple[int, ...]
    default_cfg: float | tuple[float, ...]
    default_mode: str
    timestep_rounding: str


def read_saved_flow(folder: str | Path) -> SavedFlow:
    """The settings in `folder/scheduler_config.json` (a missing key: `SCHEDULER_DEFAULTS`)."""
    path = Path(folder) / SCHEDULER_CONFIG
    if not path.is_file():
        raise NamiError(f"missing {path}")
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise NamiError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(saved, dict):
        raise NamiError(f"{path} must hold a JSON object")
    settings = {**SCHEDULER_DEFAULTS, **{k: v for k, v in saved.items() if k in SCHEDULER_DEFAULTS}}
    cfg = settings["default_cfg"]
    return SavedFlow(
        FlowConfig(**{k: tuple(settings[k]) if isinstance(settings[k], list) else settings[k] for k in FLOW_FIELDS}),
        tuple(settings["default_steps"]),
        tuple(cfg) if isinstance(cfg, list) else cfg,
        settings["default_mode"],
        settings["timestep_rounding"],
    )
