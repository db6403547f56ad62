"""`nami prepare-data`: images and captions -> latents and text embeddings at the stage resolutions."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


# Options that mean something for one kind of source only: given for another, they are refused.
SHAPES_ONLY = ("--n", "--seed", "--images-dir", "--scene-mix", "--usual-color", "--gap")


def given_options(ctx: typer.Context, flags: tuple[str, ...]) -> list[str]:
    """The `flags` the user gave on the command line (not left at their defaults)."""
    given = []
    for flag in flags:
        where = ctx.get_parameter_source(flag.lstrip("-").replace("-", "_"))
        if where is not None and where.name != "DEFAULT":
            given.append(flag)
    return given


def prepare_data(
    ctx: typer.Context,
    source: str = typer.Argument(..., help="Image folder, datasets folder, parquet file(s), webdataset .tar pattern, or 'shapes'."),
    out: str = typer.Option(..., "--out", help="Output folder (re-running resumes it; finished units are checked and a damaged one is redone)."),
    stages: str = typer.Option(..., "--stages", help="Stage resolutions in pixels, low to high, e.g. 256,512,1024."),
    codec: str = typer.Option("pixel", "--codec", help="pixel | pixel:PATCH | flux-vae:PATH."),
    text_encoder: str = typer.Option("minilm", "--text-encoder", help="minilm | t5:PATH | mt5:PATH,mclip:PATH | PATH."),
    max_text_tokens: Optional[int] = typer.Option(None, "--max-text-tokens", help="Text length (default: 32 for minilm, else 256)."),
    shard_size: int = typer.Option(1024, "--shard-size", help="Source items per work unit / shard."),
    batch_size: int = typer.Option(32, "--batch-size", help="Images per codec / text-encoder batch."),
    image_column: Optional[str] = typer.Option(None, "--image-column", help="datasets/parquet only: the image column."),
    caption_column: Optional[str] = typer.Option(None, "--caption-column", help="datasets/parquet only: the caption column."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda for the codec and text encoder."),
    buckets: bool = typer.Option(False, "--buckets", help="Store each image in its aspect-ratio bucket (1:2 to 2:1, about each stage's area; only the excess over the bucket's ratio is cropped) instead of a centre square crop; `nami train` then draws each step from one bucket. E.g. --stages 256,512,1024 --buckets."),
    n: int = typer.Option(10000, "--n", help="shapes only: number of scenes."),
    seed: int = typer.Option(0, "--seed", help="shapes only: seed of the scene generator."),
    images_dir: Optional[Path] = typer.Option(None, "--images-dir", help="shapes only: also write the scenes as PNGs here."),
    scene_mix: Optional[str] = typer.Option(None, "--scene-mix", help="shapes only: weights of the scene kinds relation, objects, pair, count (default: relation:1,objects:3)."),
    usual_color: Optional[float] = typer.Option(None, "--usual-color", help="shapes only: chance that an object whose caption names no colour takes its class's usual colour (circle red, square blue, triangle yellow, diamond green) instead of a random one (default: 0)."),
    gap: Optional[float] = typer.Option(None, "--gap", help="shapes only: least distance between two objects, in pixels of a 64 px image (default: 2)."),
) -> None:
    """Prepare training data once: codec latents at the largest stage each image fills, plus text embeddings.

    A re-run with the same settings resumes OUT, redoing any finished unit whose shards were damaged since. While OUT holds finished units, a source whose listing changed is refused: prepare added images into another --out.

    Examples:

      nami prepare-data photos/ --out data/photos --stages 256,512,1024 --codec flux-vae:/w/flux/vae --text-encoder mt5:/w/mt5,mclip:/w/mclip

      nami prepare-data photos/ --out data/photos-ar --stages 256,512,1024 --codec flux-vae:/w/flux/vae --buckets

      nami prepare-data "shards/{00000..00099}.tar" --out data/laion --stages 256,512,1024 --codec flux-vae:/w/vae

      nami prepare-data shapes --n 20000 --seed 0 --out data/shapes --stages 16,32,64

      nami prepare-data shapes --n 20000 --out data/shapes-hard --stages 16,32,64 --scene-mix relation:2,objects:2,pair:1,count:1

      nami prepare-data shapes --n 20000 --out data/shapes-usual --stages 16,32,64 --usual-color 0.8 --gap 6
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from nami_core.config import parse_int_list
    from nami_core.data.prepare import Preparer, PrepareRequest, prepare
    from nami_core.data.sources import open_source
    from nami_core.errors import NamiError
    from nami_core.modeldir import quiet_loading
    from nami_core.runtime import resolve_device

    from .progress import console

    quiet_loading()
    if not out.strip():
        raise NamiError("--out is empty; give the folder to write the prepared data to")
    resolutions = parse_int_list(stages, "--stages")
    if source == "shapes":
        from nami_core.data.shapes import DEFAULT_STYLE, SceneStyle, ShapesSource, parse_scene_mix
        from nami_core.data.sources import refuse_columns

        refuse_columns(image_column, caption_column, "the shapes source")
        mix = parse_scene_mix(scene_mix) if scene_mix is not None else None
        style = SceneStyle(usual_color=DEFAULT_STYLE.usual_color if usual_color is None else usual_color,
                           gap=DEFAULT_STYLE.gap if gap is None else gap)
        src = ShapesSource(n=n, seed=seed, size=resolutions[-1], images_dir=images_dir, mix=mix, style=style)
    else:
        shapes_only = given_options(ctx, SHAPES_ONLY)
        if shapes_only:
            raise NamiError(f"{shapes_only[0]} applies to the shapes source only")
        src = open_source(source, image_column, caption_column)
    req = PrepareRequest(
        out=Path(out), stages=resolutions, codec=codec, text_encoder=text_encoder, max_text_tokens=max_text_tokens,
        shard_size=shard_size, batch_size=batch_size, device=str(resolve_device(device)), buckets=buckets,
    )
    preparer = Preparer(req)
    progress = Progress(TextColumn("[bold]preparing"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[rate]} img/s"), TimeElapsedColumn(), console=console)
    task = progress.add_task("prepare", total=None, rate="-")
    shown = []

    def update(seen: int, total: int | None, report) -> None:
        if not shown:  # the first call comes once OUT was checked, so a refusal is one line alone
            progress.start()
            shown.append(True)
        rate = report.images / report.seconds if report.seconds > 0 else 0.0
        progress.update(task, completed=seen, total=total, rate=f"{rate:.1f}")

    def notice(line: str) -> None:
        console.print(line, markup=False, highlight=False, soft_wrap=True)

    try:
        report = prepare(src, req, update, preparer, notice)
    finally:
        if shown:
            progress.stop()
    counts = ", ".join(f"{n} at {r}px" for r, n in sorted(report.counts.items())) or "none"
    redone = f" ({report.units_redone} redone)" if report.units_redone else ""
    console.print(f"{report.images} images ({counts}) in {report.seconds:.1f}s; "
                  f"{report.units_done} units written{redone}, {report.units_skipped} already done")
    if report.buckets:
        console.print("buckets: " + ", ".join(f"{k} x{v}" for k, v in sorted(report.buckets.items())))
    if report.skipped:
        console.print("skipped: " + ", ".join(f"{k} x{v}" for k, v in report.skipped.items()))
    if report.converted:
        console.print("converted: " + ", ".join(f"{k} x{v}" for k, v in report.converted.items()))
    typer.echo(str(Path(out) / "manifest.json"))
