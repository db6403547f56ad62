"""`nami info`: parameters, stage plan, FLOPs and the FLOP reduction bound of a model; with
`--train-memory`, the estimated peak memory per GPU of one `nami train` step."""

from __future__ import annotations

from typing import Optional

import typer


def info(
    preset: Optional[str] = typer.Option(None, "--preset", help="nami-2b | nami-0.6b | flux-base-2b | tiny."),
    model: Optional[str] = typer.Option(None, "--model", help="A saved model directory instead of a preset."),
    stages: Optional[str] = typer.Option(None, "--stages", help="Stage resolutions in pixels, e.g. 256,512,1024."),
    size: Optional[str] = typer.Option(None, "--size", help="Final image size WIDTHxHEIGHT in pixels, e.g. 1024x576: every stage at that aspect ratio, each half the next (instead of --stages)."),
    steps: Optional[str] = typer.Option(None, "--steps", help="Euler steps per stage, e.g. 10,10,10."),
    text_tokens: int = typer.Option(256, "--text-tokens", help="Text tokens counted in attention and FLOPs."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    train_memory: bool = typer.Option(False, "--train-memory", help="Estimate the peak memory per GPU of one `nami train` step instead."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="--train-memory: samples per step per GPU (default 32, as `nami train`)."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="--train-memory: fp32 (default) | bf16 | fp16 mixed precision."),
    precision: Optional[str] = typer.Option(None, "--precision", hidden=True, help="Old name of --dtype."),
    grad_checkpointing: Optional[str] = typer.Option(None, "--grad-checkpointing", help="--train-memory: none (default) | full | last-stage | auto, as `nami train`."),
    fsdp: bool = typer.Option(False, "--fsdp", help="--train-memory: shard with FSDP over --gpus GPUs (default: DDP)."),
    gpus: Optional[int] = typer.Option(None, "--gpus", help="--train-memory: GPUs the run uses (FSDP divides the weights and optimizer state by it)."),
    stage_mix: Optional[str] = typer.Option(None, "--stage-mix", help="--train-memory: the stage mix, e.g. 4:2:1 (default: the costliest phase of the default schedule)."),
    ema_decay: Optional[float] = typer.Option(None, "--ema-decay", help="--train-memory: EMA decay as `nami train` (default 0.9999; 0 = no EMA)."),
    lora: Optional[int] = typer.Option(None, "--lora", help="--train-memory: a LoRA adapter of this rank trains, the model is frozen (as `nami train --lora`)."),
    lora_targets: Optional[str] = typer.Option(None, "--lora-targets", help="--train-memory with --lora: attn (default) | attn+mlp."),
) -> None:
    """Show what a model costs before you spend GPU hours on it.

    Examples:

      nami info --preset nami-2b

      nami info --preset nami-2b --stages 512,1024,2048 --json

      nami info --preset nami-2b --size 1024x576

      nami info --model runs/shapes/final

      nami info --preset nami-2b --train-memory --batch-size 4 --dtype bf16 --grad-checkpointing auto

      nami info --preset nami-2b --train-memory --batch-size 1 --dtype bf16 --lora 16
    """
    import json

    from nami_core.config import parse_int_list
    from nami_core.errors import NamiError
    from nami_core.info import describe_model_dir, describe_preset, plan_report

    from .aliases import renamed
    from .sample import parse_size

    if preset and model:
        raise NamiError("give --preset or --model, not both")
    if stages and size:
        raise NamiError("give --stages or --size, not both")
    train_options = {"--batch-size": batch_size, "--dtype": dtype, "--precision": precision,
                     "--grad-checkpointing": grad_checkpointing, "--fsdp": fsdp or None, "--gpus": gpus,
                     "--stage-mix": stage_mix, "--ema-decay": ema_decay, "--lora": lora, "--lora-targets": lora_targets}
    if not train_memory:
        given = [flag for flag, value in train_options.items() if value is not None]
        if given:
            raise NamiError(f"{', '.join(given)} {'needs' if len(given) == 1 else 'need'} --train-memory")
    elif steps is not None:
        raise NamiError("--steps does not apply to --train-memory")
    resolutions = parse_int_list(stages, "--stages") if stages is not None else None
    final = parse_size(size) if size is not None else None
    if model:
        desc = describe_model_dir(model, resolutions, final)
    else:
        desc = describe_preset(preset or "nami-2b", resolutions, final)
    if train_memory:
        from nami_core.train.adapters import lora_parameter_count
        from nami_core.train.memory import train_memory_report

        ema = 0.9999 if ema_decay is None else ema_decay
        if not 0.0 <= ema < 1.0:
            raise NamiError("--ema-decay must be in [0, 1)")
        if lora is None and lora_targets is not None:
            raise NamiError("--lora-targets needs --lora")
        if fsdp and gpus is None:
            raise NamiError("--fsdp needs --gpus N (the GPUs that share the weights)")
        memory = train_memory_report(
            desc.name, desc.model, desc.flow, desc.pixels_per_token, desc.default_mode,
            batch_size=32 if batch_size is None else batch_size,
            dtype=renamed(dtype, precision, "--dtype", "--precision", "fp32"),
            text_tokens=text_tokens, grad_checkpointing=grad_checkpointing or "none", stage_mix=stage_mix,
            fsdp=fsdp, gpus=1 if gpus is None else gpus, ema=ema > 0,
            trainable=None if lora is None else lora_parameter_count(desc.model, lora, lora_targets or "attn"),
        )
        if lora is not None:
            memory["lora"] = {"rank": lora, "targets": lora_targets or "attn", "trainable_params": memory["trainable_params"]}
        if as_json:
            typer.echo(json.dumps(memory, indent=2))
        else:
            _print_memory(memory)
        return
    report = plan_report(desc, steps, text_tokens)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    _print_table(report)


def _size(window: dict) -> str:
    """A stage's side ("256"), or width x height when it is not square ("256x144")."""
    height, width = window["resolution"], window.get("width", window["resolution"])
    return str(height) if width == height else f"{width}x{height}"


def _fmt(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _print_table(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
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
    console.print(table)
    flops = Table(title="forward FLOPs per image, whole sampling run")
    flops.add_column("mode")
    flops.add_column("TFLOPs", justify="right")
    flops.add_column("reduction vs flux-base", justify="right")
    for mode, value in report["flops"].items():
        red = report["reduction"].get(mode)
        flops.add_row(mode, f"{value / 1e12:.2f}", "-" if red is None else f"{100 * red:.1f}%")
    console.print(flops)


def _gib(nbytes: int) -> str:
    return f"{nbytes / 2**30:.2f}"


def _print_memory(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    parallel = f"FSDP over {report['gpus']} GPUs" if report["parallel"] == "fsdp" else "DDP"
    mix = ":".join(f"{w:g}" for w in report["stage_mix"])
    console.print(
        f"{report['model']} ({report['params'] / 1e9:.3f}B parameters), one `nami train` step per GPU: "
        f"batch {report['batch_size']}, {report['dtype']}, {parallel}, grad checkpointing "
        f"{report['grad_checkpointing']}, EMA {'on' if report['ema'] else 'off'}, {report['text_tokens']} text tokens, "
        f"stage mix {mix} ({report['stage_mix_source']})"
        + (f"; LoRA rank {report['lora']['rank']} on {report['lora']['targets']}: "
           f"{report['lora']['trainable_params'] / 1e6:.1f}M parameters train, the model is frozen"
           f"{' in ' + report['dtype'] if report['dtype'] != 'fp32' else ''} (activations as full training: an upper bound)"
           if "lora" in report else "")
    )
    windows = Table(title="activations per stage window (samples: the mix's shares of the batch, largest remainder)")
    for col in ("window", "res", "tokens", "blocks", "samples", "recomputed blocks", "GiB"):
        windows.add_column(col, justify="right")
    for w in report["windows"]:
        windows.add_row(str(w["window"] + 1), _size(w), str(w["tokens"]), str(w["blocks"]),
                        str(w["samples"]), str(w["recomputed_blocks"]), _gib(w["activation_bytes"]))
    console.print(windows)
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
    console.print(table)
    worst = report["worst_draw"]
    split = ":".join(map(str, worst["samples_per_window"]))
    console.print(
        f"peak {_gib(report['peak_bytes'])} GiB per GPU (in {report['peak_phase']}); the costliest random draw of "
        f"stages ({split} samples per window, what `nami train` checks): {_gib(worst['peak_bytes'])} GiB. "
        "Not counted: CUDA context, kernel workspaces, allocator fragmentation."
    )
