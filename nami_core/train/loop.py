"""`nami train`: Algorithm 1 on accelerate (one process, DDP, or FSDP over transformer blocks).

`train(settings)` is `TrainingRun.setup` (data, plan, model, optimizer, EMA), `resume`,
`step` until done (each optimizer step over `--gradient-accumulation-steps` micro-batches, drawn as
`batches` says), validation images when asked (`validation`), and `export` (RUN/final). The loss
itself is `staged_loss`; the optimizer and the learning rate of each step are `optimizer`'s.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import torch

from ..data.prepare import check_data_stages
from ..data.store import LatentStore
from ..errors import NamiError, first_line
from ..files import write_text_atomic
from ..flow.plan import FlowPlan
from ..model.attention import apply_backend, resolve_backend
from ..runtime import DTYPES as COMPUTE_DTYPES
from ..runtime import use_fast_matmul
from .batches import BatchDrawer, micro_batches
from .checkpoint import (Note, load_checkpoint_file, list_checkpoints, read_trainer_state, refuse_unasked_restart,
                         resolve_resume, save_checkpoint)
from .config import TrainConfig, build_flow, build_model_config
from .export import write_model_dir
from .metrics import MetricsLog, MetricsWindow, tracker_config
from .ema import EMA
from .optimizer import build_optimizer, lr_factor
from .optimizer_step import GuardedStep
from .phases import Phase, value_at
from .prefetch import Prefetcher
from .sharded_ema import has_sharded_ema, load_sharded_ema, save_sharded_ema
from .adapters import (attach_lora, base_variant, check_adapter_checkpoint, keep_adapter_weights, lora_info,
                       trainable, write_adapter_dir)
from .checkpointing import CheckpointPolicy
from .memory_guard import check_fits, data_text_tokens, train_device
from .precision import run_dtype
from .ranks import LAUNCH_VARIABLES, launch_number, on_any_rank
from .run_lock import RunLock, is_main_rank
from .staged_loss import StagedObjective, StageLossWeights, stage_losses, stage_sums, weighted_loss
from .validation import Validation, log_grid

LOGS = "logs"  # RUN/logs: the trackers' files (TensorBoard's events under logs/nami)
PROJECT = "nami"  # the trackers' project name
Phase_ = Callable[[str], None]

PRELOAD_BYTES = 4 << 30


@dataclass
class TrainResult:
    step: int
    final_dir: Path | None
    last_record: dict | None
    nan_skipped: int
    compile_warning: str | None = None  # one line when a compiled block ran eagerly (--compile)


def _accelerator(settings: TrainConfig):
    from accelerate.utils import ProjectConfiguration
    from accelerate.utils import DistributedDataParallelKwargs

    kwargs = {}
    if settings.fsdp and not torch.cuda.is_available():
        raise NamiError("--fsdp needs CUDA GPUs; without them train with DDP (the default)")
    if settings.fsdp:
        from accelerate.utils import FullyShardedDataParallelPlugin

        kwargs["fsdp_plugin"] = FullyShardedDataParallelPlugin(
            auto_wrap_policy="transformer_based_wrap",
            transformer_cls_names_to_wrap=["DoubleStreamBlock", "SingleStreamBlock"],
            use_orig_params=True,
            sync_module_states=True,
            # checkpoints are per-rank shards (torch.distributed.checkpoint), never gathered on one rank
            state_dict_type="SHARDED_STATE_DICT",
        )
    mixed = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[settings.dtype]
    # A step whose stages all stop short of the last blocks touches them with a zero loss term
    # (`TrainingRun._touch_unused`), so DDP need not search for unused parameters; its buckets are
    # views of the gradients (no second copy).
    ddp = DistributedDataParallelKwargs(find_unused_parameters=False, gradient_as_bucket_view=True)
    # accelerate keeps its settings in a process-wide state: a second run in one process (Python
    # callers, tests, `nami bench train`) starts from a clean one, keeping the process group.
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=False)
    # Without a GPU, cpu=True lets torchrun / accelerate launch start gloo process groups.
    trackers = list(settings.trackers())
    if trackers:
        run = Path(settings.out)
        kwargs.update(log_with=trackers, project_config=ProjectConfiguration(project_dir=str(run),
                                                                            logging_dir=str(run / LOGS)))
    return start_accelerator(dict(mixed_precision=mixed, kwargs_handlers=[ddp], cpu=not torch.cuda.is_available(),
                                  **kwargs))


def start_accelerator(arguments: dict):
    """`Accelerator(**arguments)`; its environment (the launch variables, accelerate's own
    ACCELERATE_* ones) read first, so a value that is no number is one error naming it rather than
    accelerate's ValueError."""
    import os

    from accelerate import Accelerator

    for name in LAUNCH_VARIABLES:
        launch_number(name)
    try:
        return Accelerator(**arguments)
    except ValueError as exc:
        names = sorted(n for n in os.environ if n.startswith("ACCELERATE_"))
        raise NamiError(f"accelerate cannot start: {first_line(exc)} (its settings from the environment: "
                        f"{', '.join(f'{n}={os.environ[n]}' for n in names) or 'none'})") from None


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
    # an adapter trains on the weights `nami sample` uses (EMA when present); full runs on the raw ones
    variant = base_variant(settings.init) if settings.lora else None
    try:
        # text_positions owns no weights, so the run's choice overrides the saved one
        return NamiTransformer.from_pretrained(Path(settings.init) / "transformer", variant=variant,
                                               text_positions=model_cfg.text_positions)
    except (OSError, ValueError, RuntimeError) as exc:
        raise NamiError(f"--model {settings.init}: cannot load the transformer ({first_line(exc)})") from None


@dataclass
class Schedules:
    """The run's schedules over steps: the stage mix, and the learning rate: the `--lr-schedule`
    phase's peak times `--lr-scheduler`'s factor (`optimizer.lr_factor`)."""

    stage_mix: list[Phase]
    lr: list[Phase]
    lr_factor: Callable[[int], float] = lambda step: 1.0

    @classmethod
    def of(cls, settings: TrainConfig) -> "Schedules":
        return cls(list(settings.stage_mix), list(settings.lr_schedule),
                   lr_factor(settings.lr_scheduler, settings.lr_warmup_steps, settings.steps))

    def lr_at(self, step: int) -> float:
        """The learning rate of optimizer step `step` (0-based)."""
        return value_at(self.lr, step)[0] * self.lr_factor(step)


class TrainingRun:
    """One run's state between steps: data, plan, model, optimizer, EMA, loss weights, counters."""

    def __init__(self, settings: TrainConfig, manifest: dict, model_cfg, flow, plan: FlowPlan, patch: int,
                 schedules: Schedules, note: Note | None = None, on_phase: Phase_ | None = None) -> None:
        self.settings = settings
        self.note = note
        self.on_phase = on_phase or (lambda text: None)
        self.manifest = manifest
        self.model_cfg = model_cfg
        self.flow = flow
        self.plan = plan
        self.patch = patch
        self.schedules = schedules
        self.run_dir = Path(settings.out)
        self.step_count = 0
        self.last_record: dict | None = None
        self._unused: dict[int, list] = {}

    # -- setup ---------------------------------------------------------------------------------
    @classmethod
    def setup(cls, settings: TrainConfig, note: Note | None = None, on_phase: Phase_ | None = None) -> "TrainingRun":
        """Check the settings against the data and the memory a step needs, then build plan, model,
        optimizer and EMA on accelerate. `note` receives one-line notices (a damaged checkpoint
        skipped on resume, an attention backend passed over), `on_phase` what the set-up is doing
        (for a progress display). `--dtype auto` and `--attention` are resolved first: an explicit
        backend that cannot run is refused before any work. The memory check is of one micro-batch
        (`--batch-size`): micro-batches run one after the other."""
        if on_phase is not None:
            on_phase("checking the settings, the data and the memory a step needs")
        settings.validate()
        device = train_device()
        settings = replace(settings, dtype=run_dtype(settings.dtype, device.type))
        attention = resolve_backend(settings.attention, device, COMPUTE_DTYPES[settings.dtype], note)
        manifest = check_data_stages(Path(settings.data), settings.stages)
        record = manifest["codec"]
        patch = int(settings.patch_size or record["patch_size"])
        if settings.patch_size is not None and record["class"] != "PixelCodec" and settings.patch_size != record["patch_size"]:
            raise NamiError("--patch-size can only change the pixel codec's patch size")
        model_cfg, flow_fields = build_model_config(settings, manifest, patch)
        flow = build_flow(settings, flow_fields)
        plan = FlowPlan(settings.mode, flow, model_cfg.stage_ends, int(record["downsample"]) * patch)
        plan.stage_guidance(settings.sample_cfg, "--sample-cfg")
        if settings.sample_steps is not None:
            try:  # checked now, not when the model is written at the end
                plan.stage_steps(settings.sample_steps)
            except NamiError as exc:
                raise NamiError(f"--sample-steps {','.join(map(str, settings.sample_steps))}: {exc}") from None
        schedules = Schedules.of(settings)
        check_fits(settings, model_cfg, plan, [p.values for p in schedules.stage_mix],
                   data_text_tokens(Path(settings.data), manifest, model_cfg.text_padding))
        run = cls(settings, manifest, model_cfg, flow, plan, patch, schedules, note, on_phase)
        run.attention = attention
        run.validation = Validation(settings, plan, manifest, patch)
        run._start(int(record["downsample"]))
        return run

    def _start(self, downsample: int) -> None:
        settings = self.settings
        self.downsample = downsample
        self.accelerator = accelerator = _accelerator(settings)
        self.device = accelerator.device
        use_fast_matmul(self.device)
        self.rank, self.world = accelerator.process_index, accelerator.num_processes
        if accelerator.is_main_process:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        accelerator.wait_for_everyone()
        self.on_phase("loading the data")
        store = LatentStore(settings.data, preload=_want_preload(settings, self.manifest))
        self.drawer = BatchDrawer(store, self.plan, downsample, settings.batch_size, settings.seed, self.rank,
                                  settings.timestep_sampling, settings.cfg_dropout, settings.stage_draw == "split",
                                  settings.gradient_accumulation_steps)
        self._check_data_covers_the_mix()
        self.on_phase("building the model" if settings.init is None else f"loading the model {settings.init}")
        self.transformer = transformer = _load_transformer(settings, self.model_cfg)
        if settings.lora:
            attach_lora(transformer, settings)
        apply_backend(transformer, self.attention, COMPUTE_DTYPES[settings.dtype], device=self.device)
        if settings.compile:
            from ..model.compiled import compile_for_training

            compile_for_training(transformer)
        optimizer = build_optimizer(settings, trainable(transformer), self.schedules.lr_at(0), accelerator.device)
        policy = CheckpointPolicy(settings.grad_checkpointing, self.model_cfg.stage_ends, len(self.plan) - 1)
        self.objective, self.optimizer = accelerator.prepare(
            StagedObjective(transformer, self.plan, self.patch, policy), optimizer)
        if settings.lora:
            accelerator.register_save_state_pre_hook(keep_adapter_weights)
        self.guard = GuardedStep(accelerator, self.optimizer, settings.dtype)
        self.params = trainable(self.objective)  # what the optimizer updates, listed once
        self.ema = EMA(self.params, settings.ema_decay).to(self.device) if settings.ema_decay > 0 else None
        self.loss_weights = StageLossWeights(settings.stage_loss_weights, len(self.plan), device=self.device)
        zero = torch.zeros((), dtype=torch.float64, device=self.device)
        self.nan_skipped, self.nan_streak = zero.clone(), zero.clone()

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
        """Restore model, optimizer, RNG, EMA, loss weights, loss scale and counters from `--resume`, if given."""
        settings, accelerator = self.settings, self.accelerator
        source = resolve_resume(self.run_dir, settings.resume, self.note)
        if source is not None:
            self.on_phase(f"resuming from {source}")
            state = read_trainer_state(source)
            if state["step"] > settings.steps:
                raise NamiError(f"--resume {source} is at step {state['step']}, past --steps {settings.steps}; "
                                f"give --steps above {state['step']} to train on (`nami convert checkpoint` "
                                "turns it into a model as it is)")
            if settings.lora:
                check_adapter_checkpoint(source, self.transformer)
            try:
                # a LoRA checkpoint holds the adapter only; the frozen weights are --model's
                accelerator.load_state(str(source), strict=not settings.lora)
            except (EOFError, RuntimeError, OSError, ValueError, KeyError) as exc:
                raise NamiError(f"cannot resume from {source}: {first_line(exc)}") from None
            self.step_count = state["step"]
            self.nan_skipped.fill_(state["nan_skipped"])
            self.nan_streak.fill_(state["nan_streak"])
            self.loss_weights.load_state_dict(state["weights"])
            self.guard.load_state_dict(state.get("precision", {}))
            if self.ema is not None:
                self._load_ema(source, state)
        trackers = settings.trackers()
        self.log = MetricsLog(self.run_dir, accelerator.is_main_process, accelerator.log if trackers else None)
        if accelerator.is_main_process:
            record = {"train": settings.to_json(), "model": self.model_cfg.to_dict(), "flow": self.flow.to_dict(),
                      "patch_size": self.patch, "world_size": self.world}
            write_text_atomic(self.run_dir / "train_config.json", json.dumps(record, indent=2))
            self.log.truncate_after(self.step_count)
        if trackers:
            self._start_trackers(tracker_config(settings.to_json()))
        self.batches = Prefetcher(self._draw, self.step_count, settings.steps, pin=self.device.type == "cuda")

    def _start_trackers(self, config: dict) -> None:
        """accelerate's trackers (main process only): TensorBoard in RUN/logs/nami, dropping on
        resume what an interrupted session logged after the checkpoint (`purge_step`); wandb in
        RUN/logs, a run named after the run folder (offline with WANDB_MODE=offline)."""
        init = {"tensorboard": {"purge_step": self.step_count + 1} if self.step_count else {},
                "wandb": {"dir": str(self.run_dir / LOGS), "name": self.run_dir.resolve().name}}
        if self.accelerator.is_main_process:
            (self.run_dir / LOGS).mkdir(parents=True, exist_ok=True)
        self.accelerator.init_trackers(PROJECT, config=config, init_kwargs=init)

    def _draw(self, step: int):
        return self.drawer.draw_host(step, value_at(self.schedules.stage_mix, step))

    def trainer_state(self) -> dict:
        """JSON-ready state beside accelerate's (reads the device once)."""
        return {"step": self.step_count, "nan_skipped": int(self.nan_skipped.item()),
                "nan_streak": int(self.nan_streak.item()), "weights": self.loss_weights.state_dict(),
                "precision": self.guard.state_dict(), "seed": self.settings.seed,
                "ema_updates": self.ema.optimization_step if self.ema is not None else 0}

    def _save_ema(self, folder: Path) -> None:
        if self.ema is None:
            return
        if self.settings.fsdp:
            save_sharded_ema(self.objective, self.ema, folder)  # every rank: its shard
        elif self.accelerator.is_main_process:
            torch.save(self.ema.state_dict(), _ema_path(folder, 0))

    def _load_ema(self, source: Path, state: dict) -> None:
        if self.settings.fsdp and has_sharded_ema(source):
            load_sharded_ema(self.objective, self.ema, source)
            self.ema.optimization_step = int(state.get("ema_updates", 0))
            return
        ema_file = _ema_path(source, self.rank if self.settings.fsdp else 0)
        if not ema_file.is_file():
            raise NamiError(f"checkpoint {source} has no EMA state ({ema_file.name})")
        self.ema.load_state_dict(load_checkpoint_file(ema_file))

    def checkpoint(self) -> Path:
        return save_checkpoint(self.accelerator, self.run_dir, self.step_count, self.trainer_state(),
                               self.settings.keep, self._save_ema)

    # -- one step --------------------------------------------------------------------------------
    def step(self, window: MetricsWindow) -> None:
        """One optimizer step on the step's batch, its micro-batches' gradients summed (each loss
        divided by the step's samples, so the sum is the whole batch's), skipped on the device when
        the gradients are not finite. Nothing is read back from the device except on log steps
        (`log`). Under DDP only the last micro-batch's backward reduces the gradients."""
        settings = self.settings
        mix = value_at(self.schedules.stage_mix, self.step_count)
        lr = self.schedules.lr_at(self.step_count)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        groups = [g.to_device(self.device) for g in self.batches.get(self.step_count)]
        stage_weights = self.loss_weights.weights(self.plan.stage_mix(mix))
        split = micro_batches(groups, settings.gradient_accumulation_steps)
        losses, loss = [], 0.0
        for m, micro in enumerate(split):
            last = m == len(split) - 1
            with contextlib.nullcontext() if last else self.accelerator.no_sync(self.objective):
                micro_losses = stage_losses(self.objective, micro, self.plan, self.model_cfg.prediction)
                micro_loss = weighted_loss(micro, micro_losses, stage_weights, settings.images_per_step)
                self.guard.backward(micro_loss + (self._touch_unused(micro) if last else 0.0))
            losses += micro_losses
            loss = loss + micro_loss.detach()
        groups = [g for micro in split for g in micro]
        self._untouch_unused(groups)
        grad_norm = self.guard.clip(self.params, settings.grad_clip)
        taken = self.guard.step(grad_norm)
        if self.ema is not None:
            self.ema.update(self.params, taken)
        sums = stage_sums(groups, losses, len(self.plan), self.device)
        sums = self.accelerator.reduce(sums, reduction="sum") if self.world > 1 else sums
        self.loss_weights.update(sums, taken)
        self.nan_skipped += 1 - taken
        self.nan_streak = (self.nan_streak + 1) * (1 - taken)
        self._record(window, groups, losses, loss, sums, taken)
        self.step_count += 1
        if self.step_count % settings.log_every == 0 or self.step_count == settings.steps:
            self.log_step(window, lr, stage_weights, mix)

    def _unused_parameters(self, groups) -> list:
        """Under DDP, the parameters no group of this step reaches; [] otherwise (one process and
        FSDP leave them without a gradient by themselves)."""
        if self.world == 1 or self.settings.fsdp:  # FSDP reduces what backward reaches; no DDP search to avoid
            return []
        deepest = max(self.plan[g.window].blocks for g in groups)
        if deepest not in self._unused:  # one of K depths, and what trains never changes in a run
            self._unused[deepest] = self.transformer.unused_parameters(deepest)
        return self._unused[deepest]

    def _touch_unused(self, groups) -> torch.Tensor | float:
        """Under DDP, a zero loss term over the blocks no group of this step runs, so every parameter
        gets a (zero) gradient and DDP need not look for unused ones; 0 otherwise."""
        unused = self._unused_parameters(groups)
        return 0.0 * sum(p.reshape(-1)[0] for p in unused) if unused else 0.0

    def _untouch_unused(self, groups) -> None:
        """Drop the zero gradients `_touch_unused` gave, so AdamW leaves those parameters alone
        (no momentum step, no weight decay) as a one-process run does: training does not depend
        on the number of GPUs. DDP makes the bucket views again in the next backward."""
        for p in self._unused_parameters(groups):
            p.grad = None

    def _record(self, window: MetricsWindow, groups, losses, loss, sums, taken) -> None:
        plan = self.plan
        taus = torch.cat([plan[g.window].tau(g.r) for g in groups])
        tokens_per_image = lambda g: (g.latents.shape[-2] // self.patch) * (g.latents.shape[-1] // self.patch) + g.text.sequence.shape[1]  # noqa: E731
        tokens = sum(len(g.r) * tokens_per_image(g) for g in groups)
        window.add(loss, sums, taus, torch.cat([l.detach() for l in losses]), taken, self.settings.images_per_step,
                   tokens)

    def log_step(self, window: MetricsWindow, lr: float, stage_weights, mix) -> None:
        """Write the metrics line (the one read of the device between checkpoints) and stop the run,
        with a checkpoint, after too many non-finite steps in a row."""
        self.last_record = window.summary(self.step_count, lr, stage_weights, self.plan.stage_mix(mix),
                                          self.nan_skipped, self.world)
        self.log.write(self.last_record)
        window.reset()
        streak = int(self.nan_streak.item())
        if streak > self.settings.max_nan_steps:
            path = self.checkpoint()
            raise NamiError(
                f"training stopped at step {self.step_count}: {streak} non-finite losses in a row; "
                f"checkpoint {path}; try a lower --lr or --dtype fp32"
            )

    def flush_metrics(self, window: MetricsWindow) -> None:
        """Write the metrics of the steps since the last line (a run stopping between log steps)."""
        if window.steps == 0:
            return
        mix = value_at(self.schedules.stage_mix, self.step_count - 1)
        lr = self.schedules.lr_at(self.step_count - 1)
        self.log_step(window, lr, self.loss_weights.weights(self.plan.stage_mix(mix)), mix)

    def out_of_time(self, deadline: float | None, log_step: bool) -> bool:
        """Whether the time budget is spent. One process decides alone; several agree on log steps
        only (an all-reduce the host waits for)."""
        if deadline is None or self.step_count >= self.settings.steps:
            return False
        if self.world == 1:
            return time.monotonic() >= deadline
        if not log_step:
            return False
        flag = torch.tensor(float(time.monotonic() >= deadline), device=self.device)
        return bool(self.accelerator.reduce(flag, reduction="max") > 0)

    # -- validation ------------------------------------------------------------------------------
    def validate(self) -> Path | None:
        """Draw this step's validation grid on the main process (module `validation`) while the
        others wait; an error there stops every process. Returns the grid's path (main process)."""
        path, error = None, None
        if self.accelerator.is_main_process:
            try:
                path = self._draw_validation()
            except Exception as exc:  # noqa: BLE001 - raised below, once every process knows
                error = exc
        if on_any_rank(error is not None, self.accelerator):
            if error is not None:
                raise error
            raise NamiError(f"validation at step {self.step_count} failed on the main process")
        return path

    def _draw_validation(self) -> Path:
        transformer = self.accelerator.unwrap_model(self.objective).transformer
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), self._drawing_weights(transformer), self.accelerator.autocast():
            images = self.validation.draw(transformer, self.device)
        path, grid = self.validation.write(self.step_count, images)
        log_grid(self.accelerator.trackers, grid, self.step_count)
        return path

    @contextlib.contextmanager
    def _drawing_weights(self, transformer):
        """The weights `nami sample` would use (the EMA swapped in, when kept), in eval mode; all as
        it was afterwards."""
        if self.ema is not None:
            self.ema.swap(self.params)
        transformer.eval()
        try:
            yield
        finally:
            transformer.train()
            if self.ema is not None:
                self.ema.swap(self.params)

    # -- export ----------------------------------------------------------------------------------
    def _refuse_non_finite(self, state: dict, what: str) -> None:
        """Raise, on every rank, when `state` holds a non-finite tensor on any rank (under FSDP
        only rank 0 holds the gathered weights: the others must not wait for it forever)."""
        bad = [name for name, t in state.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
        if not on_any_rank(bool(bad), self.accelerator):
            return
        intact = list_checkpoints(self.run_dir)
        where = f"; the checkpoints in {self.run_dir / 'checkpoints'} hold the run" if intact else ""
        which = f"{len(bad)} of {len(state)} tensors, e.g. {bad[0]}" if bad else "found on another process"
        raise NamiError(
            f"training ended at step {self.step_count} with non-finite {what} ({which}); "
            f"{self.run_dir / 'final'} was not written{where}; "
            f"{int(self.nan_skipped.item())} non-finite steps were skipped; try a lower --lr or --dtype fp32"
        )

    def _full_state_dict(self) -> dict:
        state = self.accelerator.get_state_dict(self.objective)
        prefix = "transformer."
        return {k[len(prefix):]: v.detach().cpu().clone() for k, v in state.items() if k.startswith(prefix)}

    def export(self) -> Path:
        """Write RUN/final: a model directory (raw weights + `ema` variant) that `nami sample` loads,
        or under --lora an adapter folder (`adapters`). Weights that are not all finite are never
        written: the run stops with an error instead."""
        if self.settings.lora:
            return self._export_adapter()
        raw = self._full_state_dict()
        ema_state = None
        if self.ema is not None:
            params = self.params
            self.ema.store(params)
            self.ema.copy_to(params)
            ema_state = self._full_state_dict()
            self.ema.restore(params)
        self._refuse_non_finite(raw, "weights")
        if ema_state is not None:
            self._refuse_non_finite(ema_state, "EMA weights")
        final = self.run_dir / "final"
        settings = self.settings
        if self.accelerator.is_main_process:
            config = dict(self.accelerator.unwrap_model(self.objective).transformer.config)
            write_model_dir(final, config, raw, ema_state, self.plan, self.manifest, self.patch, settings.mode,
                            settings.sample_steps, settings.sample_cfg)
        self.accelerator.wait_for_everyone()
        return final

    def _export_adapter(self) -> Path:
        transformer = self.accelerator.unwrap_model(self.objective).transformer
        named = {n: p.detach() for n, p in transformer.named_parameters() if p.requires_grad}
        self._refuse_non_finite(named, "adapter weights")
        ema_state = None
        if self.ema is not None:
            ema_state = [t.detach() for t in self.ema.shadow_params]
            self._refuse_non_finite(dict(zip(named, ema_state)), "EMA adapter weights")
        final = self.run_dir / "final"
        settings = self.settings
        if self.accelerator.is_main_process:
            info = lora_info(settings.init, settings.lora, settings.lora_alpha, settings.lora_targets,
                             self.step_count, settings.dtype)
            write_adapter_dir(final, transformer, ema_state, info, Path(settings.data))
        self.accelerator.wait_for_everyone()
        return final


def train(settings: TrainConfig, on_log: Callable[[dict], None] | None = None,
          on_step: Callable[[int, int], None] | None = None, on_note: Note | None = None,
          on_phase: Phase_ | None = None) -> TrainResult:
    """Train, resuming if asked; write checkpoints, metrics.jsonl, validation grids (RUN/samples)
    and RUN/final (a model directory).

    The run folder is locked for the whole run (`run_lock`): a second `nami train` on it stops with
    one line. `on_note` receives one-line notices (a stale lock taken over, a damaged checkpoint
    skipped on resume); `on_phase` what the run is doing before its first step is done (set-up,
    loading, resuming, the first step with its compiling); `on_step(step, steps)` each step done;
    `on_log` each metrics record (main process)."""
    settings.validate()
    lock = RunLock(settings.out, on_note) if is_main_rank() else None
    if lock is not None:
        lock.take()
    try:
        refuse_unasked_restart(Path(settings.out), settings.resume)
        return _run(settings, on_log, on_step, on_note, on_phase)
    finally:
        if lock is not None:
            lock.release()


def _run(settings: TrainConfig, on_log, on_step, on_note, on_phase) -> TrainResult:
    run = TrainingRun.setup(settings, on_note, on_phase)
    run.resume()
    window = MetricsWindow(len(run.plan), run.device)
    deadline = time.monotonic() + 60.0 * settings.time_budget if settings.time_budget else None
    out_of_time = False
    run.objective.train()
    if run.step_count < settings.steps:
        run.on_phase(f"step {run.step_count + 1}: drawing the first batch"
                     + (", compiling the blocks" if settings.compile else ""))
    try:
        while run.step_count < settings.steps:
            run.step(window)
            logged = run.last_record is not None and run.last_record["step"] == run.step_count
            if on_step is not None:
                on_step(run.step_count, settings.steps)
            if on_log is not None and run.accelerator.is_main_process and logged:
                on_log(run.last_record)
            out_of_time = run.out_of_time(deadline, logged)
            if out_of_time and not logged:
                run.flush_metrics(window)
                if on_log is not None and run.accelerator.is_main_process:
                    on_log(run.last_record)
            if run.step_count % settings.save_every == 0 or run.step_count == settings.steps or out_of_time:
                run.checkpoint()
            if run.validation.due(run.step_count) and not out_of_time:
                started = time.perf_counter()
                run.validate()
                window.exclude(time.perf_counter() - started)
            if out_of_time:
                break
        done = run.step_count >= settings.steps or out_of_time
        final = run.export() if done else None
    finally:
        run.batches.close()
    run.accelerator.end_training()
    stats = run.transformer.compile_stats
    return TrainResult(run.step_count, final, run.last_record, int(run.nan_skipped.item()),
                       None if stats is None else stats.fallback())
