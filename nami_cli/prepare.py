"""`nami prepare-data`: images and captions -> latents and text embeddings at the stage resolutions."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from nami_core.data.prepare_request import PrepareRequest
from nami_core.data.scene_settings import SceneSettings

from . import options as o


@o.defaults_from(PrepareRequest, SceneSettings)
def prepare_data(
    source: Annotated[str, typer.Argument(
        help="Image folder, datasets folder, parquet file(s), webdataset .tar pattern, or 'shapes'.")],
    out: o.out("Output folder (re-running resumes it; finished units are checked and a damaged one is redone).",
               o.OUTPUT),
    stages: o.Stages,
    buckets: o.own(bool, "--buckets", panel=o.STAGES,
        help="Store each image in its aspect-ratio bucket (1:2 to 2:1, about each stage's area; only the excess "
             "over the bucket's ratio is cropped) instead of a centre square crop; `nami train` then draws each "
             "step from one bucket.") = None,
    codec: o.own(str, "--codec", metavar="pixel|pixel:PATCH|flux-vae:PATH", panel=o.MODEL,
        help="The image codec: pixels (in PATCH x PATCH tokens), or a FLUX VAE folder.") = None,
    text_encoder: o.own(str, "--text-encoder", metavar="minilm|t5:PATH|mt5:PATH,mclip:PATH|PATH", panel=o.MODEL,
        help="The text encoder whose embeddings are stored.") = None,
    max_text_tokens: o.own(int, "--max-text-tokens", help="Text length in tokens.", panel=o.MODEL) = None,
    image_column: o.own(str, "--image-column", help="datasets/parquet only: the image column.", panel=o.SOURCE) = None,
    caption_column: o.own(str, "--caption-column", help="datasets/parquet only: the caption column.", panel=o.SOURCE) = None,
    n: o.SceneCount = None,
    seed: o.seed("Seed of the scene generator.", o.SHAPES) = None,
    images_dir: o.own(Path, "--images-dir", help="Also write the scenes as PNGs (with captions) here.", panel=o.SHAPES) = None,
    scene_mix: o.own(str, "--scene-mix", help="Weights of the scene kinds relation, objects, pair, count.",
        panel=o.SHAPES) = None,
    usual_color: o.own(float, "--usual-color", panel=o.SHAPES,
        help="Chance that an object whose caption names no colour takes its class's usual colour (circle red, "
             "square blue, triangle yellow, diamond green) instead of a random one.") = None,
    gap: o.own(float, "--gap", help="Least distance between two objects, in pixels of a 64 px image.",
        panel=o.SHAPES) = None,
    device: o.Device = None,
    batch_size: o.batch_size("Images per codec / text-encoder batch.", o.PRECISION) = None,
    shard_size: o.own(int, "--shard-size", help="Source items per work unit / shard.", panel=o.PRECISION) = None,
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
    from nami_core.data.prepare_request import open_prepare_source

    req = PrepareRequest(out, stages, **o.given(
        codec=codec, text_encoder=text_encoder, max_text_tokens=max_text_tokens, shard_size=shard_size,
        batch_size=batch_size, device=device, buckets=buckets))
    src = open_prepare_source(source, req.stages[-1], image_column, caption_column, n=n, seed=seed,
                              images_dir=images_dir, scene_mix=scene_mix, usual_color=usual_color, gap=gap)
    req.check_out(src)
    run(src, req)


def run(src, req: PrepareRequest) -> None:
    """Prepare with a progress bar on stderr, then print the counts and the manifest's path (imports torch)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from nami_core.data.prepare import Preparer, prepare
    from nami_core.modeldir import quiet_loading

    from .output import log
    from .progress import console

    quiet_loading()
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

    try:
        report = prepare(src, req, update, preparer, log)
    finally:
        if shown:
            progress.stop()
    counts = ", ".join(f"{n} at {r}px" for r, n in sorted(report.counts.items())) or "none"
    redone = f" ({report.units_redone} redone)" if report.units_redone else ""
    log(f"{report.images} images ({counts}) in {report.seconds:.1f}s; "
        f"{report.units_done} units written{redone}, {report.units_skipped} already done")
    if report.buckets:
        log("buckets: " + ", ".join(f"{k} x{v}" for k, v in sorted(report.buckets.items())))
    if report.skipped:
        log("skipped: " + ", ".join(f"{k} x{v}" for k, v in report.skipped.items()))
    if report.converted:
        log("converted: " + ", ".join(f"{k} x{v}" for k, v in report.converted.items()))
    typer.echo(str(req.out / "manifest.json"))
