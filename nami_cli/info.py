"""`nami info`: parameters, stage plan, FLOPs and the FLOP reduction bound of a model; with
`--train-memory`, the estimated peak memory per GPU of one `nami train` step."""

from __future__ import annotations

import typer

from nami_core.info import InfoRequest
from nami_core.train.config import TrainMemoryRequest

from . import options as o
from . import output
from .output import log, print_table


@o.defaults_from(InfoRequest, TrainMemoryRequest)
def info(
    preset: o.Preset = None,
    model: o.model("A saved model directory (its configs; no weights are read).", o.MODEL) = None,
    stages: o.Stages = None,
    size: o.ImageSize = None,
    steps: o.EulerSteps = None,
    text_tokens: o.text_tokens("Text tokens counted in attention and FLOPs.", o.WORKLOAD) = None,
    train_memory: o.own(bool, "--train-memory", help="Estimate the peak memory per GPU of one `nami train` step instead.",
        panel=o.MEMORY) = None,
    batch_size: o.batch_size("Samples per step per GPU.", o.MEMORY) = None,
    dtype: o.TrainDtype = None,
    precision: o.OldDtype = None,
    grad_checkpointing: o.GradCheckpointing = None,
    fsdp: o.Fsdp = None,
    gpus: o.own(int, "--gpus", help="GPUs the run uses (FSDP divides the weights and optimizer state by it).",
        panel=o.MEMORY) = None,
    stage_mix: o.StageMix = None,
    ema_decay: o.EmaDecay = None,
    lora: o.lora_rank("A LoRA adapter of this rank trains, the model is frozen (as `nami train --lora`).",
                      o.MEMORY) = None,
    lora_targets: o.LoraTargets = None,
    as_json: o.PrintJson = None,
) -> None:
    """Show what a model costs before you spend GPU hours on it: parameters, stage plan, FLOPs per
    mode and the FLOP reduction bound; with --train-memory, the peak memory per GPU of a training step.

    Without --preset or --model it describes the bundled model, the one `nami sample` draws with.
    The training options (--batch-size, --dtype, ...) apply to --train-memory and default to `nami train`'s.

    Examples:

      nami info

      nami info --preset nami-2b

      nami info --preset nami-2b --stages 512,1024,2048 --json

      nami info --preset nami-2b --size 1024x576

      nami info --model runs/shapes/final

      nami info --preset nami-2b --train-memory --batch-size 4 --dtype bf16 --grad-checkpointing auto

      nami info --preset nami-2b --train-memory --batch-size 1 --dtype bf16 --lora 16
    """
    import json

    from nami_core.train.config import train_memory_request

    from .aliases import renamed

    req = InfoRequest(**o.given(preset=preset, model=model, stages=stages, size=size, steps=steps,
                                text_tokens=text_tokens, train_memory=train_memory))
    memory = train_memory_request(
        req.train_memory, batch_size=batch_size, dtype=renamed(dtype, precision, "--dtype", "--precision"),
        grad_checkpointing=grad_checkpointing, fsdp=fsdp, gpus=gpus, stage_mix=stage_mix, ema_decay=ema_decay,
        lora=lora, lora_targets=lora_targets)
    report = memory.report(req.describe(), req.text_tokens) if memory is not None else req.report()
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    elif memory is not None:
        _print_memory(report)
    else:
        _print_table(report)


def _size(window: dict) -> str:
    """A stage's side ("256"), or width x height when it is not square ("256x144")."""
    height, width = window["resolution"], window.get("width", window["resolution"])
    return str(height) if width == height else f"{width}x{height}"


def _fmt(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _print_table(report: dict) -> None:
    from rich.table import Table

    table = Table(title=f"{report['model']} at {report['width']}x{report['height']}: {report['params'] / 1e9:.3f}B "
                        f"parameters, {report['text_tokens']} text tokens")
    for col in ("stage", "res", "tokens", "blocks", "active params", "sigma", "tau", "steps", "jump (alpha, beta)"):
        table.add_column(col, justify="right")
    for k, s in enumerate(report["stages"]):
        jump = "-" if s["jump_alpha"] is None else f"({s['jump_alpha']:.3f}, {s['jump_beta']:.3f})"
        table.add_row(
            str(k + 1), _size(s), str(s["tokens"]), str(s["blocks"]), f"{s['params_active'] / 1e6:.1f}M",
            f"{_fmt(s['sigma_start'])} -> {_fmt(s['sigma_end'])}", f"{_fmt(s['tau_start'])} -> {_fmt(s['tau_end'])}",
            str(s["steps"]), jump,
        )
    print_table(table)
    flops = Table(title="forward FLOPs per image, whole sampling run")
    flops.add_column("mode")
    flops.add_column("TFLOPs", justify="right")
    flops.add_column("reduction vs flux-base", justify="right")
    for mode, value in report["flops"].items():
        red = report["reduction"].get(mode)
        flops.add_row(mode, f"{value / 1e12:.2f}", "-" if red is None else f"{100 * red:.1f}%")
    print_table(flops)


def _gib(nbytes: int) -> str:
    return f"{nbytes / 2**30:.2f}"


def _print_memory(report: dict) -> None:
    from rich.table import Table

    parallel = f"FSDP over {report['gpus']} GPUs" if report["parallel"] == "fsdp" else "DDP"
    mix = ":".join(f"{w:g}" for w in report["stage_mix"])
    log(
        f"{report['model']} ({report['params'] / 1e9:.3f}B parameters), one `nami train` step per GPU: "
        f"batch {report['batch_size']}, {report['dtype']}, {parallel}, grad checkpointing "
        f"{report['grad_checkpointing']}, EMA {'on' if report['ema'] else 'off'}, {report['text_tokens']} text tokens, "
        f"stage mix {mix} ({report['stage_mix_source']})"
        + (f"; LoRA rank {report['lora']['rank']} on {report['lora']['targets']}: "
           f"{report['lora']['trainable_params'] / 1e6:.1f}M parameters train, the model is frozen"
           f"{' in ' + report['dtype'] if report['dtype'] != 'fp32' else ''} (activations as full training: an upper bound)"
           if "lora" in report else ""), output.stdout
    )
    windows = Table(title="activations per stage window (samples: the mix's shares of the batch, largest remainder)")
    for col in ("window", "res", "tokens", "blocks", "samples", "recomputed blocks", "GiB"):
        windows.add_column(col, justify="right")
    for w in report["windows"]:
        windows.add_row(str(w["window"] + 1), _size(w), str(w["tokens"]), str(w["blocks"]),
                        str(w["samples"]), str(w["recomputed_blocks"]), _gib(w["activation_bytes"]))
    print_table(windows)
    parts = report["bytes"]
    table = Table(title="memory per GPU")
    table.add_column("part")
    table.add_column("GiB", justify="right")
    for label, key in (("parameters (fp32)" if "lora" not in report else "parameters", "parameters"), ("gradients (fp32)", "gradients"),
                       ("AdamW state (2 x fp32)", "adamw"), ("EMA (fp32)", "ema"),
                       ("communication buffers", "communication"), ("autocast weight copies", "autocast_weights"),
                       ("activations", "activations")):
        table.add_row(label, _gib(parts[key]))
    for phase, value in report["phases"].items():
        table.add_row(f"peak in {phase}", _gib(value))
    table.add_row("[bold]peak[/bold]", f"[bold]{_gib(report['peak_bytes'])}[/bold]")
    print_table(table)
    worst = report["worst_draw"]
    split = ":".join(map(str, worst["samples_per_window"]))
    log(
        f"peak {_gib(report['peak_bytes'])} GiB per GPU (in {report['peak_phase']}); the costliest random draw of "
        f"stages ({split} samples per window, what `nami train` checks): {_gib(worst['peak_bytes'])} GiB. "
        "Not counted: CUDA context, kernel workspaces, allocator fragmentation.", output.stdout
    )
