"""`nami eval`: benchmarks. `nami eval geneval` generates GenEval's folder layout and scores it."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(
    name="eval",
    help="Evaluate a model on a benchmark (GenEval).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def default_suite() -> Path:
    """The bundled GenEval-schema suite in the shapes vocabulary (300 prompts, 50 per tag)."""
    import nami_core

    return Path(nami_core.__file__).resolve().parent / "assets" / "geneval" / "shapes_suite.jsonl"


@app.command("geneval")
def geneval(
    out: Path = typer.Option(..., "--out", help="GenEval folder: <out>/00000/metadata.jsonl + samples/0000.png, then results.jsonl and summary.json."),
    metadata: Optional[Path] = typer.Option(None, "--metadata", help="GenEval metadata .jsonl (default: the bundled 300-prompt shapes suite)."),
    model: Optional[str] = typer.Option(None, "--model", help="Model directory, or 'default' for the bundled model."),
    images_per_prompt: int = typer.Option(4, "--images-per-prompt", help="Images generated per prompt."),
    detector: str = typer.Option("shapes", "--detector", help="Object detector: shapes."),
    skip_generation: bool = typer.Option(False, "--skip-generation", help="Score the images already in --out."),
    seed: int = typer.Option(0, "--seed", help="Image j of prompt i uses seed S + i * images-per-prompt + j."),
    steps: Optional[str] = typer.Option(None, "--steps", help="Euler steps per stage, e.g. 10,10,10. Default: the model's."),
    cfg: Optional[float] = typer.Option(None, "--cfg", help="Classifier-free guidance scale. Default: the model's."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda."),
    batch_size: int = typer.Option(8, "--batch-size", help="Images generated per model call."),
) -> None:
    """Generate images for GenEval prompts, detect their objects and score them by GenEval's rules.

    Prints a table of per-tag scores; the last line is `overall <score>`, the mean of the tag scores (GenEval's overall score). With --skip-generation the images already in --out are only scored, so images from any model written in GenEval's layout can be scored too.

    Examples:

      nami eval geneval --out eval/shapes

      nami eval geneval --model runs/shapes/final --out eval/run1 --images-per-prompt 4 --steps 10,10,10 --cfg 3 --device cuda

      nami eval geneval --metadata my_suite.jsonl --out eval/mine --seed 100 --batch-size 32

      nami eval geneval --out eval/run1 --skip-generation --detector shapes
    """
    from rich.console import Console
    from rich.table import Table

    from nami_core.errors import NamiError
    from nami_core.eval import geneval as ge
    from nami_core.eval.detectors import get_detector

    if images_per_prompt < 1:
        raise NamiError(f"--images-per-prompt must be at least 1, got {images_per_prompt}")
    if batch_size < 1:
        raise NamiError(f"--batch-size must be at least 1, got {batch_size}")
    found = get_detector(detector)
    suite = None
    if metadata is not None or not skip_generation:
        metadata_path = metadata if metadata is not None else default_suite()
        suite = ge.read_metadata(metadata_path)
        check_classes(found, suite, str(metadata_path))
    if skip_generation:
        prompts = ge.read_layout(out)
        if suite is not None:
            check_same_prompts(prompts, suite, str(metadata))
        check_classes(found, [p.metadata for p in prompts], str(out))
    else:
        generate(suite, out, model, images_per_prompt, seed, steps, cfg, device, batch_size)

    results = score(out, found)
    summary = ge.summarize(results)
    table = Table(title=f"GenEval ({found.name} detector)")
    for column in ("tag", "images", "correct", "score"):
        table.add_column(column, justify="left" if column == "tag" else "right")
    for tag, value in summary["tags"].items():
        rows = [r for r in results if r["tag"] == tag]
        table.add_row(tag, str(len(rows)), str(sum(r["correct"] for r in rows)), f"{value:.3f}")
    Console().print(table)
    typer.echo(f"overall {summary['overall']:.3f}")


def check_classes(detector, lines: list[dict], source: str) -> None:
    """NamiError when the metadata asks for classes the detector cannot report."""
    if detector.classes is None:
        return
    for line in lines:
        for entry in line["include"] + line.get("exclude", []):
            if entry["class"] not in detector.classes:
                from nami_core.errors import NamiError

                raise NamiError(
                    f"{source} asks for {entry['class']!r} ({line['prompt']!r}), which the {detector.name} detector "
                    f"cannot find; it knows {', '.join(detector.classes)}"
                )


def check_same_prompts(prompts, suite: list[dict], source: str) -> None:
    """With --skip-generation and --metadata: the folder must hold exactly the file's prompts, in order."""
    from nami_core.errors import NamiError

    if len(prompts) != len(suite):
        raise NamiError(f"{source} has {len(suite)} prompts but the folder has {len(prompts)} prompt folders")
    for number, (prompt, line) in enumerate(zip(prompts, suite), start=1):
        if prompt.metadata != line:
            raise NamiError(f"{prompt.path} holds a different prompt than line {number} of {source}")


def generate(suite: list[dict], out: Path, model: Optional[str], images_per_prompt: int, seed: int,
             steps: Optional[str], cfg: Optional[float], device: str, batch_size: int) -> None:
    """Write GenEval's layout for `suite` under `out`: image j of prompt i has seed seed + i*n + j."""
    import torch
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from nami_core.errors import NamiError
    from nami_core.eval import geneval as ge
    from nami_core.modeldir import load_pipeline
    from nami_core.runtime import resolve_device

    from .progress import console

    if out.exists() and not out.is_dir():
        raise NamiError(f"--out {out} is a file, expected a folder")
    if out.is_dir() and any(p.name.isdigit() for p in out.iterdir()):
        raise NamiError(f"{out} already holds GenEval samples; score them with --skip-generation "
                        f"or choose an empty --out")
    pipe = load_pipeline(model, resolve_device(device), torch.float32)
    plan = pipe.plan(None)
    stage_steps = plan.stage_steps(steps if steps is not None else tuple(pipe.scheduler.config.default_steps))
    guidance = pipe.scheduler.config.default_cfg if cfg is None else cfg
    ge.write_prompt_folders(out, suite)
    per_call = max(1, batch_size // images_per_prompt)
    progress = Progress(TextColumn("[bold]generating"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=console)
    with progress:
        task = progress.add_task("generate", total=len(suite) * images_per_prompt)
        for first in range(0, len(suite), per_call):
            chunk = suite[first:first + per_call]
            result = pipe([line["prompt"] for line in chunk], num_images_per_prompt=images_per_prompt,
                          seed=seed + first * images_per_prompt, steps=stage_steps, cfg=guidance)
            for k, image in enumerate(result.images):
                index, j = first + k // images_per_prompt, k % images_per_prompt
                save_sample(image, ge.sample_path(out, index, j), {
                    "prompt": suite[index]["prompt"], "seed": seed + index * images_per_prompt + j,
                    "steps": list(stage_steps), "cfg": guidance, "model": str(model or "default"),
                })
            progress.advance(task, len(result.images))


def save_sample(image, path: Path, info: dict) -> None:
    """Write a PNG atomically with its generation settings in a "nami" text chunk."""
    import json

    from PIL.PngImagePlugin import PngInfo

    chunk = PngInfo()
    chunk.add_text("nami", json.dumps(info, sort_keys=True))
    tmp = path.with_name(f".{path.name}.tmp")
    image.save(tmp, format="PNG", pnginfo=chunk)
    tmp.replace(path)


def score(out: Path, detector) -> list[dict]:
    """Run the detector and GenEval's rules over `out` with a progress bar."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from nami_core.eval.geneval import evaluate_folder

    from .progress import console

    progress = Progress(TextColumn("[bold]scoring"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=console)
    with progress:
        task = progress.add_task("score", total=None)
        return evaluate_folder(out, detector, lambda done, total: progress.update(task, completed=done, total=total))
