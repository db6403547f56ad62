"""The flow settings a model directory keeps in `scheduler/scheduler_config.json`, read without torch.

`NamiFlowScheduler` writes that file (its diffusers config) and takes the defaults of its settings
from `SCHEDULER_DEFAULTS`; `read_saved_flow` reads the file back the same way, a missing key taking
the same default, for `nami info` and `nami bench`, which need no weights and no torch.
`read_saved_model` adds the transformer's shape and the codec's pixels per token, and
`check_sampling` refuses, before the model loads, what its plan cannot sample (a step or guidance
list of another length than its windows, a size its stages cannot halve into).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import STEPS_PER_STAGE, FlowConfig, ModelConfig
from ..errors import NamiError
from ..user_files import read_json_object

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
FLUX_VAE_PIXELS_PER_TOKEN = 16  # f8 VAE, 2x2 packing


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


@dataclass(frozen=True)
class SavedModel:
    """What a model directory's configs say, no weights read: the transformer's shape, the flow
    and sampling defaults, and the codec's pixels per token."""

    model: ModelConfig
    saved: SavedFlow
    pixels_per_token: int


def read_saved_model(folder: str | Path) -> SavedModel:
    """The configs of the model directory `folder` (transformer, scheduler, codec)."""
    root = Path(folder)
    if not root.is_dir():
        raise NamiError(f"model directory {root} does not exist")
    path = root / "transformer" / "config.json"
    transformer = read_json_object(path, "transformer config")
    try:
        model = ModelConfig.from_transformer_config(transformer)
    except (KeyError, TypeError, ValueError) as exc:
        raise NamiError(f"transformer config {path} is not a transformer's config ({type(exc).__name__}: {exc})") from None
    saved = read_saved_flow(root / "scheduler")
    codec = read_json_object(root / "codec" / "config.json", "codec config")
    if codec.get("_class_name") == "PixelCodec":
        ppt = codec.get("patch_size", 1)
        if isinstance(ppt, bool) or not isinstance(ppt, int) or ppt < 1:
            raise NamiError(f"codec config {root / 'codec' / 'config.json'}: patch_size must be a positive integer, "
                            f"got {ppt!r}")
    else:
        ppt = FLUX_VAE_PIXELS_PER_TOKEN
    return SavedModel(model, saved, ppt)


def check_sampling(folder: str | Path, mode: str | None = None, steps=None, cfg=None, height: int | None = None,
                   width: int | None = None) -> None:
    """Refuse, from the configs of the model directory `folder` and before its weights load, the
    sampling settings its plan cannot take: the mode, the size (`height` x `width`, None: the
    model's side), `steps` and `cfg` (None: the model's). A folder that is not a nami model
    directory (a public NAMI-T2I release), or one whose configs cannot be read, is checked when it
    loads."""
    from .plan import sampling_plan

    if not (Path(folder) / "model_index.json").is_file():
        return
    try:
        found = read_saved_model(folder)
    except NamiError:  # a damaged model directory: loading it names what is wrong
        return
    plan = sampling_plan(found.saved.flow, found.model.stage_ends, found.pixels_per_token,
                         mode or found.saved.default_mode, height=height, width=width)
    plan.stage_steps(steps if steps is not None else found.saved.default_steps, "--steps")
    plan.stage_guidance(cfg if cfg is not None else found.saved.default_cfg, "--cfg")
