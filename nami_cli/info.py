"""`nami info`: parameters, stage plan, FLOPs and the FLOP reduction bound of a model."""

from __future__ import annotations

from typing import Optional

import typer


def info(
    preset: Optional[str] = typer.Option(None, "--preset", help="nami-2b | nami-0.6b | flux-base-2b | tiny."),
    model: Optional[str] = typer.Option(None, "--model", help="A saved model directory instead of a preset."),
    stages: Optional[str] = typer.Option(None, "--stages", help="Stage resolutions in pixels, e.g. 256,512,1024."),
    steps: Optional[str] = typer.Option(None, "--steps", help="Euler steps per stage, e.g. 10,10,10."),
    text_tokens: int = typer.Option(256, "--text-tokens", help="Text tokens counted in attention and FLOPs."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Show what a model costs before you spend GPU hours on it.

    Examples:

      nami info --preset nami-2b

      nami info --preset nami-2b --stages 512,1024,2048 --json

      nami info --model runs/shapes/final
    """
    import json

    from nami_core.config import parse_int_list
    from nami_core.errors import NamiError
    from nami_core.info import describe_model_dir, describe_preset, plan_report

    if preset and model:
        raise NamiError("give --preset or --model, not both")
    resolutions = parse_int_list(stages, "--stages") if stages else None
    if model:
        desc = describe_model_dir(model, resolutions)
    else:
        desc = describe_preset(preset or "nami-2b", resolutions)
    report = plan_report(desc, steps, text_tokens)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    _print_table(report)


def _fmt(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _print_table(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"{report['model']}: {report['params'] / 1e9:.3f}B parameters, {report['text_tokens']} text tokens")
    for col in ("stage", "res", "tokens", "blocks", "active params", "sigma", "tau", "steps", "jump (alpha, beta)"):
        table.add_column(col, justify="right")
    for k, s in enumerate(report["stages"]):
        jump = "-" if s["jump_alpha"] is None else f"({s['jump_alpha']:.3f}, {s['jump_beta']:.3f})"
        table.add_row(
            str(k + 1), str(s["resolution"]), str(s["tokens"]), str(s["blocks"]), f"{s['params_active'] / 1e6:.1f}M",
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
