"""`nami sample`: generate images from a prompt."""

from __future__ import annotations

from typing import Annotated

import typer

from nami_core.generate import SampleRequest
from nami_core.text.prompt_styles import PROMPT_STYLES

from . import options as o


@o.defaults_from(SampleRequest)
def sample(
    prompt: Annotated[str, typer.Argument(help="What to draw.")],
    model: o.model("Model directory, or a public NAMI-T2I folder.", o.MODEL) = None,
    lora: o.LoraAdapters = None,
    mode: o.Mode = None,
    n: o.ImageCount = None,
    seed: o.seed("Seed of the first image.", o.SAMPLING) = None,
    steps: o.EulerSteps = None,
    cfg: o.Guidance = None,
    negative: o.own(str, "--negative", help="Negative prompt for guidance; '' = none, not even the prompt style's.",
        panel=o.SAMPLING) = None,
    prompt_style: o.own(str, "--prompt-style", metavar=o.choices(PROMPT_STYLES), panel=o.SAMPLING,
        help="nami-t2i-demo: the public NAMI-T2I demo's quality suffix and default negative prompt.") = None,
    timestep_rounding: o.TimestepRounding = None,
    size: o.ImageSize = None,
    width: o.own(int, "--width", help="Image width in pixels (instead of --size; the height is then the model's side).",
        panel=o.IMAGE) = None,
    height: o.own(int, "--height", help="Image height in pixels (instead of --size).", panel=o.IMAGE) = None,
    device: o.Device = None,
    dtype: o.Dtype = None,
    attention: o.Attention = None,
    compile_: o.Compile = None,
    batch_size: o.batch_size("Images generated per batch.", o.PRECISION) = None,
    out: o.out("Output folder (each image gets a name of its own: <prompt>-<settings hash>-s<seed>.png), or "
               "a .png file for one image. A name already taken gets -1, -2, ... (see --overwrite).", o.OUTPUT) = None,
    overwrite: o.overwrite("Replace a PNG of the same name and its .json instead of writing NAME-1.png.",
                           o.OUTPUT) = None,
    grid: o.own(bool, "--grid", help="Also write one grid of the images, seed under each, beside them "
                "(<prompt>-<settings hash>-grid.png, or NAME-grid.png for an --out .png).", panel=o.OUTPUT) = None,
    as_json: o.PrintJson = None,
) -> None:
    """Generate images from PROMPT and write PNGs with their settings (PNG text chunk + sidecar JSON).

    No file is ever replaced without --overwrite: in a folder, prompts or settings that differ give
    different names, and a name already taken (a second run of the same ones, or an --out .png that
    exists) is numbered NAME-1.png, NAME-2.png, ... The paths written are printed.

    Examples:

      nami sample "a photo of a red circle left of a blue square"

      nami sample "a photo of three purple triangles" --n 4 --seed 7 --out shapes/

      nami sample "two blue squares" --n 4 --grid

      nami sample "a cat" --model runs/cat/final --steps 10,10,10 --cfg 4 --device cuda --compile

      nami sample "a photo of a red circle left of a blue square" --cfg 12,3,3

      nami sample "two blue squares" --size 128x64

      nami sample "a photo of a teal circle" --model models/shapes --lora runs/teal/final:0.8

      nami sample "一只戴着帽子的猫" --model models/nami-2b --prompt-style nami-t2i-demo --device cuda --dtype fp16 --timestep-rounding fp16
    """
    req = SampleRequest(prompt, **o.given(
        model=model, out=out, n=n, seed=seed, steps=steps, cfg=cfg, negative=negative, mode=mode, device=device,
        dtype=dtype, attention=attention, batch_size=batch_size, prompt_style=prompt_style,
        timestep_rounding=timestep_rounding, compile=compile_, overwrite=overwrite, loras=lora, size=size,
        width=width, height=height, grid=grid,
    ))
    req.validate()  # bad options and --out are one error line before the progress bars start
    run(req, bool(as_json))


def run(req: SampleRequest, as_json: bool) -> None:
    """Sample with progress bars on stderr; print the paths written (or the JSON report)."""
    import gc
    import json

    from nami_core.generate import named_paths, report_dict, run_sample, vocabulary_warning

    from . import teardown
    from .output import log
    from .progress import StageProgress

    warning = vocabulary_warning(req)
    if warning is not None:
        typer.echo(f"warning: {warning}", err=True)
    batches = -(-req.n // req.batch_size)
    gc.disable()  # importing torch, diffusers and transformers allocates millions of objects: ~1 s of collections
    try:
        with StageProgress() as bars:
            report = run_sample(req, on_step=bars.step, on_plan=lambda s: bars.plan(s, batches),
                                on_warning=lambda text: typer.echo(f"warning: {text}", err=True))
    finally:
        gc.enable()
    if report.compile_warning is not None:
        typer.echo(f"warning: {report.compile_warning}", err=True)
    if as_json:
        typer.echo(json.dumps(report_dict(report), indent=2))
    else:
        stages = " + ".join(f"{s:.2f}" for s in report.stage_seconds)
        log(f"wrote {len(report.paths)} image(s) in {report.sample_seconds:.2f}s "
            f"(stages {stages}s, load {report.load_seconds:.2f}s)")
        for p in report.paths:
            typer.echo(str(p))
        if report.grid is not None:
            typer.echo(str(report.grid))
    for wanted, written in zip(named_paths(req.out, req.seeds()) or [], report.paths):
        if wanted != written:
            typer.echo(f"note: {wanted} exists; wrote {written} instead (--overwrite replaces)", err=True)
    teardown.finish()  # every PNG and JSON is written and closed

