"""`nami sample`: generate images from a prompt."""

from __future__ import annotations

from typing import Optional

import typer


def sample(
    prompt: str = typer.Argument(..., help="What to draw."),
    model: Optional[str] = typer.Option(None, "--model", help="Model directory (default: the bundled nami-shapes model)."),
    out: str = typer.Option("nami-samples", "--out", help="Output folder (each image gets a name of its own: <prompt>-<settings hash>-s<seed>.png), or a .png file for one image. A name already taken gets -1, -2, ... (see --overwrite)."),
    n: int = typer.Option(1, "--n", help="Number of images; image i uses seed S+i."),
    seed: int = typer.Option(0, "--seed", help="Seed of the first image."),
    steps: Optional[str] = typer.Option(None, "--steps", help="Euler steps per stage, e.g. 10,10,10; one number is split evenly. Default: the model's."),
    cfg: Optional[str] = typer.Option(None, "--cfg", help="Classifier-free guidance scale (1 = off, at most 100), or one per stage such as 8,3,3. Default: the model's."),
    negative: Optional[str] = typer.Option(None, "--negative", help="Negative prompt for guidance."),
    mode: Optional[str] = typer.Option(None, "--mode", help="nami | flow-only | flux-base. Default: the model's."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda."),
    dtype: str = typer.Option("auto", "--dtype", help="auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16 | fp16 for the transformer."),
    attention: str = typer.Option("auto", "--attention", help="auto | native | xformers | flash."),
    batch_size: int = typer.Option(8, "--batch-size", help="Images generated per batch."),
    prompt_style: str = typer.Option("plain", "--prompt-style", help="plain | nami-t2i-demo: the public NAMI-T2I demo's quality suffix and default negative prompt."),
    compile_: bool = typer.Option(False, "--compile", help="torch.compile the transformer blocks (CUDA graphs on a GPU); the first image pays the compile time."),
    timestep_rounding: Optional[str] = typer.Option(None, "--timestep-rounding", help="none | fp16: round model timesteps as the public release's float16 pipeline does. Default: the model's."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON report instead of the summary."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a PNG of the same name and its .json instead of writing NAME-1.png."),
    size: Optional[str] = typer.Option(None, "--size", help="Image size WIDTHxHEIGHT in pixels, e.g. 1024x576 (any aspect ratio whose sides halve into whole tokens in every stage). Default: the model's square side."),
    width: Optional[int] = typer.Option(None, "--width", help="Image width in pixels (instead of --size; the height defaults to the model's side)."),
    height: Optional[int] = typer.Option(None, "--height", help="Image height in pixels (instead of --size)."),
    lora: Optional[list[str]] = typer.Option(None, "--lora", help="A LoRA adapter folder (diffusers/peft format, as `nami train --lora` saves) with an optional scale, ADAPTER[:SCALE]; repeat to stack adapters."),
) -> None:
    """Generate images from PROMPT and write PNGs with their settings (PNG text chunk + sidecar JSON).

    No file is ever replaced without --overwrite: in a folder, prompts or settings that differ give
    different names, and a name already taken (a second run of the same ones, or an --out .png that
    exists) is numbered NAME-1.png, NAME-2.png, ... The paths written are printed.

    Examples:

      nami sample "a photo of a red circle left of a blue square"

      nami sample "a photo of three purple triangles" --n 4 --seed 7 --out shapes/

      nami sample "a cat" --model runs/cat/final --steps 10,10,10 --cfg 4 --device cuda --compile

      nami sample "a photo of a red circle left of a blue square" --cfg 12,3,3

      nami sample "two blue squares" --size 128x64

      nami sample "a photo of a teal circle" --model runs/teal/base --lora runs/teal/final/lora:0.8

      nami sample "一只戴着帽子的猫" --model models/nami-2b --prompt-style nami-t2i-demo --device cuda --dtype fp16 --timestep-rounding fp16
    """
    import gc
    import json

    from pathlib import Path

    from nami_core.generate import SampleRequest, named_paths, report_dict, run_sample, vocabulary_warning

    from . import teardown
    from .progress import StageProgress, console

    req = SampleRequest(
        prompt=prompt, model=model, out=out, n=n, seed=seed, steps=steps, cfg=cfg, negative=negative,
        mode=mode, device=device, dtype=dtype, attention=attention, batch_size=batch_size,
        prompt_style=prompt_style, timestep_rounding=timestep_rounding, compile=compile_, overwrite=overwrite,
        loras=tuple(lora or ()), **image_size(size, width, height),
    )
    req.validate()  # bad options and --out are one error line before the progress bars start
    warning = vocabulary_warning(req)
    if warning is not None:
        typer.echo(f"warning: {warning}", err=True)
    batches = -(-max(n, 1) // max(batch_size, 1))
    gc.disable()  # importing torch, diffusers and transformers allocates millions of objects: ~1 s of collections
    try:
        with StageProgress() as bars:
            report = run_sample(req, on_step=bars.step, on_plan=lambda s: bars.plan(s, batches),
                                on_warning=lambda text: typer.echo(f"warning: {text}", err=True))
    finally:
        gc.enable()
    if as_json:
        typer.echo(json.dumps(report_dict(report), indent=2))
    else:
        stages = " + ".join(f"{s:.2f}" for s in report.stage_seconds)
        console.print(
            f"wrote {len(report.paths)} image(s) in {report.sample_seconds:.2f}s "
            f"(stages {stages}s, load {report.load_seconds:.2f}s)"
        )
        for p in report.paths:
            typer.echo(str(p))
    for wanted, written in zip(named_paths(Path(out), req.seeds()) or [], report.paths):
        if wanted != written:
            typer.echo(f"note: {wanted} exists; wrote {written} instead (--overwrite replaces)", err=True)
    teardown.finish()  # every PNG and JSON is written and closed


def image_size(size: str | None, width: int | None, height: int | None) -> dict:
    """--size WxH, or --width/--height -> {"width": ..., "height": ...} (None: the model's side)."""
    from nami_core.errors import NamiError

    if size is None:
        return {"width": width, "height": height}
    if width is not None or height is not None:
        raise NamiError("give --size or --width/--height, not both")
    width, height = parse_size(size)
    return {"width": width, "height": height}


def parse_size(text: str, option: str = "--size") -> tuple[int, int]:
    """"1024x576" -> (width 1024, height 576) in pixels; a `NamiError` naming `option` otherwise."""
    import re

    from nami_core.errors import NamiError

    match = re.fullmatch(r"\s*([0-9]+)\s*[x×]\s*([0-9]+)\s*", text, re.IGNORECASE)
    if match is None:
        raise NamiError(f"{option} must be WIDTHxHEIGHT in pixels, e.g. 1024x576, got {text!r}")
    width, height = int(match[1]), int(match[2])
    if width < 1 or height < 1:
        raise NamiError(f"{option} sides must be at least 1 pixel, got {text!r}")
    return width, height
