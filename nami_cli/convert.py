"""`nami convert`: bring outside weights into nami (the public NAMI-T2I checkpoint, FLUX-family transformers)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from nami_core.config import number_text
from nami_core.model.lora import LORA_SCALE

from . import options as o
from .build import APP_SETTINGS

app = typer.Typer(
    name="convert",
    help="Convert weights into nami model directories: the public NAMI-T2I checkpoint (nami-t2i), a FLUX "
         "transformer cut to chosen blocks (flux), a training checkpoint (checkpoint), a model with a LoRA "
         "adapter folded in (lora).",
    **APP_SETTINGS,
)


@app.command("nami-t2i")
def nami_t2i(
    src: Annotated[Path, typer.Argument(help="Public NAMI-T2I directory: transformer/, bridge_flow.bin, vae/, mclip/, mt5/.")],
    out: o.out("New model directory (must not exist or be empty).", o.OUTPUT),
    link_text: o.own(bool, "--link-text", help="Symlink mt5/ and mclip/ instead of copying them.", panel=o.CONVERSION) = None,
    overwrite: o.overwrite("Replace an existing model directory at --out (written beside it, then swapped in).", o.OUTPUT) = None,
    as_json: o.PrintJson = None,
) -> None:
    """Rewrite the public NAMI-T2I checkpoint as a nami model directory (safetensors + configs).

    `nami sample --model SRC` reads the public layout in place; converting gives a directory that `NamiPipeline.from_pretrained` and `DiffusionPipeline.from_pretrained` load.

    Examples:

      nami convert nami-t2i /w/NAMI-T2I --out models/nami-2b

      nami convert nami-t2i /w/NAMI-T2I --out models/nami-2b --link-text
    """
    import json

    from nami_core.input_paths import check_input
    from nami_core.output_targets import MODEL, RELEASE, check_out_folder

    from .output import log

    check_out_folder(out, MODEL, {"source": src}, bool(overwrite))
    check_input(src, "SRC", RELEASE)
    from nami_core.interop.public_layout import convert_public_layout
    from nami_core.modeldir import quiet_loading

    quiet_loading()
    layout = convert_public_layout(src, Path(out), link_text=bool(link_text), overwrite=bool(overwrite))
    summary = {
        "out": str(out),
        "blocks": [layout.flux_config["num_layers"], layout.flux_config["num_single_layers"]],
        "stage_ends": list(layout.stage_ends),
        "resolutions": list(layout.resolutions),
        "text_encoders": "linked" if link_text else "copied",
    }
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    log(
        f"wrote {out}: {summary['blocks'][0]} double + {summary['blocks'][1]} single blocks, stage ends "
        f"{','.join(map(str, layout.stage_ends))}, stages {','.join(map(str, layout.resolutions))} px, "
        f"bridge jumps, mt5/ and mclip/ {summary['text_encoders']}"
    )


@app.command("flux")
def flux(
    src: Annotated[Path, typer.Argument(
        help="diffusers FluxTransformer2DModel folder (or a pipeline folder with transformer/), or a single checkpoint file.")],
    out: o.out("New folder; the model goes to OUT/transformer (for `nami train --model OUT`).", o.OUTPUT),
    stage_ends: o.own(str, "--stage-ends", help="Cumulative block ends per stage over the kept blocks, e.g. 9,16,22.",
        panel=o.CONVERSION),
    keep_blocks: o.own(str, "--keep-blocks", help="Blocks to keep, in source order: dI / sI or ranges dI-J, e.g. d0-7,s0-13 "
        "(default: every block).", panel=o.CONVERSION) = None,
    double: o.own(int, "--double", help="Keep the first N double-stream blocks (with --single).", panel=o.CONVERSION) = None,
    single: o.own(int, "--single", help="Keep the first M single-stream blocks (with --double).", panel=o.CONVERSION) = None,
    overwrite: o.overwrite("Replace an existing conversion at --out (written beside it, then swapped in).", o.OUTPUT) = None,
    as_json: o.PrintJson = None,
) -> None:
    """Initialise a NAMI transformer from a FLUX-family transformer: keep a subset of its blocks.

    Without --keep-blocks or --double/--single every block is kept. A guidance embedder (guidance-distilled FLUX) is dropped and reported. The report is also written to OUT/convert_report.json.

    Examples:

      nami convert flux /w/FLUX.1-dev --out init/flux-8-14 --double 8 --single 14 --stage-ends 9,16,22

      nami convert flux /w/flux/transformer --out init/pick --keep-blocks d0-3,d18,s0-7,s30-37 --stage-ends 6,12,21
    """
    import json

    from nami_core.config import parse_int_list, validate_stage_ends
    from nami_core.input_paths import PATH, check_input
    from nami_core.interop.block_selection import BlockSelection, compact
    from nami_core.output_targets import FLUX_INIT, check_out_folder

    from .output import log

    ends = parse_int_list(stage_ends, "--stage-ends")
    validate_stage_ends(ends, ends[-1], "--stage-ends")  # increasing, positive; the source's depth: when it is read
    selection = BlockSelection.of(keep_blocks, double, single)
    check_out_folder(out, FLUX_INIT, {"source": src}, bool(overwrite))
    check_input(src, "SRC", PATH)
    from nami_core.interop.flux_convert import convert_flux
    from nami_core.modeldir import quiet_loading

    quiet_loading()
    report = convert_flux(src, Path(out), ends, selection, overwrite=bool(overwrite))
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
        return
    d, s = report.source_blocks
    log(
        f"wrote {out}/transformer: kept {len(report.kept_blocks)} of {d + s} blocks ({compact(report.kept_blocks)}), "
        f"stage ends {','.join(map(str, report.stage_ends))}"
    )
    log(
        f"parameters: kept {report.kept_params:,}, dropped {report.dropped_params:,} "
        f"({report.dropped_block_params:,} in {len(report.dropped_blocks)} blocks, "
        f"{report.dropped_guidance_params:,} in the guidance embedder)"
    )
    for note in report.notes:
        log(note)


@app.command("checkpoint")
def checkpoint(
    src: Annotated[Path, typer.Argument(help="A training checkpoint: RUN/checkpoints/step-NNNNNNNN.")],
    out: o.out("Model directory to write (an adapter folder for a --lora run's checkpoint).", o.OUTPUT),
    overwrite: o.overwrite("Replace an existing model directory at --out (written beside it, then swapped in).", o.OUTPUT) = None,
) -> None:
    """Turn a training checkpoint into a model directory, to sample or evaluate it mid-run.

    The directory holds the raw weights and, when the run keeps one, the EMA (`ema` variant, used by default).

    Examples:

      nami convert checkpoint runs/shapes/checkpoints/step-00004000 --out models/shapes-4k

      nami sample "a photo of a red circle" --model models/shapes-4k
    """
    from nami_core.output_targets import check_folder_target
    from nami_core.train.export_target import export_target

    from .output import log

    check_folder_target(out, "--out")  # the place first; what may go there depends on the checkpoint's run
    export_target(src, Path(out), bool(overwrite))
    from nami_core.modeldir import quiet_loading
    from nami_core.train.export import export_checkpoint

    quiet_loading()
    path = export_checkpoint(src, Path(out), overwrite=bool(overwrite))
    log(f"wrote {path}")


@app.command("lora")
def lora(
    adapter: Annotated[Path, typer.Argument(
        help="A LoRA adapter folder (pytorch_lora_weights.safetensors), e.g. RUN/final of `nami train --lora`.")],
    model: o.model("The model directory the adapter was trained on.", o.MODEL),
    out: o.out("New model directory: the model with the adapter folded into its weights.", o.OUTPUT),
    scale: o.own(float, "--scale", help="Strength of the adapter (as ADAPTER:SCALE in `nami sample --lora`): -100 to "
                 "100; 0 applies nothing, a negative scale subtracts the adapter.",
        show_default=number_text(LORA_SCALE), panel=o.CONVERSION) = None,
    merge: o.own(bool, "--merge", help="Fold the adapter into the weights (the one conversion offered; required).",
        panel=o.CONVERSION) = None,
    overwrite: o.overwrite("Replace an existing model directory at --out (written beside it, then swapped in).", o.OUTPUT) = None,
) -> None:
    """Fold a LoRA adapter into a model: a model directory that samples as `--lora ADAPTER:SCALE` does, with no adapter to load.

    Examples:

      nami convert lora runs/lora/final --model models/shapes --out models/shapes-teal --merge

      nami convert lora runs/lora/final --model models/shapes --out models/shapes-half --merge --scale 0.5
    """
    from nami_core.errors import NamiError
    from nami_core.input_paths import MODEL as MODEL_DIR, check_input
    from nami_core.model.lora import adapter_folder, check_lora_scale, parse_lora_spec
    from nami_core.output_targets import MODEL, check_out_folder

    from .output import log

    if not merge:
        raise NamiError("give --merge to fold the adapter into the model's weights "
                        "(`nami sample --model MODEL --lora ADAPTER` applies it without merging)")
    scale = check_lora_scale(LORA_SCALE if scale is None else scale, "--scale")
    weights, _ = parse_lora_spec(str(adapter), "ADAPTER")
    source = check_input(model, "--model", MODEL_DIR)
    check_out_folder(out, MODEL, {"--model": source, "adapter": adapter_folder(weights)}, bool(overwrite))
    from nami_core.modeldir import merge_lora

    path = merge_lora(model, adapter, out, scale, overwrite=bool(overwrite),
                      on_warning=lambda text: typer.echo(f"warning: {text}", err=True))
    log(f"wrote {path}: {model} with {adapter} folded in at scale {scale:g}")
