"""`nami train`: the multi-resolution NAMI objective (Algorithm 1) on accelerate."""

from __future__ import annotations

from pathlib import Path

import typer

from nami_core.config import PREDICTIONS, TEXT_POSITIONS, TIMESTEP_SAMPLINGS
from nami_core.train.config import LR_SCHEDULERS, MAX_TRAIN_BATCH, OPTIMIZERS, PRELOADS, REPORT_TO, TrainConfig

from . import options as o
from .options import choices


@o.defaults_from(TrainConfig)
def train(
    data: o.own(Path, "--data", help="Folder written by `nami prepare-data`.", panel=o.DATA),
    out: o.out("Run folder: checkpoints/, metrics.jsonl, train_config.json and final/ (the model, or the "
               "adapter with --lora).", o.DATA),
    stages: o.Stages,
    preset: o.Preset = None,
    config: o.own(Path, "--config", help="Model config JSON: ModelConfig fields, optionally \"flow\" (window_ratios, gamma).",
        panel=o.MODEL) = None,
    model: o.model("Start from this model directory (e.g. from `nami convert flux`); with --lora, the frozen "
                   "model the adapter trains on.", o.MODEL) = None,
    init: o.OldInit = None,
    mode: o.Mode = None,
    prediction: o.own(str, "--prediction", metavar=choices(PREDICTIONS), panel=o.MODEL,
        help="What the network outputs; sample: the clean image x0.") = None,
    text_positions: o.own(str, "--text-positions", metavar=choices(TEXT_POSITIONS), panel=o.MODEL,
        help="Rotary ids of the text tokens; ordered puts token k at (k, 0, 0), so attention tells the words' "
             "order apart (FLUX puts them all at zero); may change a --model's.") = None,
    patch_size: o.own(int, "--patch-size", help="Pixel codec only: tokens are PxP patches.", panel=o.MODEL) = None,
    stage_mix: o.StageMix = None,
    ratio_schedule: o.OldRatioSchedule = None,
    window_ratios: o.own(str, "--window-ratios", help="Flow window lengths, low to high resolution, e.g. 1:1:1.",
        panel=o.STAGES) = None,
    timestep_sampling: o.own(str, "--timestep-sampling", metavar=choices(TIMESTEP_SAMPLINGS), panel=o.STAGES,
        help="How the local time r inside a window is drawn.") = None,
    stage_loss_weights: o.own(str, "--stage-loss-weights", panel=o.STAGES,
        help="auto (balance the stages by their running loss), or fixed weights, e.g. 1,1,1.") = None,
    sample_steps: o.own(str, "--sample-steps", help="Euler steps per stage the model samples with by default (saved with it).",
        panel=o.STAGES) = None,
    sample_cfg: o.own(str, "--sample-cfg", help="Guidance scale the model samples with by default, or one per stage such as 15,3,3.",
        panel=o.STAGES) = None,
    steps: o.optimizer_steps("Optimizer steps in all.", o.OPTIMISATION) = None,
    batch_size: o.batch_size("Samples per micro-batch per process (one optimizer step takes "
                             "--gradient-accumulation-steps of them, at most "
                             f"{MAX_TRAIN_BATCH:,} samples in all).", o.OPTIMISATION) = None,
    batch: o.OldBatchSize = None,
    gradient_accumulation_steps: o.own(int, "--gradient-accumulation-steps", panel=o.OPTIMISATION,
        help="Micro-batches per optimizer step, their gradients summed: the same update as one batch "
             "that many times larger, in the memory of one micro-batch.") = None,
    lr: o.own(float, "--lr", help="A constant learning rate instead of --lr-schedule (one so large that the run "
        "diverges stops it after --max-nan-steps).", panel=o.OPTIMISATION) = None,
    lr_schedule: o.own(str, "--lr-schedule", help="Learning-rate phases STEP:LR, e.g. 0:1e-4,200000:5e-5; "
                       "each phase's rate is the peak --lr-scheduler shapes.", panel=o.OPTIMISATION) = None,
    lr_scheduler: o.own(str, "--lr-scheduler", metavar=choices(LR_SCHEDULERS), panel=o.OPTIMISATION,
        help="diffusers' learning-rate shape over --steps (get_scheduler), times the --lr-schedule peak.") = None,
    lr_warmup_steps: o.own(int, "--lr-warmup-steps", panel=o.OPTIMISATION,
        help="Steps of linear warmup from 0 (with a scheduler other than constant; 0: none).") = None,
    optimizer: o.own(str, "--optimizer", metavar=choices(OPTIMIZERS), panel=o.OPTIMISATION,
        help="adamw8bit: bitsandbytes' 8-bit AdamW (installed separately).") = None,
    adam_beta1: o.own(float, "--adam-beta1", help="AdamW's beta1, the decay of its gradient average (0: no momentum, "
        "each step follows its own gradient).", panel=o.OPTIMISATION) = None,
    adam_beta2: o.own(float, "--adam-beta2", help="AdamW's beta2, the decay of its squared-gradient average (0: each "
        "step scaled by its own gradient alone).", panel=o.OPTIMISATION) = None,
    adam_weight_decay: o.own(float, "--adam-weight-decay", help="AdamW's decoupled weight decay (0: none): each step "
        "multiplies the weights by 1 - lr x decay, so lr x decay must stay below 1.", panel=o.OPTIMISATION) = None,
    adam_epsilon: o.own(float, "--adam-epsilon", help="AdamW's epsilon, added to the gradient's scale.",
        panel=o.OPTIMISATION) = None,
    cfg_dropout: o.own(float, "--cfg-dropout", help="Probability of training on the empty prompt (what makes guidance work; "
        "0: never, and guidance then has nothing to push away from).",
        panel=o.OPTIMISATION) = None,
    ema_decay: o.EmaDecay = None,
    grad_clip: o.own(float, "--grad-clip", help="Gradient norm clip; one above any gradient norm (e.g. 1e9) leaves the "
        "gradients unclipped.", panel=o.OPTIMISATION) = None,
    max_nan_steps: o.own(int, "--max-nan-steps", help="Stop after this many non-finite steps in a row (0: at the first).",
        panel=o.OPTIMISATION) = None,
    seed: o.seed("Seed of the initialisation and of the data order.", o.OPTIMISATION) = None,
    dtype: o.TrainDtype = None,
    attention: o.Attention = None,
    precision: o.OldDtype = None,
    grad_checkpointing: o.GradCheckpointing = None,
    compile_: o.Compile = None,
    fsdp: o.Fsdp = None,
    preload: o.own(str, "--preload", metavar=choices(PRELOADS), panel=o.PRECISION,
        help="Hold the prepared data in memory; auto: when it is small.") = None,
    save_every: o.own(int, "--save-every", help="Checkpoint every N steps.", panel=o.CHECKPOINTS) = None,
    keep: o.own(int, "--keep", help="Checkpoints kept (0 = all).", panel=o.CHECKPOINTS) = None,
    resume: o.own(str, "--resume", help="latest, or the PATH of a checkpoint.", panel=o.CHECKPOINTS) = None,
    time_budget: o.own(float, "--time-budget", help="Stop after this many minutes of training (checkpoint + final model); resumable.",
        panel=o.CHECKPOINTS) = None,
    lora: o.lora_rank("Train a LoRA adapter of this rank on the frozen --model (RUN/final is the adapter, "
                      "for `nami sample --lora`).", o.LORA) = None,
    lora_targets: o.LoraTargets = None,
    lora_alpha: o.own(float, "--lora-alpha", help="LoRA alpha (the adapter's scale is alpha / rank).", panel=o.LORA) = None,
    log_every: o.own(int, "--log-every", help="Steps per metrics line.", panel=o.LOGGING) = None,
    report_to: o.own(str, "--report-to", metavar=choices(REPORT_TO), panel=o.LOGGING,
        help="Trackers that get the metrics and validation images besides RUN/metrics.jsonl (accelerate's; "
             "files in RUN/logs); all: those installed.") = None,
    validation_prompt: o.own(list[str], "--validation-prompt", panel=o.VALIDATION,
        help="A prompt drawn every --validation-every steps into RUN/samples/step-N.png; repeat for more.") = None,
    validation_prompts: o.own(Path, "--validation-prompts", panel=o.VALIDATION,
        help="A text file of validation prompts, one per line (instead of --validation-prompt).") = None,
    validation_every: o.own(int, "--validation-every", help="Steps between validation grids (and the last step).",
        panel=o.VALIDATION) = None,
    validation_seed: o.own(int, "--validation-seed", help="Seed of the first validation prompt's image (prompt i: "
                           "seed + i).", panel=o.VALIDATION) = None,
) -> None:
    """Train a NAMI model: each sample trains one stage, drawn by the stage mix in force.

    Runs in one process, or in many under `accelerate launch` / `torchrun` (DDP; --fsdp to shard).

    Examples:

      nami train --data data/shapes --out runs/shapes --config examples/nami-shapes/model.json --stages 16,32,64 --steps 20000 --lr 5e-4

      accelerate launch --num_processes 8 $(which nami) train --data data/laion --out runs/2b --preset nami-2b --stages 256,512,1024 --dtype bf16 --grad-checkpointing auto

      nami train --data data/shapes --out runs/shapes --config examples/nami-shapes/model.json --stages 16,32,64 --resume latest

      nami train --data data/shapes --out runs/late --model models/shapes --stages 16,32,64 --stage-mix 1:2:4 --lr 1e-4

      nami train --data data/new-word --out runs/lora --stages 16,32,64 --model models/shapes --lora 8 --lr 1e-3 --steps 300

      nami train --data data/shapes --out runs/cos --config examples/nami-shapes/model.json --stages 16,32,64 --lr 5e-4 --lr-scheduler cosine --lr-warmup-steps 100 --gradient-accumulation-steps 2 --validation-prompt "a photo of a red circle" --report-to tensorboard
    """
    from .aliases import renamed

    settings = TrainConfig(data=data, out=out, stages=stages, **o.given(
        preset=preset, config_file=config, init=renamed(model, init, "--model", "--init"), mode=mode,
        steps=steps, batch_size=renamed(batch_size, batch, "--batch-size", "--batch"), lr=lr,
        stage_mix=renamed(stage_mix, ratio_schedule, "--stage-mix", "--ratio-schedule"), lr_schedule=lr_schedule,
        timestep_sampling=timestep_sampling, stage_loss_weights=stage_loss_weights, cfg_dropout=cfg_dropout,
        ema_decay=ema_decay, dtype=renamed(dtype, precision, "--dtype", "--precision"), attention=attention,
        grad_checkpointing=grad_checkpointing, compile=compile_, fsdp=fsdp, save_every=save_every, keep=keep,
        resume=resume, seed=seed, log_every=log_every, patch_size=patch_size, prediction=prediction,
        text_positions=text_positions, window_ratios=window_ratios, sample_steps=sample_steps,
        sample_cfg=sample_cfg, max_nan_steps=max_nan_steps, grad_clip=grad_clip, preload=preload,
        time_budget=time_budget, lora=lora, lora_targets=lora_targets, lora_alpha=lora_alpha,
        gradient_accumulation_steps=gradient_accumulation_steps, lr_scheduler=lr_scheduler,
        lr_warmup_steps=lr_warmup_steps, optimizer=optimizer, adam_beta1=adam_beta1, adam_beta2=adam_beta2,
        adam_weight_decay=adam_weight_decay, adam_epsilon=adam_epsilon, report_to=report_to,
        validation_prompt=validation_prompt or None, validation_prompts=validation_prompts,
        validation_every=validation_every, validation_seed=validation_seed,
    ))
    settings.check_inputs()
    if settings.preset is None and settings.config_file is None and settings.init is None:
        typer.echo("note: no --preset, --config or --model given: training the `tiny` preset (a test-sized model)",
                   err=True)
    run(settings)


def run(settings: TrainConfig, console=None) -> None:
    """Train with progress and log lines on stderr (`progress.TrainProgress`; `console`: where,
    the shared stderr console by default); imports torch and accelerate."""
    from .output import log
    from .progress import TrainProgress

    with TrainProgress(settings.steps, console) as progress:
        progress.phase("importing torch and accelerate")
        from nami_core.modeldir import quiet_loading
        from nami_core.train.loop import train as run_training

        quiet_loading()
        result = run_training(settings, on_log=progress.record, on_step=progress.step, on_phase=progress.phase,
                              on_note=lambda text: log(f"note: {text}", progress.console))
        if result.compile_warning is not None:
            log(f"warning: {result.compile_warning}", progress.console)
    if result.final_dir is not None:
        skipped = f" ({result.nan_skipped} non-finite steps skipped)" if result.nan_skipped else ""
        what = "adapter" if settings.lora else "model"
        log(f"done at step {result.step}{skipped}; {what}: {result.final_dir}", progress.console)
