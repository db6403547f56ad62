"""`nami eval`: benchmarks (GenEval, DPG-Bench, NAMI-1K) and metrics (CLIPScore, FID).

Every command imports torch and the models lazily, reads weights only from local paths, and
writes its result files atomically after all scoring finished.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import List, Optional

import typer

app = typer.Typer(
    name="eval",
    help="Evaluate a model on a benchmark (GenEval, DPG-Bench, NAMI-1K) or compute a metric (CLIPScore, FID).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
nami1k_app = typer.Typer(
    name="nami1k",
    help="NAMI-1K human evaluation: build the prompt set, generate, annotate in a browser, score.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(nami1k_app, name="nami1k")

DEVICE_HELP = "auto | cpu | cuda."
DTYPE_HELP = "auto (bf16 on CUDA, fp32 on CPU) | fp32 | bf16 | fp16 for the transformer."


# -- shared helpers -------------------------------------------------------------------------------------


@contextmanager
def progress_bar(label: str):
    """A rich progress bar on stderr; yields update(done, total)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from .progress import console

    progress = Progress(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=console)
    with progress:
        task = progress.add_task(label, total=None)
        yield lambda done, total: progress.update(task, completed=done, total=total)


@contextmanager
def warnings_as_lines():
    """Library warnings raised inside (e.g. CLIP truncation) become one `warning:` line each on stderr."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        yield
    for w in caught:
        if issubclass(w.category, UserWarning):
            typer.echo(f"warning: {str(w.message).splitlines()[0]}", err=True)


def device_name(device: str) -> str:
    from nami_core.runtime import resolve_device

    return str(resolve_device(device))


def check_positive(value: int, flag: str) -> None:
    from nami_core.errors import NamiError

    if value < 1:
        raise NamiError(f"{flag} must be at least 1, got {value}")


def print_table(title: str, columns: list[str], rows: list[list[str]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for i, column in enumerate(columns):
        table.add_column(column, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    Console().print(table)


def fmt(value: float, digits: int = 2) -> str:
    return "-" if value != value else f"{value:.{digits}f}"


# -- GenEval --------------------------------------------------------------------------------------------


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
    detector: str = typer.Option("shapes", "--detector", help="Object detector: shapes, or mask2former:PATH (a transformers Mask2Former COCO-instance folder)."),
    clip: Optional[str] = typer.Option(None, "--clip", help="Folder of a transformers CLIP model (GenEval uses ViT-L/14) naming object colours for mask2former."),
    skip_generation: bool = typer.Option(False, "--skip-generation", help="Score the images already in --out."),
    seed: int = typer.Option(0, "--seed", help="Image j of prompt i uses seed S + i * images-per-prompt + j."),
    steps: Optional[str] = typer.Option(None, "--steps", help="Euler steps per stage, e.g. 10,10,10. Default: the model's."),
    cfg: Optional[str] = typer.Option(None, "--cfg", help="Classifier-free guidance scale (at most 100), or one per stage such as 8,3,3. Default: the model's."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    dtype: str = typer.Option("auto", "--dtype", help=DTYPE_HELP),
    batch_size: int = typer.Option(8, "--batch-size", help="Images generated per model call."),
) -> None:
    """Generate images for GenEval prompts, detect their objects and score them by GenEval's rules.

    Prints a table of per-tag scores; the last line is `overall <score>`, the mean of the tag scores (GenEval's overall score). With --skip-generation the images already in --out are only scored, so images from any model written in GenEval's layout can be scored too. Metadata lines are checked first: a tag or colour outside GenEval's (single_object, two_object, counting, colors, position, color_attr; red, orange, yellow, green, blue, purple, pink, brown, black, white) or a class the detector cannot find is refused with its file and line. The mask2former detector reproduces GenEval's mmdet pre- and post-processing on transformers weights; with --clip it names colours like GenEval's CLIP classifier.

    Examples:

      nami eval geneval --out eval/shapes

      nami eval geneval --model runs/shapes/final --out eval/run1 --images-per-prompt 4 --steps 10,10,10 --cfg 3 --device cuda

      nami eval geneval --metadata geneval/evaluation_metadata.jsonl --model runs/2b/final --out eval/2b --detector mask2former:/w/mask2former-swin-s-coco-instance --clip /w/clip-vit-large-patch14

      nami eval geneval --out eval/run1 --skip-generation --detector shapes
    """
    from nami_core.eval import geneval as ge
    from nami_core.eval.detectors import DetectorOptions, get_detector
    from nami_core.config import guidance_scales

    check_positive(images_per_prompt, "--images-per-prompt")
    check_positive(batch_size, "--batch-size")
    found = get_detector(detector, DetectorOptions(clip=clip, device=device_name(device) if ":" in detector else "cpu"))
    suite_lines = None
    if metadata is not None or not skip_generation:
        suite_lines = ge.read_metadata_lines(metadata if metadata is not None else default_suite())
    if skip_generation:
        prompts = ge.read_layout(out)
        if suite_lines is not None:
            check_same_prompts(prompts, [line for _, line in suite_lines], str(metadata))
        scored_lines = [(f"{p.path / ge.METADATA_NAME}:1", p.metadata) for p in prompts]
    else:
        ge.check_generation_folder(out, {"--metadata": metadata, "--model": model})
        if cfg is not None:  # before the model loads; the generator checks it too
            guidance_scales(cfg, "--cfg")
    ge.check_detector(suite_lines if suite_lines is not None else scored_lines, found)
    if not skip_generation:
        generate([line for _, line in suite_lines], out, model, images_per_prompt, seed, steps, cfg, device, dtype,
                 batch_size)

    with progress_bar("scoring") as update:
        results = ge.evaluate_folder(out, found, update)
    summary = ge.summarize(results)
    rows = []
    for tag, value in summary["tags"].items():
        tagged = [r for r in results if r["tag"] == tag]
        rows.append([tag, str(len(tagged)), str(sum(r["correct"] for r in tagged)), f"{value:.3f}"])
    print_table(f"GenEval ({found.name} detector)", ["tag", "images", "correct", "score"], rows)
    typer.echo(f"overall {summary['overall']:.3f}")


def check_same_prompts(prompts, suite: list[dict], source: str) -> None:
    """With --skip-generation and --metadata: the folder must hold exactly the file's prompts, in order."""
    from nami_core.errors import NamiError

    if len(prompts) != len(suite):
        raise NamiError(f"{source} has {len(suite)} prompts but the folder has {len(prompts)} prompt folders")
    for number, (prompt, line) in enumerate(zip(prompts, suite), start=1):
        if prompt.metadata != line:
            raise NamiError(f"{prompt.path} holds a different prompt than line {number} of {source}")


def generate(suite: list[dict], out: Path, model: Optional[str], images_per_prompt: int, seed: int,
             steps: Optional[str], cfg: Optional[str], device: str, dtype: str, batch_size: int) -> None:
    """Write GenEval's layout for `suite` under `out`: image j of prompt i has seed seed + i*n + j."""
    from nami_core.eval import geneval as ge
    from nami_core.eval.generation import Generator
    from nami_core.png import save_png

    generator = Generator(model, device, steps, cfg, dtype)
    ge.write_prompt_folders(out, suite)
    with progress_bar("generating") as update:
        total = len(suite) * images_per_prompt
        for done, made in enumerate(generator.images([line["prompt"] for line in suite], images_per_prompt, seed,
                                                     batch_size), start=1):
            save_png(made.image, ge.sample_path(out, made.index, made.j),
                     generator.info(suite[made.index]["prompt"], made.seed))
            update(done, total)


# -- DPG-Bench ------------------------------------------------------------------------------------------


@app.command("dpg")
def dpg(
    csv: Path = typer.Option(..., "--csv", help="DPG-Bench questions (dpg_bench.csv of the ELLA repository)."),
    vqa: str = typer.Option(..., "--vqa", help="Folder of a transformers VQA model + processor (e.g. BLIP-VQA, ViLT)."),
    out: Path = typer.Option(..., "--out", help="Folder for the <item_id>.png grids, dpg_results.jsonl and dpg_summary.json."),
    prompts: Optional[Path] = typer.Option(None, "--prompts", help="Folder of DPG-Bench <item_id>.txt prompts (needed unless --skip-generation)."),
    model: Optional[str] = typer.Option(None, "--model", help="Model directory, or 'default' for the bundled model."),
    skip_generation: bool = typer.Option(False, "--skip-generation", help="Score the grids already in --out."),
    seed: int = typer.Option(0, "--seed", help="Cell k (0..3) of prompt i (prompts in name order) uses seed S + 4 i + k."),
    steps: Optional[str] = typer.Option(None, "--steps", help="Euler steps per stage. Default: the model's."),
    cfg: Optional[str] = typer.Option(None, "--cfg", help="Classifier-free guidance scale (at most 100), or one per stage such as 8,3,3. Default: the model's."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    dtype: str = typer.Option("auto", "--dtype", help=DTYPE_HELP),
    batch_size: int = typer.Option(8, "--batch-size", help="Images generated per model call."),
    vqa_prompt: str = typer.Option("{question}", "--vqa-prompt", help="How a question is put to a generative VQA model, e.g. 'Question: {question} Answer:' for BLIP-2."),
    keep_first_row: bool = typer.Option(False, "--keep-first-row", help="Also use the csv's first question (ELLA's script skips it; off = ELLA's numbers)."),
    answer_match: str = typer.Option("exact", "--answer-match", help="exact: only the answer 'yes' scores (ELLA's rule, the default) | lenient: the answer is stripped and lower-cased first, so ' Yes' scores too (not comparable to ELLA's numbers)."),
) -> None:
    """Generate a 2x2 grid per DPG-Bench prompt and score it with a VQA model, as ELLA's DPG-Bench script does.

    Each question is asked of each of the four cells (the answer "yes", exactly as ELLA compares it, scores 1; --answer-match lenient also takes " Yes"); a question whose parent question failed scores 0; a cell's score is the mean over its questions, a prompt's the mean over its cells, and the DPG-Bench score (last line, `overall <score>`) 100 x the mean over prompts. Level-1 / level-2 category scores follow ELLA's script. DPG-Bench's reference VQA model is mPLUG-large, which transformers does not provide: scores from any other model are marked "not comparable to mPLUG-large" here and in dpg_summary.json.

    Examples:

      nami eval dpg --prompts dpg_bench/prompts --csv dpg_bench/dpg_bench.csv --vqa /w/blip-vqa-base --model runs/2b/final --out eval/dpg --device cuda

      nami eval dpg --csv dpg_bench/dpg_bench.csv --vqa /w/blip-vqa-base --out eval/dpg --skip-generation
    """
    from nami_core.errors import NamiError
    from nami_core.eval import dpg as dpg_core
    from nami_core.eval import dpg_run
    from nami_core.eval.generation import Generator
    from nami_core.eval.vqa import TransformersVQA
    from nami_core.config import guidance_scales

    check_positive(batch_size, "--batch-size")
    dpg_core.answer_rule(answer_match)
    items = dpg_core.read_dpg_csv(csv, drop_first_row=not keep_first_row)
    if skip_generation:
        dpg_run.grid_files(out, items)
    else:
        if prompts is None:
            raise NamiError("--prompts DIR is required to generate (or pass --skip-generation to score --out)")
        prompt_texts = dpg_run.read_prompt_dir(prompts)
        dpg_run.check_new_grid_folder(out, {"--prompts": prompts, "--csv": csv, "--vqa": vqa})
        if cfg is not None:  # before the VQA model loads; the generator checks it too
            guidance_scales(cfg, "--cfg")
    answerer = TransformersVQA(vqa, device_name(device), vqa_prompt)
    if not skip_generation:
        generator = Generator(model, device, steps, cfg, dtype)
        with progress_bar("generating") as update:
            dpg_run.generate_grids(generator, prompt_texts, out, seed, batch_size, update)
    with progress_bar("asking") as update:
        summary = dpg_run.evaluate_grids(out, items, answerer, update, answer_match)
    if summary["note"]:
        typer.echo(f"note: {summary['note']}")
    for skipped in summary["skipped"]:
        typer.echo(f"skipped {skipped['item_id']}: {skipped['reason']}")
    rows = [[name, fmt(value)] for name, value in summary["level1"].items()]
    rows += [[f"  {name}", fmt(value)] for name, value in summary["level2"].items()]
    print_table(f"DPG-Bench ({summary['prompts']} prompts, VQA {summary['vqa_model']})", ["category", "score"], rows)
    typer.echo(f"overall {fmt(summary['overall'])}")


# -- NAMI-1K --------------------------------------------------------------------------------------------


def parse_counts(text: str) -> dict[str, int]:
    from nami_core.errors import NamiError
    from nami_core.eval.nami1k.prompts import SOURCES

    parts = [p.strip() for p in text.split(",")]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != len(SOURCES) or any(v < 0 for v in values):
        raise NamiError(f"--counts takes {len(SOURCES)} non-negative numbers (open,human,generated), got {text!r}")
    return dict(zip(SOURCES, values))


@nami1k_app.command("build")
def nami1k_build(
    out: Path = typer.Option(..., "--out", help="The prompt set to write (.jsonl: id, prompt, source, topic, words)."),
    open_files: List[Path] = typer.Option([], "--open", help="Short prompts from open benchmarks: .txt (one per line) or .jsonl with \"prompt\" (GenEval's metadata works). Repeatable."),
    human_files: List[Path] = typer.Option([], "--human", help="Human-written prompts (.txt or .jsonl). Repeatable."),
    generated_files: List[Path] = typer.Option([], "--generated", help="Long generated captions (.txt or .jsonl). Repeatable."),
    counts: str = typer.Option("360,320,320", "--counts", help="Prompts drawn per source: open,human,generated (the paper's 360,320,320)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the draw; the same files and seed give the same set."),
    max_words: int = typer.Option(120, "--max-words", help="Longer prompts are left out."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Histogram PNG (lengths by source, topics). Default: --out with .png."),
) -> None:
    """Assemble a NAMI-1K prompt set from source files and plot its length and topic histograms.

    Examples:

      nami eval nami1k build --open geneval/evaluation_metadata.jsonl --open lumiere.txt --human human.txt --generated captions.jsonl --out nami1k.jsonl

      nami eval nami1k build --open a.txt --human b.txt --generated c.txt --counts 36,32,32 --seed 1 --out small.jsonl --plot small.png
    """
    from nami_core.errors import NamiError
    from nami_core.eval.nami1k.build import build_prompt_set
    from nami_core.eval.nami1k.plots import topic_counts, write_histograms
    from nami_core.eval.nami1k.prompts import SOURCES, write_prompt_set
    from nami_core.output_targets import check_out_file

    if out.is_dir():
        raise NamiError(f"--out {out} is a folder; give the .jsonl file to write")
    inputs = {"--open": open_files, "--human": human_files, "--generated": generated_files}
    check_out_file(out, (".jsonl",), "NAMI-1K prompt set", inputs)
    plot = plot if plot is not None else out.with_suffix(".png")
    check_out_file(plot, (".png",), "histogram PNG", inputs, flag="--plot")
    sources = {flag.removeprefix("--"): files for flag, files in inputs.items() if files}
    records = build_prompt_set(sources, parse_counts(counts), seed, max_words)
    write_histograms(records, plot, inputs=inputs)
    write_prompt_set(out, records, inputs)
    rows = [[s, str(sum(r.source == s for r in records)),
             str(max((r.words for r in records if r.source == s), default=0))] for s in SOURCES]
    print_table(f"NAMI-1K prompt set ({len(records)} prompts)", ["source", "prompts", "longest (words)"], rows)
    typer.echo("topics: " + ", ".join(f"{t} {n}" for t, n in topic_counts(records).items()))
    typer.echo(f"wrote {out} and {plot}")


@nami1k_app.command("generate")
def nami1k_generate(
    prompts: Path = typer.Option(..., "--prompts", help="NAMI-1K prompt set (.jsonl from `build`)."),
    out: Path = typer.Option(..., "--out", help="Empty folder for <id>_<j>.png and manifest.jsonl."),
    model: Optional[str] = typer.Option(None, "--model", help="Model directory, or 'default' for the bundled model."),
    images_per_prompt: int = typer.Option(1, "--images-per-prompt", help="Images per prompt."),
    seed: int = typer.Option(0, "--seed", help="Image j of prompt i uses seed S + i * images-per-prompt + j."),
    steps: Optional[str] = typer.Option(None, "--steps", help="Euler steps per stage. Default: the model's."),
    cfg: Optional[str] = typer.Option(None, "--cfg", help="Classifier-free guidance scale (at most 100), or one per stage such as 8,3,3. Default: the model's."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    dtype: str = typer.Option("auto", "--dtype", help=DTYPE_HELP),
    batch_size: int = typer.Option(8, "--batch-size", help="Images generated per model call."),
) -> None:
    """Generate a model's images for a NAMI-1K prompt set (reproducible seeds), with a manifest for `annotate`.

    Examples:

      nami eval nami1k generate --prompts nami1k.jsonl --model runs/2b/final --out eval/nami1k/2b --device cuda

      nami eval nami1k generate --prompts nami1k.jsonl --out eval/nami1k/default --seed 100
    """
    from nami_core.eval.generation import Generator
    from nami_core.eval.nami1k.generate import check_image_folder, generate_set
    from nami_core.eval.nami1k.prompts import read_prompt_set

    check_positive(images_per_prompt, "--images-per-prompt")
    check_positive(batch_size, "--batch-size")
    inputs = {"--prompts": prompts, "--model": model}
    check_image_folder(out, inputs)
    records = read_prompt_set(prompts)
    generator = Generator(model, device, steps, cfg, dtype)
    with progress_bar("generating") as update:
        manifest = generate_set(generator, records, out, images_per_prompt, seed, batch_size, update, inputs)
    typer.echo(f"wrote {len(manifest)} images and {out / 'manifest.jsonl'}")


@nami1k_app.command("annotate")
def nami1k_annotate(
    images: List[str] = typer.Option(..., "--images", help="A folder from `generate` (one model), as DIR or NAME=DIR. Repeatable."),
    out: Path = typer.Option(..., "--out", help="The HTML page to write."),
    link: bool = typer.Option(False, "--link", help="Refer to the images by relative paths instead of embedding them."),
    max_side: int = typer.Option(768, "--max-side", help="Embedded images are JPEGs at most this many pixels wide/high; 0 embeds the PNGs as they are."),
    seed: int = typer.Option(0, "--seed", help="Seed of the blind shuffle of the images."),
    title: str = typer.Option("NAMI-1K annotation", "--title", help="Page title."),
) -> None:
    """Write ONE self-contained HTML page on which annotators score every image 0-100 on relevance, coherence, aesthetics and realism.

    Images of all models are shuffled together and shown without model names. Keys: right / left arrow = next / previous image, Enter in a score field = next image, 1-4 = jump to a score field, up / down = +/-1 (Shift: 10). Scores are saved in the browser (localStorage) as they are typed; "Export JSON" downloads nami1k-<annotator>.json for `nami eval nami1k score`.

    Examples:

      nami eval nami1k annotate --images nami=eval/nami1k/2b --images flux=eval/nami1k/flux --out annotate.html

      nami eval nami1k annotate --images eval/nami1k/2b --out eval/nami1k/page.html --link
    """
    from nami_core.eval.nami1k.annotate import parse_model_folder, write_page

    data = write_page([parse_model_folder(spec) for spec in images], out, embed=not link, max_side=max_side,
                      seed=seed, title=title)
    typer.echo(f"wrote {out} ({len(data['items'])} images)")


@nami1k_app.command("score")
def nami1k_score(
    annotations: List[Path] = typer.Argument(..., help="Exported nami1k-<annotator>.json files, one per annotator."),
    models: Optional[str] = typer.Option(None, "--models", help="Comma-separated models to report, in this order (default: all, sorted)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the scores as JSON to this file."),
) -> None:
    """Average the annotators and print Table-4-style scores per model and per source, with inter-annotator agreement.

    overall = 0.3 relevance + 0.3 coherence + 0.2 aesthetics + 0.2 realism (0-100). An image's score is the mean over its annotators; a model's the mean over its images. Agreement is Krippendorff's alpha (interval metric) per dimension over the images scored by two or more annotators (1 = perfect, 0 = chance).

    Examples:

      nami eval nami1k score annotations/*.json

      nami eval nami1k score a.json b.json c.json --models nami,flux --json nami1k_scores.json
    """
    from nami_core.files import write_json_atomic
    from nami_core.eval.nami1k.annotate import DIMENSIONS
    from nami_core.eval.nami1k.prompts import SOURCES
    from nami_core.eval.nami1k.score import read_annotations, score_annotations
    from nami_core.output_targets import check_out_file

    if json_out is not None:
        check_out_file(json_out, (".json",), "JSON scores", {"annotation file": list(annotations)}, flag="--json")
    chosen = [m.strip() for m in models.split(",") if m.strip()] if models else None
    result = score_annotations(read_annotations(annotations), chosen)
    print_table(f"NAMI-1K ({len(result['annotators'])} annotators)", ["model", *DIMENSIONS, "overall", "images"],
                [[m, *(fmt(t[d]) for d in DIMENSIONS), fmt(t["overall"]), str(t["images"])]
                 for m, t in result["models"].items()])
    print_table("NAMI-1K overall by source", ["model", *SOURCES],
                [[m, *(fmt(by_source[s]["overall"]) for s in SOURCES)] for m, by_source in result["sources"].items()])
    typer.echo("agreement (Krippendorff's alpha, interval): "
               + ", ".join(f"{d} {fmt(result['agreement'][d], 3)}" for d in DIMENSIONS))
    if json_out is not None:
        write_json_atomic(json_out, result)


# -- metrics --------------------------------------------------------------------------------------------


@app.command("clipscore")
def clipscore(
    images: Path = typer.Argument(..., help="Folder of images (searched recursively); prompts from nami PNG chunks or same-stem .txt files."),
    clip: str = typer.Option(..., "--clip", help="Folder of a transformers CLIP model + processor (e.g. openai/clip-vit-large-patch14 saved with save_pretrained)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write per-image scores and the mean as JSON."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    batch_size: int = typer.Option(16, "--batch-size", help="Images per CLIP call."),
) -> None:
    """CLIPScore = 100 x max(cos(image, prompt), 0), averaged over the images (last line: `clipscore <mean>`).

    Prompts over CLIP's 77 tokens are truncated with a warning.

    Examples:

      nami eval clipscore eval/nami1k/2b --clip /w/clip-vit-large-patch14

      nami eval clipscore eval/geneval/run1 --clip /w/clip-vit-base-patch32 --json clipscore.json --device cuda
    """
    from nami_core.eval.clip_model import ClipEncoder
    from nami_core.eval.clipscore import prompted_images, score_images
    from nami_core.files import write_json_atomic
    from nami_core.output_targets import check_out_file

    check_positive(batch_size, "--batch-size")
    if json_out is not None:
        check_out_file(json_out, (".json",), "JSON scores", {"--clip": clip}, flag="--json")
    pairs = prompted_images(images)
    encoder = ClipEncoder(clip, device_name(device))
    with warnings_as_lines(), progress_bar("scoring") as update:
        scores = score_images(encoder, pairs, batch_size, update)
    mean = sum(scores) / len(scores)
    if json_out is not None:
        write_json_atomic(json_out, {"clipscore": mean, "images": len(scores), "clip": str(clip),
                                     "definition": "100 * max(cos, 0)",
                                     "per_image": {str(p.relative_to(images)): s for (p, _), s in zip(pairs, scores)}})
    typer.echo(f"clipscore {mean:.4f}")


@app.command("fid")
def fid(
    real: Path = typer.Argument(..., help="Folder of reference images (searched recursively)."),
    fake: Path = typer.Argument(..., help="Folder of generated images (searched recursively)."),
    inception: str = typer.Option(..., "--inception", help="Path of inception-2015-12-05.pt (the TorchScript FID Inception of StyleGAN2-ADA / clean-fid)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the result as JSON."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    batch_size: int = typer.Option(32, "--batch-size", help="Images per Inception call."),
) -> None:
    """Fréchet Inception Distance between two image folders (last line: `fid <value>`).

    Images are resized to 299 x 299 bilinearly without antialiasing (pytorch-fid / clean-fid "legacy_pytorch" / StyleGAN2-ADA), so the numbers compare with published TensorFlow-style FIDs.

    Examples:

      nami eval fid coco/val2014_30k eval/coco30k/2b --inception /w/inception-2015-12-05.pt --device cuda

      nami eval fid real/ fake/ --inception /w/inception-2015-12-05.pt --json fid.json
    """
    from nami_core.eval.fid import InceptionFeatures, folder_fid
    from nami_core.files import write_json_atomic
    from nami_core.output_targets import check_out_file

    check_positive(batch_size, "--batch-size")
    if json_out is not None:
        check_out_file(json_out, (".json",), "JSON result", {"--inception": inception}, flag="--json")
    extractor = InceptionFeatures(inception, device_name(device))
    result = folder_fid(real, fake, extractor, batch_size)
    if json_out is not None:
        write_json_atomic(json_out, {**result, "inception": str(inception), "resize": "bilinear 299, no antialias"})
    typer.echo(f"fid {result['fid']:.4f}")
