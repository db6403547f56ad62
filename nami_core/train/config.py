"""`nami train` settings and the model they build, checked against the prepared data; the settings
`nami info --train-memory` estimates a step of (`TrainMemoryRequest`).

`TrainConfig` is the one owner of `nami train`'s defaults and of the checks that need no data: the
command line passes what was given (None for the rest), Python callers construct it the same way,
and both get the same one-line errors at construction, before torch is imported. Text given for
the list and schedule fields ("256,512,1024", "0:4:2:1,120000:2:4:1") is parsed there, once, into
the typed values the run uses.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

from ..config import (ATTENTION_BACKENDS, CHECKPOINTING, DTYPE_NAMES, MAX_SEED, MAX_STEP_COUNT, MODES, PREDICTIONS, PRESETS,
                      TEXT_POSITIONS, TIMESTEP_SAMPLINGS, FlowConfig, ModelConfig, check_at_least, check_fields,
                      check_field, check_range, field_default, get_preset, guidance_scales, in_range, number_text, one_of,
                      parse_float_list, parse_int_list, parse_weights, step_counts, validate_resolutions, when_empty, within,
                      check_relations, excludes, needs)
from ..codecs.spec import MAX_PATCH
from ..errors import ConfigError, NamiError
from ..input_paths import FILE, MODEL, check_input, check_reads, reads
from ..output_targets import CHECKPOINT, DATA
from ..model.lora import LORA_TARGETS
from .phases import PAPER_LR, Phase, default_ratios, format_phases, parse_phases, parse_stage_mix

DTYPES = ("auto", *DTYPE_NAMES)  # what `--dtype` takes for training (train/precision.py resolves auto)
PRELOADS = ("auto", "yes", "no")
STAGE_DRAWS = ("random", "split")
RESOLVED_PATHS = ("data", "init", "config_file", "validation_prompts")  # inputs recorded as absolute paths
MAX_GPUS = 65_536  # GPUs of one run
# samples per micro-batch per process: the memory guard (`memory_guard`) refuses what does not fit,
# with its estimate; larger counts are typos
MAX_TRAIN_BATCH = 1_000_000
# micro-batches of one optimizer step (--gradient-accumulation-steps); the step's samples, batch size
# times these, are drawn and held together, at most `MAX_TRAIN_BATCH` of them
MAX_ACCUMULATION = 10_000
MAX_ADAM_EPSILON = 1.0  # AdamW's epsilon; a larger one swamps every gradient's scale (the step is lr x m / epsilon)
# diffusers' `get_scheduler` names (diffusers.optimization) that `--lr-scheduler` takes
LR_SCHEDULERS = ("constant", "linear", "cosine", "cosine_with_restarts", "polynomial", "constant_with_warmup")
OPTIMIZERS = ("adamw", "adamw8bit")
REPORT_TO = ("none", "tensorboard", "wandb", "all")
# what a tracker or optimizer needs: the module that must be installed, and how to install it
PACKAGES = {"tensorboard": ("tensorboard", "pip install 'nami[tensorboard]'"),
            "wandb": ("wandb", "pip install wandb"),
            "adamw8bit": ("bitsandbytes", "pip install bitsandbytes")}
TRACKERS = ("tensorboard", "wandb")  # what `--report-to all` means: those of them installed
DEFAULT_VALIDATION_EVERY = 500


@dataclass
class TrainConfig:
    """Everything `nami train` was asked for (`nami train --help` says what each field means).

    After construction: `stages` is a tuple of ints; `stage_mix` and `lr_schedule` are tuples of
    `Phase` (the defaults filled in: the paper's schedules, or a constant `lr`); `window_ratios`,
    `sample_steps` and `sample_cfg` are tuples of numbers (the first two None: the config file's or
    the model's); `stage_loss_weights` is "auto" or a tuple of weights.
    """

    data: Path = field(metadata=reads(DATA))
    out: Path
    stages: tuple[int, ...] | str
    preset: str | None = field(default=None, metadata={**one_of(tuple(PRESETS)), "shown": "tiny, without --config or --model"})
    config_file: Path | None = field(default=None, metadata=reads(FILE, "--config"))
    init: Path | None = field(default=None, metadata=reads(MODEL, "--model"))
    mode: str = field(default="nami", metadata=one_of(MODES))
    steps: int = field(default=1000, metadata=within(1, MAX_STEP_COUNT))
    batch_size: int = field(default=32, metadata=within(1, MAX_TRAIN_BATCH))
    gradient_accumulation_steps: int = field(default=1, metadata=within(1, MAX_ACCUMULATION))
    lr: float | None = field(default=None, metadata={**in_range(0.0, None, low_open=True), **excludes("lr_schedule"),
                                                     "shown": "the --lr-schedule"})
    stage_mix: tuple[Phase, ...] | str | None = field(
        default=None, metadata={"shown": "0:4:2:1,120000:2:4:1,200000:1:2:4 for 3 stages, else equal"})
    lr_schedule: tuple[Phase, ...] | str | None = field(default=None, metadata={"shown": PAPER_LR})
    lr_scheduler: str = field(default="constant", metadata=one_of(LR_SCHEDULERS))
    lr_warmup_steps: int = field(default=0, metadata=within(0, MAX_STEP_COUNT))
    optimizer: str = field(default="adamw", metadata=one_of(OPTIMIZERS))
    adam_beta1: float = field(default=0.9, metadata=in_range(0.0, 1.0, high_open=True))
    adam_beta2: float = field(default=0.999, metadata=in_range(0.0, 1.0, high_open=True))
    # decoupled: each step multiplies the weights by 1 - lr x decay (`_validate_optimizer` keeps it above 0)
    adam_weight_decay: float = field(default=0.0, metadata=in_range(0.0, None))
    adam_epsilon: float = field(default=1e-8, metadata=in_range(0.0, MAX_ADAM_EPSILON, low_open=True))
    timestep_sampling: str = field(default="logit-normal", metadata=one_of(TIMESTEP_SAMPLINGS))
    stage_loss_weights: tuple[float, ...] | str = "auto"
    cfg_dropout: float = field(default=0.1, metadata=in_range(0.0, 1.0, high_open=True))
    ema_decay: float = field(default=0.9999, metadata=in_range(0.0, 1.0, high_open=True))
    # auto: accelerate's mixed precision, else bf16 on CUDA, fp32 on the CPU (train/precision.py)
    dtype: str = field(default="auto", metadata=one_of(DTYPES))
    attention: str = field(default="auto", metadata=one_of(ATTENTION_BACKENDS))  # checked by running it (model/attention.py)
    grad_checkpointing: str = field(default="none", metadata=one_of(CHECKPOINTING))
    compile: bool = False
    fsdp: bool = False
    save_every: int = field(default=1000, metadata=within(1, MAX_STEP_COUNT))
    keep: int = field(default=3, metadata=within(0, MAX_STEP_COUNT))
    resume: str | None = None
    seed: int = 0
    log_every: int = field(default=10, metadata=within(1, MAX_STEP_COUNT))
    grad_clip: float = 1.0
    max_nan_steps: int = field(default=20, metadata=within(0, MAX_STEP_COUNT))
    patch_size: int | None = field(default=None, metadata={**within(1, MAX_PATCH), "shown": "the data's"})
    window_ratios: tuple[float, ...] | str | None = field(default=None, metadata={"shown": "the config's, else equal"})
    prediction: str | None = field(default=None, metadata={**one_of(PREDICTIONS), "shown": "the model's"})
    text_positions: str | None = field(default=None, metadata={**one_of(TEXT_POSITIONS), "shown": "the model's"})
    sample_steps: tuple[int, ...] | str | None = field(default=None, metadata={"shown": "10 per stage"})
    sample_cfg: tuple[float, ...] | str | float = 3.0
    preload: str = field(default="auto", metadata=one_of(PRELOADS))
    time_budget: float | None = None
    stage_draw: str = field(default="random", metadata=one_of(STAGE_DRAWS))  # "split": the mix's exact share per step (nami bench train)
    lora: int | None = None  # adapter rank: train a LoRA adapter on the frozen model (checked by `check_lora_settings`)
    lora_targets: str = field(default="attn", metadata=one_of(tuple(LORA_TARGETS)))
    lora_alpha: float | None = field(default=None, metadata={**needs("lora"), "shown": "the rank"})
    report_to: str = field(default="none", metadata=one_of(REPORT_TO))
    validation_prompt: tuple[str, ...] = field(default=(), metadata=when_empty("give the prompt to draw"))  # repeatable
    validation_prompts: Path | None = field(default=None, metadata=reads(FILE))  # a text file, one prompt per line
    validation_every: int | None = field(default=None, metadata={**within(1, MAX_STEP_COUNT),
                                                                 "shown": str(DEFAULT_VALIDATION_EVERY)})
    validation_seed: int | None = field(default=None, metadata={**within(0, MAX_SEED), "shown": "0"})

    def __post_init__(self) -> None:
        check_relations(self)  # --lora-alpha without --lora, --lr beside --lr-schedule
        self.data, self.out = Path(self.data), Path(self.out)
        self.validation_prompt = tuple(self.validation_prompt)
        if self.validation_prompts is not None:
            self.validation_prompts = Path(self.validation_prompts)
        self.stages = parse_int_list(self.stages, "--stages")
        validate_resolutions(self.stages, "--stages")
        for name in ("stage_mix", "lr_schedule", "window_ratios", "sample_steps"):
            value = getattr(self, name)
            if isinstance(value, str) and not value.strip():
                raise ConfigError(f"--{name.replace('_', '-')} is empty; leave it out for the default")
        num_stages = len(self.stages)
        self.stage_mix = _phases(self.stage_mix, lambda text: parse_stage_mix(text, num_stages),
                                 default_ratios(num_stages))
        check_field(self, "lr")
        lr_text = f"0:{self.lr!r}" if self.lr is not None else PAPER_LR
        self.lr_schedule = _phases(self.lr_schedule, lambda text: parse_phases(text, "--lr-schedule", 1, check_lr),
                                   lr_text)
        self.lr = None  # folded into lr_schedule: a copy (replace, the run's record) gives the schedule alone
        if self.window_ratios is not None:
            self.window_ratios = parse_weights(self.window_ratios, "--window-ratios", num_stages, positive=True)
        if isinstance(self.sample_steps, str):
            self.sample_steps = parse_int_list(self.sample_steps, "--sample-steps")
        if self.sample_steps is not None:
            self.sample_steps = tuple(self.sample_steps)
            for count in self.sample_steps:
                check_at_least("--sample-steps", count, 1)
            step_counts(self.sample_steps, "--sample-steps")
            per_stage("--sample-steps", self.sample_steps, num_stages)
        self.sample_cfg = guidance_scales(self.sample_cfg, "--sample-cfg")
        per_stage("--sample-cfg", self.sample_cfg, num_stages)
        if self.stage_loss_weights != "auto":
            self.stage_loss_weights = parse_loss_weights(self.stage_loss_weights)
            per_stage("--stage-loss-weights", self.stage_loss_weights, num_stages)
        self.validate()

    def validate(self) -> None:
        """The checks that need no data and no model (construction runs them)."""
        check_fields(self)
        if self.time_budget is not None and not self.time_budget > 0:
            raise ConfigError(f"--time-budget must be a positive number of minutes, got {self.time_budget:g}")
        if not self.grad_clip > 0:
            raise ConfigError(f"--grad-clip must be a positive gradient norm (0 would zero every update), "
                              f"got {self.grad_clip:g}")
        if sum(x is not None for x in (self.preset, self.config_file, self.init)) > 1:
            raise ConfigError("give one of --preset, --config and --model")
        if self.lora is not None:
            self._validate_lora()
        self._validate_optimizer()
        self._validate_validation()
        self.trackers()  # a tracker asked for that is not installed is refused now
        self.check_out()

    def check_inputs(self) -> None:
        """What the run reads, before anything loads: the data (prepared for `stages`), the model
        config file, the model, the checkpoint to resume (`input_paths`)."""
        from ..data.manifest import check_data_stages

        check_reads(self)
        check_data_stages(self.data, self.stages)
        if self.resume not in (None, "latest"):
            check_input(self.resume, "--resume", CHECKPOINT, "give a checkpoint folder RUN/checkpoints/step-N, or latest")

    def inputs(self) -> dict[str, Path | None]:
        """The run's inputs by option: its folder may not be, hold or lie inside any of them."""
        return {"--data": self.data, "--model": self.init, "--config": self.config_file,
                "--validation-prompts": self.validation_prompts}

    @property
    def images_per_step(self) -> int:
        """Samples of one optimizer step per process: `batch_size` per micro-batch, times the micro-batches."""
        return self.batch_size * self.gradient_accumulation_steps

    def trackers(self) -> tuple[str, ...]:
        """The accelerate trackers `report_to` names (`all`: those of `TRACKERS` installed); a named
        one that is not installed is refused in one line."""
        from ..packages import installed

        if self.report_to == "none":
            return ()
        if self.report_to == "all":
            found = tuple(name for name in TRACKERS if installed(PACKAGES[name][0]))
            if not found:
                raise ConfigError(f"--report-to all: none of {', '.join(TRACKERS)} is installed; "
                                  f"{PACKAGES['tensorboard'][1]} or {PACKAGES['wandb'][1]}")
            return found
        _require(self.report_to, f"--report-to {self.report_to}")
        return (self.report_to,)

    def validation_prompt_list(self) -> list[str]:
        """The prompts validation draws: `--validation-prompt`s as given, or the non-empty lines of
        `--validation-prompts FILE` (UTF-8); [] without validation."""
        if self.validation_prompts is None:
            return list(self.validation_prompt)
        from ..user_files import read_text

        lines = [line.strip() for line in read_text(self.validation_prompts, "--validation-prompts").splitlines()]
        prompts = [line for line in lines if line]
        if not prompts:
            raise ConfigError(f"--validation-prompts {self.validation_prompts} holds no prompt (one per line)")
        return prompts

    @property
    def validation_interval(self) -> int:
        return self.validation_every if self.validation_every is not None else DEFAULT_VALIDATION_EVERY

    def _validate_optimizer(self) -> None:
        """What the field bounds cannot say alone (they are checked first, by `check_fields`)."""
        if self.optimizer != "adamw":
            _require(self.optimizer, f"--optimizer {self.optimizer}")
        if self.images_per_step > MAX_TRAIN_BATCH:
            raise ConfigError(f"--batch-size {self.batch_size} x --gradient-accumulation-steps "
                              f"{self.gradient_accumulation_steps} is {self.images_per_step:,} samples per step; "
                              f"a step draws at most {MAX_TRAIN_BATCH:,}")
        peak = max(value for phase in self.lr_schedule for value in phase.values)
        if self.adam_weight_decay * peak >= 1:
            raise ConfigError(f"--adam-weight-decay {number_text(self.adam_weight_decay)} with the learning rate "
                              f"{number_text(peak)}: each step would multiply the weights by 1 - lr x decay "
                              f"= {number_text(1 - peak * self.adam_weight_decay)}; give a decay below "
                              f"1 / lr = {number_text(1 / peak)}")
        if self.lr_warmup_steps and self.lr_scheduler == "constant":
            raise ConfigError(f"--lr-warmup-steps {self.lr_warmup_steps}: the constant --lr-scheduler has no warmup; "
                              "give --lr-scheduler constant_with_warmup (or linear, cosine, ...)")
        if self.lr_warmup_steps >= self.steps:
            raise ConfigError(f"--lr-warmup-steps {self.lr_warmup_steps} must be below --steps {self.steps} "
                              "(the learning rate would never reach its peak)")

    def _validate_validation(self) -> None:
        if self.validation_prompt and self.validation_prompts is not None:
            raise ConfigError("give --validation-prompt or --validation-prompts, not both")
        wanted = bool(self.validation_prompt) or self.validation_prompts is not None
        if not wanted:
            extra = [flag for flag, value in (("--validation-every", self.validation_every),
                                              ("--validation-seed", self.validation_seed)) if value is not None]
            if extra:
                raise ConfigError(f"{' and '.join(extra)} {'needs' if len(extra) == 1 else 'need'} "
                                  "--validation-prompt or --validation-prompts")
            return
        if self.fsdp:
            raise ConfigError("validation images are drawn by rank 0 with the whole model, which --fsdp shards; "
                              "train with DDP, or sample checkpoints with `nami convert checkpoint` + `nami sample`")
        if self.validation_prompts is not None:  # read now: a missing, empty or unreadable one is refused before any work
            check_input(self.validation_prompts, "--validation-prompts", FILE)
        count = len(self.validation_prompt_list())
        seed = self.validation_seed or 0
        if seed + count - 1 > MAX_SEED:
            raise ConfigError(f"--validation-seed {seed} with {count} prompts gives seeds up to {seed + count - 1}, "
                              f"beyond the largest seed {MAX_SEED}")

    def check_out(self) -> None:
        """The run folder: not empty or `.`, not an input, and a run folder (or a new or empty one)."""
        from ..output_targets import RUN, check_out_folder

        check_out_folder(self.out, RUN, self.inputs())

    def _validate_lora(self) -> None:
        from ..model.lora import check_lora_settings

        if self.init is None:
            raise ConfigError("--lora trains an adapter on a model: give the model with --model MODEL")
        if self.fsdp:
            raise ConfigError("--lora trains with DDP, not --fsdp (the frozen model is not sharded)")
        check_lora_settings(self.lora, self.lora_alpha, self.lora_targets)

    def to_json(self) -> dict[str, Any]:
        """The settings as `RUN/train_config.json` records them: paths and parsed values as text, the
        inputs as absolute paths, so the run can be read back (`nami convert checkpoint`) from any
        working folder."""
        data = asdict(self)
        for key, value in data.items():
            if isinstance(value, Path):
                data[key] = str(value.resolve()) if key in RESOLVED_PATHS else str(value)
        data["stages"] = list(self.stages)
        data["stage_mix"] = format_phases(self.stage_mix)
        data["lr_schedule"] = format_phases(self.lr_schedule)
        data["validation_prompt"] = list(self.validation_prompt)
        for key in ("window_ratios", "sample_steps", "sample_cfg", "stage_loss_weights"):
            value = getattr(self, key)
            data[key] = value if value is None or isinstance(value, str) else ",".join(map(number_text, value))
        return data


@dataclass
class TrainMemoryRequest:
    """`nami info --train-memory`: the `nami train` settings the estimate is for. Batch size,
    dtype, checkpointing, EMA and LoRA targets default to `TrainConfig`'s, so the estimate is of
    the run `nami train` would start; `stage_mix` None takes the costliest phase of the default
    schedule; `gpus` share the weights under `fsdp`."""

    batch_size: int = field(default=field_default(TrainConfig, "batch_size"), metadata=within(1, MAX_TRAIN_BATCH))
    dtype: str = field(default=field_default(TrainConfig, "dtype"), metadata=one_of(DTYPES))
    grad_checkpointing: str = field(default=field_default(TrainConfig, "grad_checkpointing"),
                                    metadata=one_of(CHECKPOINTING))
    fsdp: bool = False
    gpus: int | None = field(default=None, metadata={**within(1, MAX_GPUS), "shown": "1"})
    stage_mix: str | None = field(default=None, metadata={"shown": "the costliest phase of the default schedule"})
    ema_decay: float = field(default=field_default(TrainConfig, "ema_decay"), metadata=in_range(0.0, 1.0, high_open=True))
    lora: int | None = None
    lora_targets: str | None = field(default=None, metadata={"shown": field_default(TrainConfig, "lora_targets")})

    def __post_init__(self) -> None:
        from ..model.lora import check_lora_settings

        if self.stage_mix is not None and not self.stage_mix.strip():
            raise ConfigError("--stage-mix is empty; leave it out for the default")
        check_fields(self)
        if self.lora is None and self.lora_targets is not None:
            raise ConfigError("--lora-targets needs --lora")
        if self.lora is not None:
            check_lora_settings(self.lora, None, self.targets)
        if self.fsdp and self.gpus is None:
            raise ConfigError("--fsdp needs --gpus N (the GPUs that share the weights)")

    @property
    def targets(self) -> str:
        return self.lora_targets or field_default(TrainConfig, "lora_targets")

    def report(self, description, text_tokens: int) -> dict[str, Any]:
        """The estimate for `description` (`info.ModelDescription`); with `lora`, the adapter's
        parameters are counted on a meta-device model (imports torch)."""
        if self.stage_mix is not None:
            parse_stage_mix(self.stage_mix, description.flow.num_stages)
        trainable = None
        if self.lora is not None:
            from .adapters import lora_parameter_count

            trainable = lora_parameter_count(description.model, self.lora, self.targets)
        from .memory import train_memory_report

        report = train_memory_report(
            description.name, description.model, description.flow, description.pixels_per_token,
            description.default_mode, batch_size=self.batch_size, dtype=self.dtype, text_tokens=text_tokens,
            grad_checkpointing=self.grad_checkpointing, stage_mix=self.stage_mix, fsdp=self.fsdp,
            gpus=self.gpus or 1, ema=self.ema_decay > 0, trainable=trainable)
        if self.lora is not None:
            report["lora"] = {"rank": self.lora, "targets": self.targets, "trainable_params": report["trainable_params"]}
        return report


def train_memory_request(enabled: bool, **options: Any) -> TrainMemoryRequest | None:
    """The request of `--train-memory` from the options given (None: not given); without
    `enabled`, any option given is refused as needing --train-memory."""
    given = {name: value for name, value in options.items() if value is not None and value is not False}
    if not enabled:
        if given:
            flags = ", ".join("--" + name.replace("_", "-") for name in given)
            raise ConfigError(f"{flags} {'needs' if len(given) == 1 else 'need'} --train-memory")
        return None
    return TrainMemoryRequest(**given)


def _require(name: str, flag: str) -> None:
    """ConfigError unless the package `PACKAGES[name]` needs is installed."""
    from ..packages import installed

    module, how = PACKAGES[name]
    if not installed(module):
        raise ConfigError(f"{flag} needs {module}, which is not installed; {how}")


def _phases(value: Sequence[Phase] | str | None, parse, default: str) -> tuple[Phase, ...]:
    """A schedule as phases: parsed from text, or `default` parsed when None."""
    if value is None:
        value = default
    return tuple(parse(value) if isinstance(value, str) else value)


def parse_loss_weights(value: Sequence[float] | str) -> tuple[float, ...]:
    """Fixed stage loss weights (`--stage-loss-weights 1,0.5,1`): relative weights
    (`config.parse_weights`), not all 0 (that would train nothing); their count is checked against
    the plan's windows (`StageLossWeights`)."""
    weights = parse_float_list(value, "--stage-loss-weights") if isinstance(value, str) else tuple(map(float, value))
    if weights and all(w == 0 for w in weights):
        given = value if isinstance(value, str) else ",".join(map(number_text, weights))
        raise ConfigError(f"--stage-loss-weights {given} are all 0: no stage would train; give at least one "
                          "positive weight, or auto")
    return parse_weights(weights, "--stage-loss-weights")


def check_lr(values: tuple[float, ...], where: str) -> None:
    """A learning-rate phase's value: above 0 (one that makes the run diverge stops it after
    `--max-nan-steps` non-finite steps)."""
    check_range(where, values[0], 0.0, None, low_open=True)


def per_stage(name: str, values: Sequence[Any], num_stages: int) -> None:
    """ConfigError unless `values` are one value for every stage or one per stage."""
    if len(values) not in (1, num_stages):
        raise ConfigError(f"{name} lists {len(values)} values for {num_stages} stages; give one, or one per stage")


def read_model_file(path: Path) -> tuple[ModelConfig | None, dict[str, Any]]:
    """A `--config` JSON: model fields (ModelConfig) plus optional "flow" settings."""
    from ..user_files import is_number, read_json_object

    data = read_json_object(path, "--config")  # strict JSON: a key given twice is refused
    flow = data.pop("flow", None)
    data.pop("comment", None)
    if flow is None:
        return data, {}
    if not isinstance(flow, dict):
        raise NamiError(f"--config {path}: \"flow\" must be an object such as {{\"window_ratios\": [1, 1, 1]}}, "
                        f"got {json.dumps(flow)}")
    unknown = sorted(set(flow) - set(FLOW_FILE_FIELDS))
    if unknown:
        raise NamiError(f"--config {path}: unknown \"flow\" field(s) {', '.join(unknown)}; "
                        f"known: {', '.join(FLOW_FILE_FIELDS)}")
    ratios, gamma = flow.get("window_ratios", []), flow.get("gamma", 1 / 3)
    if not isinstance(ratios, list) or not all(is_number(r) for r in ratios) or not is_number(gamma):
        raise NamiError(f"--config {path}: \"flow\" takes numbers (window_ratios a list of them), got {json.dumps(flow)}")
    return data, flow


FLOW_FILE_FIELDS = ("window_ratios", "gamma")  # what a --config's "flow" section may set


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
            verify_artefact(settings.init, "--model")  # its record, when it has one (cached)
        if not path.is_file():
            raise NamiError(f"--model {settings.init} has no transformer/config.json (a model directory, e.g. from `nami convert flux`)")
        try:
            model = ModelConfig.from_transformer_config(json.loads(path.read_text()))
        except (json.JSONDecodeError, KeyError) as exc:
            raise NamiError(f"--model {settings.init}: unreadable transformer config ({exc})") from None
        for key, value in data_dims.items():
            if getattr(model, key) != value:
                raise NamiError(f"--model has {key}={getattr(model, key)} but the data needs {value}")
    elif settings.config_file is not None:
        fields, flow = read_model_file(settings.config_file)
        for key, value in data_dims.items():
            if key in fields and int(fields[key]) != value:
                raise NamiError(f"--config sets {key}={fields[key]} but the data needs {value}")
        model = ModelConfig.from_dict({**fields, **data_dims})
    else:
        model = replace(get_preset(settings.preset or "tiny").model, **data_dims)
    if settings.prediction is not None and settings.init is not None and settings.prediction != model.prediction:
        raise NamiError(f"--prediction {settings.prediction} differs from the --model's {model.prediction}")
    if settings.prediction is not None:
        model = replace(model, prediction=settings.prediction)
    if settings.text_positions is not None:  # no weights depend on it, so a --model may change it
        model = replace(model, text_positions=settings.text_positions)
    return model, flow


def build_flow(settings: TrainConfig, flow_fields: dict[str, Any]) -> FlowConfig:
    ratios = settings.window_ratios if settings.window_ratios is not None else flow_fields.get("window_ratios", ())
    return FlowConfig(
        resolutions=tuple(settings.stages),
        window_ratios=tuple(ratios),
        gamma=float(flow_fields.get("gamma", 1 / 3)),
    )
