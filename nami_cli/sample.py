"""`nami sample`: generate images from a prompt."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def sample(
    prompt: str = typer.Argument(..., help="What to draw."),
    model: Optional[str] = typer.Option(None, "--model", help="Model directory (default: the bundled nami-shapes model)."),
    out: Path = typer.Option(Path("nami-samples"), "--out", help="Output directory, or a .png file for one image."),
    n: int = typer.Option(1, "--n", help="Number of images; image i uses seed S+i."),
    seed: int = typer.Option(0, "--seed", help="Seed of the first image."),
    steps: Optional[str] = typer.Option(None, "--steps", help="Euler steps per stage, e.g. 10,10,10; one number is split evenly. Default: the model's."),
    cfg: Optional[str] = typer.Option(None, "--cfg", help="Classifier-free guidance scale (1 = off), or one per stage such as 8,3,3. Default: the model's."),
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
) -> None:
    """Generate images from PROMPT and write PNGs with their settings (PNG text chunk + sidecar JSON).

    Examples:

      nami sample "a photo of a red circle left of a blue square"

      nami sample "a photo of three purple triangles" --n 4 --seed 7 --out shapes/

      nami sample "a cat" --model runs/cat/final --steps 10,10,10 --cfg 4 --device cuda --compile

      nami sample "a photo of a red circle left of a blue square" --cfg 12,3,3

      nami sample "一只戴着帽子的猫" --model models/nami-2b --prompt-style nami-t2i-demo --device cuda --dtype fp16 --timestep-rounding fp16
    """
    import gc
    import json

    from nami_core.generate import SampleRequest, report_dict, run_sample

    from . import teardown
    from .progress import StageProgress, console

    req = SampleRequest(
        prompt=prompt, model=model, out=out, n=n, seed=seed, steps=steps, cfg=cfg, negative=negative,
        mode=mode, device=device, dtype=dtype, attention=attention, batch_size=batch_size,
        prompt_style=prompt_style, timestep_rounding=timestep_rounding, compile=compile_,
    )
    batches = -(-max(n, 1) // max(batch_size, 1))
    gc.disable()  # importing torch, diffusers and transformers allocates millions of objects: ~1 s of collections
    try:
        with StageProgress() as bars:
            report = run_sample(req, on_step=bars.step, on_plan=lambda s: bars.plan(s, batches))
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
    teardown.finish()  # every PNG and JSON is written and closed
