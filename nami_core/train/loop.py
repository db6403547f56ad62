"""`nami train`: Algorithm 1 on accelerate (one process, DDP, or FSDP over transformer blocks)."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..data.prepare import check_data_stages
from ..data.store import LatentStore
from ..denoiser import Denoiser
from ..errors import NamiError
from ..flow.objective import flow_loss, stage_targets
from ..flow.schedule import FlowPlan
from .batches import BatchDrawer, StageGroup
from .checkpoint import load_checkpoint_file, read_trainer_state, resolve_resume, save_checkpoint
from .config import TrainConfig, build_flow, build_model_config
from .export import write_model_dir
from .metrics import MetricsLog, MetricsWindow
from .phases import PAPER_LR, default_ratios, parse_phases, value_at
from .weights import StageLossWeights

PRELOAD_BYTES = 4 << 30


class StagedObjective(nn.Module):
    """The trained module: one forward runs every stage group of a step, so DDP/FSDP see one graph."""

    def __init__(self, transformer, plan: FlowPlan, patch_size: int) -> None:
        super().__init__()
        self.transformer = transformer
        self.plan = plan
        self.patch_size = patch_size

    def forward(self, groups: list[StageGroup]) -> list[torch.Tensor]:
        """Per-sample losses (b,) of each group."""
        denoiser = Denoiser(self.transformer, self.patch_size)
        losses = []
        for group in groups:
            window = self.plan[group.window]
            target = stage_targets(group.latents, group.noise, group.r, window)
            velocity = denoiser(target.x_r, group.r, target.tau, window, group.text)
            losses.append(flow_loss(velocity, target.velocity))
        return losses


@dataclass
class TrainResult:
    step: int
    final_dir: Path | None
    last_record: dict | None
    nan_skipped: int


def _accelerator(cfg: TrainConfig):
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    kwargs = {}
    if cfg.fsdp and not torch.cuda.is_available():
        raise NamiError("--fsdp needs CUDA GPUs; without them train with DDP (the default)")
    if cfg.fsdp:
        from accelerate.utils import FullyShardedDataParallelPlugin

        kwargs["fsdp_plugin"] = FullyShardedDataParallelPlugin(
            auto_wrap_policy="transformer_based_wrap",
            transformer_cls_names_to_wrap=["FluxTransformerBlock", "FluxSingleTransformerBlock"],
            use_orig_params=True,
            sync_module_states=True,
        )
    mixed = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[cfg.precision]
    # Stage groups leave later blocks unused in some steps.
    ddp = DistributedDataParallelKwargs(find_unused_parameters=True)
    # Without a GPU, cpu=True lets torchrun / accelerate launch start gloo process groups.
    return Accelerator(mixed_precision=mixed, kwargs_handlers=[ddp], cpu=not torch.cuda.is_available(), **kwargs)


def _move(groups: list[StageGroup], device) -> list[StageGroup]:
    return [StageGroup(g.window, g.latents.to(device), g.text.to(device), g.noise.to(device), g.r.to(device))
            for g in groups]


def _ema_path(ckpt: Path, rank: int) -> Path:
    return ckpt / f"ema_rank{rank}.pt"


def train(cfg: TrainConfig, on_log: Callable[[dict], None] | None = None,
          on_step: Callable[[int, int], None] | None = None) -> TrainResult:
    """Train, resuming if asked; write checkpoints, metrics.jsonl and RUN/final (a model directory)."""
    from diffusers.training_utils import EMAModel

    from ..model.transformer import NamiTransformer

    cfg.validate()
    manifest = check_data_stages(Path(cfg.data), cfg.stages)
    record = manifest["codec"]
    patch = int(cfg.patch_size or record["patch_size"])
    if cfg.patch_size is not None and record["class"] != "PixelCodec" and cfg.patch_size != record["patch_size"]:
        raise NamiError("--patch-size can only change the pixel codec's patch size")
    downsample = int(record["downsample"])
    model_cfg, flow_fields = build_model_config(cfg, manifest, patch)
    flow = build_flow(cfg, flow_fields)
    plan = FlowPlan(cfg.mode, flow, model_cfg.stage_ends, downsample * patch)
    if flow.resolutions[0] % (downsample * patch):
        raise NamiError(f"stage {flow.resolutions[0]}px is not a whole number of {downsample * patch}px tokens")

    ratio_phases = parse_phases(cfg.ratio_schedule or default_ratios(flow.num_stages), "--ratio-schedule", flow.num_stages)
    lr_text = cfg.lr_schedule or (f"0:{cfg.lr}" if cfg.lr is not None else PAPER_LR)
    lr_phases = parse_phases(lr_text, "--lr-schedule", 1)

    run = Path(cfg.out)
    accelerator = _accelerator(cfg)
    rank, world = accelerator.process_index, accelerator.num_processes
    if accelerator.is_main_process:
        run.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()

    store = LatentStore(cfg.data, preload=_want_preload(cfg, manifest))
    drawer = BatchDrawer(store, plan, downsample, cfg.batch_size, cfg.seed, rank, cfg.timestep_sampling, cfg.cfg_dropout)
    usable = drawer.usable()
    for k, n in enumerate(usable):
        needed = any(p.values[k] > 0 for p in ratio_phases) if cfg.mode != "flux-base" else True
        if n == 0 and needed:
            raise NamiError(
                f"no prepared images at {plan[k].resolution}px or more for stage {k + 1}; "
                "prepare larger images or drop that stage"
            )

    if cfg.init is not None:
        try:
            # text_positions owns no weights, so the run's choice overrides the saved one
            transformer = NamiTransformer.from_pretrained(
                Path(cfg.init) / "transformer", text_positions=model_cfg.text_positions
            )
        except (OSError, ValueError, RuntimeError) as exc:
            raise NamiError(f"--init {cfg.init}: cannot load the transformer ({str(exc).strip().splitlines()[0]})") from None
    else:
        torch.manual_seed(cfg.seed)
        transformer = NamiTransformer.from_model_config(model_cfg)
    if cfg.grad_checkpointing:
        transformer.enable_gradient_checkpointing()
    if cfg.compile:
        transformer.compile_blocks(dynamic=None)
    objective = StagedObjective(transformer, plan, patch)
    fused = {"fused": True} if accelerator.device.type == "cuda" else {}
    optimizer = torch.optim.AdamW(transformer.parameters(), lr=value_at(lr_phases, 0)[0], betas=(0.9, 0.999),
                                  weight_decay=cfg.weight_decay, **fused)
    objective, optimizer = accelerator.prepare(objective, optimizer)
    params = [p for p in objective.parameters()]
    ema = EMAModel([p.detach() for p in params], decay=cfg.ema_decay) if cfg.ema_decay > 0 else None
    if ema is not None:
        ema.to(accelerator.device)
    weights = StageLossWeights(cfg.stage_loss_weights, len(plan))

    step, nan_skipped, nan_streak = 0, 0, 0
    resume_from = resolve_resume(run, cfg.resume)
    if resume_from is not None:
        state = read_trainer_state(resume_from)
        try:
            accelerator.load_state(str(resume_from))
        except (EOFError, RuntimeError, OSError, ValueError, KeyError) as exc:
            raise NamiError(f"cannot resume from {resume_from}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
        step, nan_skipped, nan_streak = state["step"], state["nan_skipped"], state["nan_streak"]
        weights.load_state_dict(state["weights"])
        if ema is not None:
            ema_file = _ema_path(resume_from, rank if cfg.fsdp else 0)
            if not ema_file.is_file():
                raise NamiError(f"checkpoint {resume_from} has no EMA state ({ema_file.name})")
            ema.load_state_dict(load_checkpoint_file(ema_file))
            ema.to(accelerator.device)

    log = MetricsLog(run, accelerator.is_main_process)
    if accelerator.is_main_process:
        (run / "train_config.json").write_text(json.dumps(
            {"train": cfg.to_json(), "model": model_cfg.to_dict(), "flow": flow.to_dict(),
             "patch_size": patch, "world_size": world}, indent=2))
        log.truncate_after(step)

    def trainer_state() -> dict:
        return {"step": step, "nan_skipped": nan_skipped, "nan_streak": nan_streak,
                "weights": weights.state_dict(), "seed": cfg.seed}

    def save_ema(folder: Path) -> None:
        if ema is not None and (cfg.fsdp or accelerator.is_main_process):
            torch.save(ema.state_dict(), _ema_path(folder, rank if cfg.fsdp else 0))

    def checkpoint() -> Path:
        return save_checkpoint(accelerator, run, step, trainer_state(), cfg.keep, save_ema)

    window = MetricsWindow(len(plan))
    last_record = None
    deadline = time.monotonic() + 60.0 * cfg.time_budget if cfg.time_budget else None
    out_of_time = False
    text_tokens = int(manifest["text_encoder"]["max_tokens"])
    objective.train()
    while step < cfg.steps:
        ratios = value_at(ratio_phases, step)
        lr = value_at(lr_phases, step)[0]
        for group in optimizer.param_groups:
            group["lr"] = lr
        groups = _move(drawer.draw(step, ratios), accelerator.device)
        stage_weights = weights.weights(ratios)
        losses = objective(groups)
        loss = sum(stage_weights[g.window] * l.sum() for g, l in zip(groups, losses)) / cfg.batch_size
        accelerator.backward(loss)
        grad_norm = accelerator.clip_grad_norm_(objective.parameters(), cfg.grad_clip)
        if not math.isfinite(float(grad_norm)):
            optimizer.zero_grad(set_to_none=True)
            nan_skipped += 1
            nan_streak += 1
            step += 1
            if nan_streak > cfg.max_nan_steps:
                path = checkpoint()
                raise NamiError(
                    f"training stopped at step {step}: {nan_streak} non-finite losses in a row; checkpoint "
                    f"{path}; try a lower --lr or --precision fp32"
                )
            continue
        nan_streak = 0
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.step(objective.parameters())  # the live parameters: EMAModel copies any that do not require grad

        # per-stage statistics, summed over ranks so every rank updates its weights identically
        stats = torch.zeros(2 * len(plan), dtype=torch.float64, device=accelerator.device)
        for g, l in zip(groups, losses):
            stats[2 * g.window] += l.detach().double().sum()
            stats[2 * g.window + 1] += l.numel()
        stats = accelerator.reduce(stats, reduction="sum") if world > 1 else stats
        per_stage = {k: (float(stats[2 * k]), int(stats[2 * k + 1])) for k in range(len(plan)) if stats[2 * k + 1] > 0}
        weights.update({k: s / n for k, (s, n) in per_stage.items()})
        taus = torch.cat([plan[g.window].tau(g.r) for g in groups]).tolist()
        sample_losses = torch.cat([l.detach() for l in losses]).tolist()
        tokens = sum(l.numel() * ((plan[g.window].resolution // (downsample * patch)) ** 2 + text_tokens)
                     for g, l in zip(groups, losses))
        window.add(float(loss.detach()), per_stage, taus, sample_losses, cfg.batch_size, tokens)
        step += 1
        if on_step is not None:
            on_step(step, cfg.steps)
        if step % cfg.log_every == 0 or step == cfg.steps:
            last_record = window.summary(step, lr, stage_weights, ratios, nan_skipped, world)
            log.write(last_record)
            if on_log is not None and accelerator.is_main_process:
                on_log(last_record)
            window.reset()
        if deadline is not None and step < cfg.steps:
            flag = torch.tensor(float(time.monotonic() >= deadline), device=accelerator.device)
            out_of_time = bool((accelerator.reduce(flag, reduction="max") if world > 1 else flag) > 0)
        if step % cfg.save_every == 0 or step == cfg.steps or out_of_time:
            checkpoint()
        if out_of_time:
            break

    done = step >= cfg.steps or out_of_time
    final = save_final(accelerator, objective, ema, cfg, run, plan, manifest, patch) if done else None
    log.close()
    accelerator.end_training()
    return TrainResult(step, final, last_record, nan_skipped)


def _want_preload(cfg: TrainConfig, manifest: dict) -> bool:
    if cfg.preload != "auto":
        return cfg.preload == "yes"
    folder = Path(cfg.data)
    size = sum((folder / s["file"]).stat().st_size for s in manifest["shards"] if (folder / s["file"]).is_file())
    return size < PRELOAD_BYTES


def _full_state_dict(accelerator, objective) -> dict:
    state = accelerator.get_state_dict(objective)
    prefix = "transformer."
    return {k[len(prefix):]: v.detach().cpu().clone() for k, v in state.items() if k.startswith(prefix)}


def save_final(accelerator, objective, ema, cfg: TrainConfig, run: Path, plan: FlowPlan, manifest: dict,
               patch: int) -> Path:
    """Write RUN/final: a model directory (raw weights + `ema` variant) that `nami sample` loads."""
    raw = _full_state_dict(accelerator, objective)
    ema_state = None
    if ema is not None:
        params = list(objective.parameters())
        ema.store(params)
        ema.copy_to(params)
        ema_state = _full_state_dict(accelerator, objective)
        ema.restore(params)
    final = run / "final"
    if accelerator.is_main_process:
        config = dict(accelerator.unwrap_model(objective).transformer.config)
        write_model_dir(final, config, raw, ema_state, plan, manifest, patch, cfg.mode, cfg.sample_steps,
                        cfg.sample_cfg)
    accelerator.wait_for_everyone()
    return final
