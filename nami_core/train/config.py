"""`nami train` settings and the model they build, checked against the prepared data."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from ..config import DTYPE_NAMES, TEXT_POSITIONS, FlowConfig, ModelConfig, check_mode, get_preset, parse_float_list
from ..errors import ConfigError, NamiError
from ..flow.objective import RATIO_SAMPLINGS
from .checkpointing import CHECKPOINTING

DTYPES = DTYPE_NAMES
RESOLVED_PATHS = ("data", "init", "config_file")  # inputs recorded as absolute paths


@dataclass
class TrainConfig:
    data: Path
    out: Path
    stages: tuple[int, ...]
    preset: str | None = None
    config_file: Path | None = None
    init: Path | None = None
    mode: str = "nami"
    steps: int = 1000
    batch_size: int = 32
    lr: float | None = None
    ratio_schedule: str | None = None
    lr_schedule: str | None = None
    timestep_sampling: str = "logit-normal"
    stage_loss_weights: str = "auto"
    cfg_dropout: float = 0.1
    ema_decay: float = 0.9999
    dtype: str = "auto"  # auto: accelerate's mixed precision, else bf16 on CUDA, fp32 on the CPU (train/precision.py)
    attention: str = "auto"  # auto | native | xformers | flash (model/attention.py)
    grad_checkpointing: str = "none"
    compile: bool = False
    fsdp: bool = False
    save_every: int = 1000
    keep: int = 3
    resume: str | None = None
    seed: int = 0
    log_every: int = 10
    grad_clip: float = 1.0
    weight_decay: float = 0.0
    max_nan_steps: int = 20
    patch_size: int | None = None
    window_ratios: str | None = None
    prediction: str | None = None
    text_positions: str | None = None
    sample_steps: str | None = None
    sample_cfg: str | float = 3.0
    preload: str = "auto"
    time_budget: float | None = None
    stage_draw: str = "random"  # "split": every step takes the mix's exact share (nami bench train)
    lora: int | None = None  # adapter rank: train a LoRA adapter on the frozen --init model
    lora_targets: str = "attn"
    lora_alpha: float | None = None

    def validate(self) -> None:
        check_mode(self.mode)
        for name in ("steps", "batch_size", "save_every", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1")
        if self.keep < 0:
            raise ConfigError("--keep must be 0 (keep all) or more")
        if self.timestep_sampling not in RATIO_SAMPLINGS:
            raise ConfigError(f"--timestep-sampling must be one of {', '.join(RATIO_SAMPLINGS)}")
        if self.dtype not in ("auto", *DTYPES):
            raise ConfigError(f"--dtype must be one of auto, {', '.join(DTYPES)}, got {self.dtype!r}")
        from ..model.attention import BACKENDS

        if self.attention not in BACKENDS:
            raise ConfigError(f"--attention must be one of {', '.join(BACKENDS)}, got {self.attention!r}")
        if not 0.0 <= self.cfg_dropout < 1.0:
            raise ConfigError("--cfg-dropout must be in [0, 1)")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError("--ema-decay must be in [0, 1)")
        if self.lr is not None and self.lr <= 0:
            raise ConfigError("--lr must be positive")
        if self.time_budget is not None and not self.time_budget > 0:
            raise ConfigError(f"--time-budget must be a positive number of minutes, got {self.time_budget:g}")
        if not self.grad_clip > 0:
            raise ConfigError(f"--grad-clip must be a positive gradient norm (0 would zero every update), "
                              f"got {self.grad_clip:g}")
        if self.max_nan_steps < 0:
            raise ConfigError(f"--max-nan-steps must be 0 or more, got {self.max_nan_steps}")
        if self.patch_size is not None and self.patch_size < 1:
            raise ConfigError(f"--patch-size must be at least 1, got {self.patch_size}")
        for name in ("ratio_schedule", "lr_schedule", "window_ratios", "sample_steps"):
            value = getattr(self, name)
            if value is not None and not str(value).strip():
                raise ConfigError(f"--{name.replace('_', '-')} is empty; leave it out for the default")
        if self.grad_checkpointing not in CHECKPOINTING:
            raise ConfigError(f"--grad-checkpointing must be one of {', '.join(CHECKPOINTING)}, "
                              f"got {self.grad_checkpointing!r}")
        if self.preload not in ("auto", "yes", "no"):
            raise ConfigError("--preload must be auto, yes or no")
        if self.text_positions is not None and self.text_positions not in TEXT_POSITIONS:
            raise ConfigError(f"--text-positions must be one of {', '.join(TEXT_POSITIONS)}, got {self.text_positions!r}")
        if sum(x is not None for x in (self.preset, self.config_file, self.init)) > 1:
            raise ConfigError("give one of --preset, --config and --init")
        if self.stage_loss_weights != "auto":
            from .staged_loss import parse_fixed_weights

            parse_fixed_weights(self.stage_loss_weights)
        if self.lora is not None:
            self._validate_lora()
        self.check_out()

    def inputs(self) -> dict[str, Path | None]:
        """The run's inputs by option: its folder may not be, hold or lie inside any of them."""
        return {"--data": self.data, "--init": self.init, "--config": self.config_file}

    def check_out(self) -> None:
        """The run folder: not empty or `.`, not an input, and a run folder (or a new or empty one)."""
        from ..output_targets import RUN, check_out_folder

        check_out_folder(self.out, RUN, self.inputs())

    def _validate_lora(self) -> None:
        from ..model.lora import lora_config

        if self.init is None:
            raise ConfigError("--lora trains an adapter on a model: give the model with --init MODEL")
        if self.fsdp:
            raise ConfigError("--lora trains with DDP, not --fsdp (the frozen model is not sharded)")
        lora_config(self.lora, self.lora_alpha, self.lora_targets)  # checks rank, alpha and targets

    def to_json(self) -> dict[str, Any]:
        """The settings as `train_config.json` records them: the inputs as absolute paths, so the
        run can be read back (`nami convert checkpoint`) from any working folder."""
        data = asdict(self)
        for key, value in data.items():
            if isinstance(value, Path):
                data[key] = str(value.resolve()) if key in RESOLVED_PATHS else str(value)
        data["stages"] = list(self.stages)
        return data


def read_model_file(path: Path) -> tuple[ModelConfig | None, dict[str, Any]]:
    """A `--config` JSON: model fields (ModelConfig) plus optional "flow" settings."""
    from ..user_files import read_json_object

    data = read_json_object(path, "--config")  # strict JSON: a key given twice is refused
    flow = data.pop("flow", {}) or {}
    data.pop("comment", None)
    return data, flow


def build_model_config(settings: TrainConfig, manifest: dict[str, Any], patch_size: int) -> tuple[ModelConfig, dict[str, Any]]:
    """The model to train. Input width and text dims follow the data (codec and text encoder)."""
    codec = manifest["codec"]
    data_dims = {
        "in_channels": int(codec["channels"]) * patch_size * patch_size,
        "text_dim": int(manifest["text_encoder"]["sequence_dim"]),
        "pooled_dim": int(manifest["text_encoder"]["pooled_dim"]),
    }
    flow: dict[str, Any] = {}
    if settings.init is not None:
        from ..checksums import verify_artefact

        path = Path(settings.init) / "transformer" / "config.json"
        if Path(settings.init).is_dir():
            verify_artefact(settings.init, "--init model")  # its record, when it has one (cached)
        if not path.is_file():
            raise NamiError(f"--init {settings.init} has no transformer/config.json (a model directory, e.g. from `nami convert flux`)")
        try:
            model = ModelConfig.from_transformer_config(json.loads(path.read_text()))
        except (json.JSONDecodeError, KeyError) as exc:
            raise NamiError(f"--init {settings.init}: unreadable transformer config ({exc})") from None
        for key, value in data_dims.items():
            if getattr(model, key) != value:
                raise NamiError(f"--init model has {key}={getattr(model, key)} but the data needs {value}")
    elif settings.config_file is not None:
        fields, flow = read_model_file(settings.config_file)
        for key, value in data_dims.items():
            if key in fields and int(fields[key]) != value:
                raise NamiError(f"--config sets {key}={fields[key]} but the data needs {value}")
        model = ModelConfig.from_dict({**fields, **data_dims})
    else:
        model = replace(get_preset(settings.preset or "tiny").model, **data_dims)
    if settings.prediction is not None and settings.init is not None and settings.prediction != model.prediction:
        raise NamiError(f"--prediction {settings.prediction} differs from the --init model's {model.prediction}")
    if settings.prediction is not None:
        model = replace(model, prediction=settings.prediction)
    if settings.text_positions is not None:  # no weights depend on it, so an --init model may change it
        model = replace(model, text_positions=settings.text_positions)
    return model, flow


def build_flow(settings: TrainConfig, flow_fields: dict[str, Any]) -> FlowConfig:
    ratios = parse_float_list(settings.window_ratios, "--window-ratios") if settings.window_ratios else flow_fields.get("window_ratios", ())
    return FlowConfig(
        resolutions=tuple(settings.stages),
        window_ratios=tuple(ratios),
        gamma=float(flow_fields.get("gamma", 1 / 3)),
    )
