"""`nami train`: the multi-resolution NAMI objective (Algorithm 1) on accelerate."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def train(
    data: Path = typer.Option(..., "--data", help="Folder written by `nami prepare-data`."),
    out: Path = typer.Option(..., "--out", help="Run folder: checkpoints/, metrics.jsonl, final/."),
    stages: str = typer.Option(..., "--stages", help="Stage resolutions; must equal the data's, e.g. 256,512,1024."),
    preset: Optional[str] = typer.Option(None, "--preset", help="nami-2b | nami-0.6b | flux-base-2b | tiny."),
    config: Optional[Path] = typer.Option(None, "--config", help="Model config JSON (ModelConfig fields, optional \"flow\")."),
    init: Optional[Path] = typer.Option(None, "--init", help="Start from a model directory (e.g. from `nami convert flux`)."),
    mode: str = typer.Option("nami", "--mode", help="nami | flow-only | flux-base."),
    steps: int = typer.Option(1000, "--steps", help="Total optimizer steps."),
    batch_size: int = typer.Option(32, "--batch-size", help="Samples per step per process."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Constant learning rate (default: --lr-schedule)."),
    ratio_schedule: Optional[str] = typer.Option(None, "--ratio-schedule", help="Stage sampling phases, e.g. \"0:4:2:1,120000:2:4:1,200000:1:2:4\" (the default)."),
    lr_schedule: Optional[str] = typer.Option(None, "--lr-schedule", help="LR phases, e.g. \"0:1e-4,200000:5e-5\" (the default)."),
    timestep_sampling: str = typer.Option("logit-normal", "--timestep-sampling", help="logit-normal | uniform."),
    stage_loss_weights: str = typer.Option("auto", "--stage-loss-weights", help="auto (balance by running loss) or fixed, e.g. 1,1,1."),
    cfg_dropout: float = typer.Option(0.1, "--cfg-dropout", help="Probability of training on the empty prompt."),
    ema_decay: float = typer.Option(0.9999, "--ema-decay", help="EMA decay (0 = no EMA)."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="auto (default: accelerate's mixed precision if set, else bf16 on CUDA, fp32 on CPU) | fp32 | bf16 | fp16 mixed precision."),
    attention: str = typer.Option("auto", "--attention", help="auto | native | xformers | flash (checked by running it before training starts)."),
    precision: Optional[str] = typer.Option(None, "--precision", hidden=True, help="Old name of --dtype."),
    grad_checkpointing: str = typer.Option("none", "--grad-checkpointing", help="Recompute activations in backward: none | full (also the bare flag) | last-stage (the last stage module's blocks) | auto (every block, full-resolution samples only)."),
    compile_: bool = typer.Option(False, "--compile", help="torch.compile every transformer block (the first steps compile; needs a C++ compiler on CPU)."),
    fsdp: bool = typer.Option(False, "--fsdp", help="Shard with FSDP, wrapping transformer blocks (default: DDP)."),
    save_every: int = typer.Option(1000, "--save-every", help="Checkpoint every N steps."),
    keep: int = typer.Option(3, "--keep", help="Checkpoints kept (0 = all)."),
    resume: Optional[str] = typer.Option(None, "--resume", help="latest | PATH of a checkpoint."),
    seed: int = typer.Option(0, "--seed", help="Seed of initialisation and data order."),
    log_every: int = typer.Option(10, "--log-every", help="Steps per metrics line."),
    patch_size: Optional[int] = typer.Option(None, "--patch-size", help="Pixel codec only: tokens are PxP patches."),
    prediction: Optional[str] = typer.Option(None, "--prediction", help="velocity | sample: what the network outputs."),
    text_positions: Optional[str] = typer.Option(None, "--text-positions", help="none | ordered: text tokens' rotary ids (ordered: token k at (k, 0, 0)); may change an --init model's."),
    window_ratios: Optional[str] = typer.Option(None, "--window-ratios", help="Flow window lengths, e.g. 1:1:1."),
    sample_steps: Optional[str] = typer.Option(None, "--sample-steps", help="Default sampling steps saved with the model."),
    sample_cfg: str = typer.Option("3", "--sample-cfg", help="Default guidance scale saved with the model, or one per stage such as 15,3,3."),
    max_nan_steps: int = typer.Option(20, "--max-nan-steps", help="Stop after this many non-finite steps in a row."),
    grad_clip: float = typer.Option(1.0, "--grad-clip", help="Gradient norm clip."),
    preload: str = typer.Option("auto", "--preload", help="auto | yes | no: hold the data in memory."),
    time_budget: Optional[float] = typer.Option(None, "--time-budget", help="Stop after this many minutes of training (checkpoint + final model); resumable."),
    lora: Optional[int] = typer.Option(None, "--lora", help="Train a LoRA adapter of this rank on the frozen --init model (RUN/final is the adapter, for `nami sample --lora`)."),
    lora_targets: str = typer.Option("attn", "--lora-targets", help="LoRA on attn (attention projections) or attn+mlp (also the feed-forward layers)."),
    lora_alpha: Optional[float] = typer.Option(None, "--lora-alpha", help="LoRA alpha (scale alpha/rank; default: the rank)."),
) -> None:
    """Train a NAMI model: each sample trains one stage, drawn by the stage ratio in force.

    Runs in one process, or in many under `accelerate launch` / `torchrun` (DDP; --fsdp to shard).

    Examples:

      nami train --data data/shapes --out runs/shapes --config examples/nami-shapes/model.json --stages 16,32,64 --steps 20000 --lr 5e-4

      accelerate launch --num_processes 8 $(which nami) train --data data/laion --out runs/2b --preset nami-2b --stages 256,512,1024 --dtype bf16 --grad-checkpointing auto

      nami train --data data/shapes --out runs/shapes --stages 16,32,64 --config model.json --resume latest

      nami train --data data/new-word --out runs/lora --stages 16,32,64 --init models/shapes --lora 8 --lr 1e-3 --steps 300
    """
    from nami_core.config import parse_int_list
    from nami_core.modeldir import quiet_loading
    from nami_core.train.config import TrainConfig
    from nami_core.train.loop import train as run_training

    from .aliases import renamed
    from .progress import console

    from nami_core.output_targets import check_folder_target

    quiet_loading()
    check_folder_target(out, "--out")
    if preset is None and config is None and init is None:
        typer.echo("note: no --preset, --config or --init given: training the `tiny` preset (a test-sized model)", err=True)
    settings = TrainConfig(
        data=data, out=out, stages=parse_int_list(stages, "--stages"), preset=preset, config_file=config, init=init,
        mode=mode, steps=steps, batch_size=batch_size, lr=lr, ratio_schedule=ratio_schedule, lr_schedule=lr_schedule,
        timestep_sampling=timestep_sampling, stage_loss_weights=stage_loss_weights, cfg_dropout=cfg_dropout,
        ema_decay=ema_decay, dtype=renamed(dtype, precision, "--dtype", "--precision", "auto"), attention=attention, grad_checkpointing=grad_checkpointing, compile=compile_, fsdp=fsdp,
        save_every=save_every, keep=keep, resume=resume, seed=seed, log_every=log_every, patch_size=patch_size,
        prediction=prediction, text_positions=text_positions, window_ratios=window_ratios, sample_steps=sample_steps, sample_cfg=sample_cfg,
        max_nan_steps=max_nan_steps, grad_clip=grad_clip, preload=preload, time_budget=time_budget,
        lora=lora, lora_targets=lora_targets, lora_alpha=lora_alpha,
    )

    def on_log(r: dict) -> None:
        stages_txt = " ".join("-" if v is None else f"{v:.4f}" for v in r["loss_stage"])
        console.print(
            f"step {r['step']:>7}  loss {r['loss']:.4f}  stages [{stages_txt}]  lr {r['lr']:.2e}  "
            f"{r['images_per_s']:.1f} img/s  {r['tokens_per_s']:.0f} tok/s"
            + (f"  nan-skipped {r['nan_skipped']}" if r["nan_skipped"] else "")
        )

    result = run_training(settings, on_log=on_log, on_note=lambda text: typer.echo(f"note: {text}", err=True))
    if result.final_dir is not None:
        skipped = f" ({result.nan_skipped} non-finite steps skipped)" if result.nan_skipped else ""
        what = "adapter" if lora else "model"
        console.print(f"done at step {result.step}{skipped}; {what}: {result.final_dir}")
