"""`nami train`: Algorithm 1 on accelerate (one process, DDP, or FSDP over transformer blocks).

`train(settings)` is `TrainingRun.setup` (data, plan, model, optimizer, EMA), `resume`,
`step` until done, and `export` (RUN/final). The loss itself is `staged_loss`.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..data.prepare import check_data_stages
from ..data.store import LatentStore
from ..errors import NamiError
from ..files import write_text_atomic
from ..flow.plan import FlowPlan
from .batches import BatchDrawer, StageGroup
from .checkpoint import load_checkpoint_file, read_trainer_state, resolve_resume, save_checkpoint
from .config import TrainConfig, build_flow, build_model_config
from .export import write_model_dir
from .metrics import MetricsLog, MetricsWindow
from .phases import PAPER_LR, Phase, default_ratios, parse_phases, value_at
from .staged_loss import StagedObjective, StageLossWeights, stage_sums, weighted_loss

PRELOAD_BYTES = 4 << 30


@dataclass
class TrainResult:
    step: int
    final_dir: Path | None
    last_record: dict | None
    nan_skipped: int


def _accelerator(settings: TrainConfig):
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    kwargs = {}
    if settings.fsdp and not torch.cuda.is_available():
        raise NamiError("--fsdp needs CUDA GPUs; without them train with DDP (the default)")
    if settings.fsdp:
        from accelerate.utils import FullyShardedDataParallelPlugin

        kwargs["fsdp_plugin"] = FullyShardedDataParallelPlugin(
            auto_wrap_policy="transformer_based_wrap",
            transformer_cls_names_to_wrap=["FluxTransformerBlock", "FluxSingleTransformerBlock"],
            use_orig_params=True,
            sync_module_states=True,
        )
    mixed = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[settings.dtype]
    # Stage groups leave later blocks unused in some steps.
    ddp = DistributedDataParallelKwargs(find_unused_parameters=True)
    # Without a GPU, cpu=True lets torchrun / accelerate launch start gloo process groups.
    return Accelerator(mixed_precision=mixed, kwargs_handlers=[ddp], cpu=not torch.cuda.is_available(), **kwargs)


def _move(groups: list[StageGroup], device) -> list[StageGroup]:
    return [StageGroup(g.window, g.latents.to(device), g.text.to(device), g.noise.to(device), g.r.to(device))
            for g in groups]


def _ema_path(ckpt: Path, rank: int) -> Path:
    return ckpt / f"ema_rank{rank}.pt"


def _want_preload(settings: TrainConfig, manifest: dict) -> bool:
    if settings.preload != "auto":
        return settings.preload == "yes"
    folder = Path(settings.data)
    size = sum((folder / s["file"]).stat().st_size for s in manifest["shards"] if (folder / s["file"]).is_file())
    return size < PRELOAD_BYTES


def _load_transformer(settings: TrainConfig, model_cfg):
    from ..model.transformer import NamiTransformer

    if settings.init is None:
        torch.manual_seed(settings.seed)
        return NamiTransformer.from_model_config(model_cfg)
    try:
        # text_positions owns no weights, so the run's choice overrides the saved one
        return NamiTransformer.from_pretrained(Path(settings.init) / "transformer",
                                               text_positions=model_cfg.text_positions)
    except (OSError, ValueError, RuntimeError) as exc:
        raise NamiError(f"--init {settings.init}: cannot load the transformer ({str(exc).strip().splitlines()[0]})") from None


@dataclass
class Schedules:
    """The run's piecewise schedules over steps: the stage mix and the learning rate."""

    stage_mix: list[Phase]
    lr: list[Phase]

    @classmethod
    def parse(cls, settings: TrainConfig, num_stages: int) -> "Schedules":
        mix = parse_phases(settings.ratio_schedule or default_ratios(num_stages), "--ratio-schedule", num_stages)
        lr_text = settings.lr_schedule or (f"0:{settings.lr}" if settings.lr is not None else PAPER_LR)
        return cls(mix, parse_phases(lr_text, "--lr-schedule", 1))


class TrainingRun:
    """One run's state between steps: data, plan, model, optimizer, EMA, loss weights, counters."""

    def __init__(self, settings: TrainConfig, manifest: dict, model_cfg, flow, plan: FlowPlan, patch: int,
                 schedules: Schedules) -> None:
        self.settings = settings
        self.manifest = manifest
        self.model_cfg = model_cfg
        self.flow = flow
        self.plan = plan
        self.patch = patch
        self.schedules = schedules
        self.run_dir = Path(settings.out)
        self.step_count, self.nan_skipped, self.nan_streak = 0, 0, 0
        self.last_record: dict | None = None

    # -- setup ---------------------------------------------------------------------------------
    @classmethod
    def setup(cls, settings: TrainConfig) -> "TrainingRun":
        """Check the settings against the data, build plan, model, optimizer and EMA on accelerate."""
        settings.validate()
        manifest = check_data_stages(Path(settings.data), settings.stages)
        record = manifest["codec"]
        patch = int(settings.patch_size or record["patch_size"])
        if settings.patch_size is not None and record["class"] != "PixelCodec" and settings.patch_size != record["patch_size"]:
            raise NamiError("--patch-size can only change the pixel codec's patch size")
        model_cfg, flow_fields = build_model_config(settings, manifest, patch)
        flow = build_flow(settings, flow_fields)
        plan = FlowPlan(settings.mode, flow, model_cfg.stage_ends, int(record["downsample"]) * patch)
        plan.stage_guidance(settings.sample_cfg, "--sample-cfg")
        run = cls(settings, manifest, model_cfg, flow, plan, patch, Schedules.parse(settings, flow.num_stages))
        run._start(int(record["downsample"]))
        return run

    def _start(self, downsample: int) -> None:
        from diffusers.training_utils import EMAModel

        settings = self.settings
        self.downsample = downsample
        self.accelerator = accelerator = _accelerator(settings)
        self.rank, self.world = accelerator.process_index, accelerator.num_processes
        if accelerator.is_main_process:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        accelerator.wait_for_everyone()
        store = LatentStore(settings.data, preload=_want_preload(settings, self.manifest))
        self.drawer = BatchDrawer(store, self.plan, downsample, settings.batch_size, settings.seed, self.rank,
                                  settings.timestep_sampling, settings.cfg_dropout)
        self._check_data_covers_the_mix()
        transformer = _load_transformer(settings, self.model_cfg)
        if settings.grad_checkpointing:
            transformer.enable_gradient_checkpointing()
        if settings.compile:
            transformer.compile_blocks(dynamic=None)
        fused = {"fused": True} if accelerator.device.type == "cuda" else {}
        optimizer = torch.optim.AdamW(transformer.parameters(), lr=value_at(self.schedules.lr, 0)[0],
                                      betas=(0.9, 0.999), weight_decay=settings.weight_decay, **fused)
        self.objective, self.optimizer = accelerator.prepare(StagedObjective(transformer, self.plan, self.patch),
                                                             optimizer)
        params = [p.detach() for p in self.objective.parameters()]
        self.ema = EMAModel(params, decay=settings.ema_decay) if settings.ema_decay > 0 else None
        if self.ema is not None:
            self.ema.to(accelerator.device)
        self.loss_weights = StageLossWeights(settings.stage_loss_weights, len(self.plan))
        self.text_tokens = int(self.manifest["text_encoder"]["max_tokens"])

    def _check_data_covers_the_mix(self) -> None:
        for k, n in enumerate(self.drawer.usable()):
            needed = any(self.plan.stage_mix(p.values)[k] > 0 for p in self.schedules.stage_mix)
            if n == 0 and needed:
                raise NamiError(
                    f"no prepared images at {self.plan[k].resolution}px or more for stage {k + 1}; "
                    "prepare larger images or drop that stage"
                )

    # -- resume and checkpoints ------------------------------------------------------------------
    def resume(self) -> None:
        """Restore model, optimizer, RNG, EMA, loss weights and counters from `--resume`, if given."""
        settings, accelerator = self.settings, self.accelerator
        source = resolve_resume(self.run_dir, settings.resume)
        if source is not None:
            state = read_trainer_state(source)
            try:
                accelerator.load_state(str(source))
            except (EOFError, RuntimeError, OSError, ValueError, KeyError) as exc:
                why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise NamiError(f"cannot resume from {source}: {why}") from None
            self.step_count, self.nan_skipped, self.nan_streak = state["step"], state["nan_skipped"], state["nan_streak"]
            self.loss_weights.load_state_dict(state["weights"])
            if self.ema is not None:
                ema_file = _ema_path(source, self.rank if settings.fsdp else 0)
                if not ema_file.is_file():
                    raise NamiError(f"checkpoint {source} has no EMA state ({ema_file.name})")
                self.ema.load_state_dict(load_checkpoint_file(ema_file))
                self.ema.to(accelerator.device)
        self.log = MetricsLog(self.run_dir, accelerator.is_main_process)
        if accelerator.is_main_process:
            record = {"train": settings.to_json(), "model": self.model_cfg.to_dict(), "flow": self.flow.to_dict(),
                      "patch_size": self.patch, "world_size": self.world}
            write_text_atomic(self.run_dir / "train_config.json", json.dumps(record, indent=2))
            self.log.truncate_after(self.step_count)

    def trainer_state(self) -> dict:
        return {"step": self.step_count, "nan_skipped": self.nan_skipped, "nan_streak": self.nan_streak,
                "weights": self.loss_weights.state_dict(), "seed": self.settings.seed}

    def _save_ema(self, folder: Path) -> None:
        if self.ema is not None and (self.settings.fsdp or self.accelerator.is_main_process):
            torch.save(self.ema.state_dict(), _ema_path(folder, self.rank if self.settings.fsdp else 0))

    def checkpoint(self) -> Path:
        return save_checkpoint(self.accelerator, self.run_dir, self.step_count, self.trainer_state(),
                               self.settings.keep, self._save_ema)

    # -- one step --------------------------------------------------------------------------------
    def step(self, window: MetricsWindow) -> bool:
        """One optimizer step on the step's batch (or a skipped non-finite one). Returns whether
        the step was taken; stops the run with a checkpoint after too many non-finite steps."""
        settings, accelerator = self.settings, self.accelerator
        mix = value_at(self.schedules.stage_mix, self.step_count)
        lr = value_at(self.schedules.lr, self.step_count)[0]
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        groups = _move(self.drawer.draw(self.step_count, mix), accelerator.device)
        stage_weights = self.loss_weights.weights(self.plan.stage_mix(mix))
        losses = self.objective(groups)
        loss = weighted_loss(groups, losses, stage_weights, settings.batch_size)
        accelerator.backward(loss)
        grad_norm = accelerator.clip_grad_norm_(self.objective.parameters(), settings.grad_clip)
        if not math.isfinite(float(grad_norm)):
            self._skip_non_finite()
            return False
        self.nan_streak = 0
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.step(self.objective.parameters())  # the live parameters: EMAModel copies any that do not require grad
        self._record(window, groups, losses, loss)
        self.step_count += 1
        if self.step_count % settings.log_every == 0 or self.step_count == settings.steps:
            self.last_record = window.summary(self.step_count, lr, stage_weights, self.plan.stage_mix(mix),
                                              self.nan_skipped, self.world)
            self.log.write(self.last_record)
            window.reset()
        return True

    def _skip_non_finite(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.nan_skipped += 1
        self.nan_streak += 1
        self.step_count += 1
        if self.nan_streak > self.settings.max_nan_steps:
            path = self.checkpoint()
            raise NamiError(
                f"training stopped at step {self.step_count}: {self.nan_streak} non-finite losses in a row; "
                f"checkpoint {path}; try a lower --lr or --dtype fp32"
            )

    def _record(self, window: MetricsWindow, groups, losses, loss) -> None:
        """Per-stage statistics, summed over ranks so every rank updates its loss weights identically."""
        plan = self.plan
        stats = stage_sums(groups, losses, len(plan), self.accelerator.device)
        stats = self.accelerator.reduce(stats, reduction="sum") if self.world > 1 else stats
        per_stage = {k: (float(stats[2 * k]), int(stats[2 * k + 1])) for k in range(len(plan)) if stats[2 * k + 1] > 0}
        self.loss_weights.update({k: s / n for k, (s, n) in per_stage.items()})
        taus = torch.cat([plan[g.window].tau(g.r) for g in groups]).tolist()
        sample_losses = torch.cat([l.detach() for l in losses]).tolist()
        tokens_per_image = lambda g: (plan[g.window].resolution // plan.pixels_per_token) ** 2 + self.text_tokens  # noqa: E731
        tokens = sum(l.numel() * tokens_per_image(g) for g, l in zip(groups, losses))
        window.add(float(loss.detach()), per_stage, taus, sample_losses, self.settings.batch_size, tokens)

    def out_of_time(self, deadline: float | None) -> bool:
        """Whether the time budget is spent, agreed by all ranks."""
        if deadline is None or self.step_count >= self.settings.steps:
            return False
        flag = torch.tensor(float(time.monotonic() >= deadline), device=self.accelerator.device)
        return bool((self.accelerator.reduce(flag, reduction="max") if self.world > 1 else flag) > 0)

    # -- export ----------------------------------------------------------------------------------
    def _full_state_dict(self) -> dict:
        state = self.accelerator.get_state_dict(self.objective)
        prefix = "transformer."
        return {k[len(prefix):]: v.detach().cpu().clone() for k, v in state.items() if k.startswith(prefix)}

    def export(self) -> Path:
        """Write RUN/final: a model directory (raw weights + `ema` variant) that `nami sample` loads."""
        raw = self._full_state_dict()
        ema_state = None
        if self.ema is not None:
            params = list(self.objective.parameters())
            self.ema.store(params)
            self.ema.copy_to(params)
            ema_state = self._full_state_dict()
            self.ema.restore(params)
        final = self.run_dir / "final"
        settings = self.settings
        if self.accelerator.is_main_process:
            config = dict(self.accelerator.unwrap_model(self.objective).transformer.config)
            write_model_dir(final, config, raw, ema_state, self.plan, self.manifest, self.patch, settings.mode,
                            settings.sample_steps, settings.sample_cfg)
        self.accelerator.wait_for_everyone()
        return final


def train(settings: TrainConfig, on_log: Callable[[dict], None] | None = None,
          on_step: Callable[[int, int], None] | None = None) -> TrainResult:
    """Train, resuming if asked; write checkpoints, metrics.jsonl and RUN/final (a model directory)."""
    run = TrainingRun.setup(settings)
    run.resume()
    window = MetricsWindow(len(run.plan))
    deadline = time.monotonic() + 60.0 * settings.time_budget if settings.time_budget else None
    out_of_time = False
    run.objective.train()
    while run.step_count < settings.steps:
        if not run.step(window):
            continue
        if on_step is not None:
            on_step(run.step_count, settings.steps)
        if on_log is not None and run.accelerator.is_main_process and run.last_record is not None \
                and run.last_record["step"] == run.step_count:
            on_log(run.last_record)
        out_of_time = run.out_of_time(deadline)
        if run.step_count % settings.save_every == 0 or run.step_count == settings.steps or out_of_time:
            run.checkpoint()
        if out_of_time:
            break
    done = run.step_count >= settings.steps or out_of_time
    final = run.export() if done else None
    run.log.close()
    run.accelerator.end_training()
    return TrainResult(run.step_count, final, run.last_record, run.nan_skipped)
