"""`nami eval`: benchmarks (GenEval, DPG-Bench, NAMI-1K) and metrics (CLIPScore, FID).

Every command builds its core request first (a bad option is one error line before torch
loads), imports torch and the models lazily, reads weights only from local paths, and writes its
result files atomically after all scoring finished.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, List

import typer

from nami_core.eval.dpg import ANSWER_MATCHES
from nami_core.eval.dpg_run import DpgRequest
from nami_core.eval.geneval_run import GenevalRequest
from nami_core.eval.metric_requests import ClipScoreRequest, FidRequest
from nami_core.eval.nami1k import annotate as nami1k_annotate_core
from nami_core.eval.nami1k import build as nami1k_build_core
from nami_core.eval.nami1k.generate import Nami1kGeneration

from . import options as o
from .build import APP_SETTINGS
from .output import print_table as print_rich_table

app = typer.Typer(
    name="eval",
    help="Evaluate a model on a benchmark (GenEval, DPG-Bench, NAMI-1K) or compute a metric (CLIPScore, FID).",
    **APP_SETTINGS,
)
nami1k_app = typer.Typer(
    name="nami1k",
    help="NAMI-1K human evaluation: build the prompt set, generate, annotate in a browser, score.",
    **APP_SETTINGS,
)
app.add_typer(nami1k_app, name="nami1k")

# the options every generating benchmark takes (geneval, dpg, nami1k generate)
EvalModel = o.model("Model directory, or 'default' for the bundled model.", o.MODEL)
EvalBatch = o.batch_size("Images generated per model call.", o.PRECISION)


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


def print_table(title: str, columns: list[str], rows: list[list[str]]) -> None:
    from rich.table import Table

    table = Table(title=title)
    for i, column in enumerate(columns):
        table.add_column(column, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    print_rich_table(table)


def fmt(value: float, digits: int = 2) -> str:
    return "-" if value != value else f"{value:.{digits}f}"


# -- GenEval --------------------------------------------------------------------------------------------


@app.command("geneval")
@o.defaults_from(GenevalRequest)
def geneval(
    out: o.out("GenEval folder: <out>/00000/metadata.jsonl + samples/0000.png, then results.jsonl and summary.json.",
               o.OUTPUT),
    metadata: o.own(Path, "--metadata", help="GenEval metadata .jsonl.", panel=o.PROMPTS) = None,
    model: EvalModel = None,
    images_per_prompt: o.ImagesPerPrompt = None,
    seed: o.seed("Image j of prompt i has seed S + i x images-per-prompt + j.", o.SAMPLING) = None,
    steps: o.EulerSteps = None,
    cfg: o.Guidance = None,
    detector: o.own(str, "--detector", metavar="shapes|mask2former:PATH", panel=o.SCORING,
        help="Object detector: the shapes world's own, or GenEval's Mask2Former (a transformers COCO-instance "
             "folder at PATH; colours by CLIP with --clip).") = None,
    clip: o.clip("Folder of a transformers CLIP model (GenEval uses ViT-L/14) naming object colours for "
                 "mask2former.", o.SCORING) = None,
    skip_generation: o.SkipGeneration = None,
    device: o.Device = None,
    dtype: o.Dtype = None,
    batch_size: EvalBatch = None,
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
    from nami_core.eval import geneval_run
    from nami_core.eval.detectors import DetectorOptions, get_detector

    req = GenevalRequest(out=out, **o.given(
        metadata=metadata, model=model, images_per_prompt=images_per_prompt, seed=seed, steps=steps, cfg=cfg,
        detector=detector, clip=clip, skip_generation=skip_generation, device=device, dtype=dtype,
        batch_size=batch_size))
    found = get_detector(req.detector, DetectorOptions(
        clip=req.clip, device=device_name(req.device) if ":" in req.detector else "cpu"))
    suite_lines = req.suite_lines()
    if req.skip_generation:
        prompts = ge.read_layout(req.out)
        if suite_lines is not None:
            geneval_run.check_same_prompts(prompts, [line for _, line in suite_lines], str(req.metadata))
        scored_lines = [(f"{p.path / ge.METADATA_NAME}:1", p.metadata) for p in prompts]
    else:
        req.check_out()
    req.check_inputs()
    ge.check_detector(suite_lines if suite_lines is not None else scored_lines, found)
    if not req.skip_generation:
        suite = [line for _, line in suite_lines]
        generator = req.generator()
        with progress_bar("generating") as update:
            geneval_run.generate_samples(generator, suite, req, req.out, update)

    with progress_bar("scoring") as update:
        results = ge.evaluate_folder(req.out, found, update)
    summary = ge.summarize(results)
    rows = []
    for tag, value in summary["tags"].items():
        tagged = [r for r in results if r["tag"] == tag]
        rows.append([tag, str(len(tagged)), str(sum(r["correct"] for r in tagged)), f"{value:.3f}"])
    print_table(f"GenEval ({found.name} detector)", ["tag", "images", "correct", "score"], rows)
    typer.echo(f"overall {summary['overall']:.3f}")


# -- DPG-Bench ------------------------------------------------------------------------------------------


@app.command("dpg")
@o.defaults_from(DpgRequest)
def dpg(
    csv: o.own(Path, "--csv", help="DPG-Bench questions (dpg_bench.csv of the ELLA repository).", panel=o.PROMPTS),
    vqa: o.own(str, "--vqa", help="Folder of a transformers VQA model + processor (e.g. BLIP-VQA, ViLT).",
        panel=o.SCORING),
    out: o.out("Folder for the <item_id>.png grids, dpg_results.jsonl and dpg_summary.json.", o.OUTPUT),
    prompts: o.prompts("Folder of DPG-Bench <item_id>.txt prompts (needed unless --skip-generation).",
                       o.PROMPTS) = None,
    model: EvalModel = None,
    seed: o.seed("Cell k (0..3) of prompt i (prompts in name order) has seed S + 4 i + k.", o.SAMPLING) = None,
    steps: o.EulerSteps = None,
    cfg: o.Guidance = None,
    skip_generation: o.SkipGeneration = None,
    vqa_prompt: o.own(str, "--vqa-prompt", panel=o.SCORING,
        help="How a question is put to a generative VQA model, e.g. 'Question: {question} Answer:' for BLIP-2.") = None,
    keep_first_row: o.own(bool, "--keep-first-row", panel=o.SCORING,
        help="Also use the csv's first question (ELLA's script skips it; off = ELLA's numbers).") = None,
    answer_match: o.own(str, "--answer-match", metavar=o.choices(ANSWER_MATCHES), panel=o.SCORING,
        help="How an answer is read: ELLA's rule scores the answer 'yes' exactly; lenient strips and lower-cases "
             "it first, so ' Yes' scores too (not comparable to ELLA's numbers).") = None,
    device: o.Device = None,
    dtype: o.Dtype = None,
    batch_size: EvalBatch = None,
) -> None:
    """Generate a 2x2 grid per DPG-Bench prompt and score it with a VQA model, as ELLA's DPG-Bench script does.

    Each question is asked of each of the four cells (the answer "yes", exactly as ELLA compares it, scores 1; --answer-match lenient also takes " Yes"); a question whose parent question failed scores 0; a cell's score is the mean over its questions, a prompt's the mean over its cells, and the DPG-Bench score (last line, `overall <score>`) 100 x the mean over prompts. Level-1 / level-2 category scores follow ELLA's script. DPG-Bench's reference VQA model is mPLUG-large, which transformers does not provide: scores from any other model are marked "not comparable to mPLUG-large" here and in dpg_summary.json.

    Examples:

      nami eval dpg --prompts dpg_bench/prompts --csv dpg_bench/dpg_bench.csv --vqa /w/blip-vqa-base --model runs/2b/final --out eval/dpg --device cuda

      nami eval dpg --csv dpg_bench/dpg_bench.csv --vqa /w/blip-vqa-base --out eval/dpg --skip-generation
    """
    from nami_core.eval import dpg as dpg_core
    from nami_core.eval import dpg_run

    req = DpgRequest(csv=csv, vqa=vqa, out=out, **o.given(
        prompts=prompts, model=model, seed=seed, steps=steps, cfg=cfg, skip_generation=skip_generation,
        vqa_prompt=vqa_prompt, keep_first_row=keep_first_row, answer_match=answer_match, device=device, dtype=dtype,
        batch_size=batch_size))
    items = dpg_core.read_dpg_csv(req.csv, drop_first_row=not req.keep_first_row)
    if req.skip_generation:
        dpg_run.grid_files(req.out, items)
    else:
        prompt_texts = dpg_run.read_prompt_dir(req.prompts)
        dpg_run.check_new_grid_folder(req.out, req.inputs())
    req.check_inputs()
    from nami_core.eval.vqa import TransformersVQA

    answerer = TransformersVQA(req.vqa, device_name(req.device), req.vqa_prompt)
    if not req.skip_generation:
        generator = req.generator()
        with progress_bar("generating") as update:
            dpg_run.generate_grids(generator, prompt_texts, req.out, req.seed, req.batch_size, update)
    with progress_bar("asking") as update:
        summary = dpg_run.evaluate_grids(req.out, items, answerer, update, req.answer_match)
    if summary["note"]:
        typer.echo(f"note: {summary['note']}")
    for skipped in summary["skipped"]:
        typer.echo(f"skipped {skipped['item_id']}: {skipped['reason']}")
    rows = [[name, fmt(value)] for name, value in summary["level1"].items()]
    rows += [[f"  {name}", fmt(value)] for name, value in summary["level2"].items()]
    print_table(f"DPG-Bench ({summary['prompts']} prompts, VQA {summary['vqa_model']})", ["category", "score"], rows)
    typer.echo(f"overall {fmt(summary['overall'])}")


# -- NAMI-1K --------------------------------------------------------------------------------------------


@nami1k_app.command("build")
@o.defaults_from(nami1k_build_core.build_prompt_set)
def nami1k_build(
    out: o.out("The prompt set to write (.jsonl: id, prompt, source, topic, words).", o.OUTPUT),
    open_files: o.own(List[Path], "--open", panel=o.PROMPTS,
        help="Short prompts from open benchmarks: .txt (one per line) or .jsonl with \"prompt\" (GenEval's "
             "metadata works). Repeatable.") = None,
    human_files: o.own(List[Path], "--human", help="Human-written prompts (.txt or .jsonl). Repeatable.", panel=o.PROMPTS) = None,
    generated_files: o.own(List[Path], "--generated", help="Long generated captions (.txt or .jsonl). Repeatable.", panel=o.PROMPTS) = None,
    counts: o.own(str, "--counts", help="Prompts drawn per source: open,human,generated (the paper's).", panel=o.PROMPTS,
        show_default=",".join(map(str, nami1k_build_core.DEFAULT_COUNTS.values()))) = None,
    max_words: o.own(int, "--max-words", help="Longer prompts are left out.", panel=o.PROMPTS) = None,
    seed: o.seed("Seed of the draw; the same files and seed give the same set.", o.PROMPTS) = None,
    plot: o.plot("Histogram PNG (lengths by source, topics).", o.OUTPUT, show_default="OUT with .png") = None,
) -> None:
    """Assemble a NAMI-1K prompt set from source files and plot its length and topic histograms.

    Examples:

      nami eval nami1k build --open geneval/evaluation_metadata.jsonl --open lumiere.txt --human human.txt --generated captions.jsonl --out nami1k.jsonl

      nami eval nami1k build --open a.txt --human b.txt --generated c.txt --counts 36,32,32 --seed 1 --out small.jsonl --plot small.png
    """
    from nami_core.errors import NamiError
    from nami_core.eval.nami1k.plots import topic_counts, write_histograms
    from nami_core.eval.nami1k.prompts import SOURCES, write_prompt_set
    from nami_core.output_targets import check_out_file

    out = Path(out)
    if out.is_dir():
        raise NamiError(f"--out {out} is a folder; give the .jsonl file to write")
    inputs = {"--open": open_files, "--human": human_files, "--generated": generated_files}
    check_out_file(out, (".jsonl",), "NAMI-1K prompt set", inputs)
    plot = plot if plot is not None else out.with_suffix(".png")
    check_out_file(plot, (".png",), "histogram PNG", inputs, flag="--plot")
    sources = {flag.removeprefix("--"): files for flag, files in inputs.items() if files}
    records = nami1k_build_core.build_prompt_set(sources, **o.given(counts=counts, seed=seed, max_words=max_words))
    write_histograms(records, plot, inputs=inputs)
    write_prompt_set(out, records, inputs)
    rows = [[s, str(sum(r.source == s for r in records)),
             str(max((r.words for r in records if r.source == s), default=0))] for s in SOURCES]
    print_table(f"NAMI-1K prompt set ({len(records)} prompts)", ["source", "prompts", "longest (words)"], rows)
    typer.echo("topics: " + ", ".join(f"{t} {n}" for t, n in topic_counts(records).items()))
    typer.echo(f"wrote {out} and {plot}")


@nami1k_app.command("generate")
@o.defaults_from(Nami1kGeneration)
def nami1k_generate(
    prompts: o.prompts("NAMI-1K prompt set (.jsonl from `build`).", o.PROMPTS),
    out: o.out("Empty folder for <id>_<j>.png and manifest.jsonl.", o.OUTPUT),
    model: EvalModel = None,
    images_per_prompt: o.ImagesPerPrompt = None,
    seed: o.seed("Image j of prompt i has seed S + i x images-per-prompt + j.", o.SAMPLING) = None,
    steps: o.EulerSteps = None,
    cfg: o.Guidance = None,
    device: o.Device = None,
    dtype: o.Dtype = None,
    batch_size: EvalBatch = None,
) -> None:
    """Generate a model's images for a NAMI-1K prompt set (reproducible seeds), with a manifest for `annotate`.

    Examples:

      nami eval nami1k generate --prompts nami1k.jsonl --model runs/2b/final --out eval/nami1k/2b --device cuda

      nami eval nami1k generate --prompts nami1k.jsonl --out eval/nami1k/default --seed 100
    """
    from nami_core.eval.nami1k.generate import check_image_folder, generate_set
    from nami_core.eval.nami1k.prompts import read_prompt_set

    req = Nami1kGeneration(prompts=prompts, out=out, **o.given(
        model=model, images_per_prompt=images_per_prompt, seed=seed, steps=steps, cfg=cfg, device=device, dtype=dtype,
        batch_size=batch_size))
    check_image_folder(req.out, req.inputs())
    req.check_inputs()
    records = read_prompt_set(req.prompts)
    generator = req.generator()
    with progress_bar("generating") as update:
        manifest = generate_set(generator, records, req.out, req.images_per_prompt, req.seed, req.batch_size, update,
                                req.inputs())
    typer.echo(f"wrote {len(manifest)} images and {req.out / 'manifest.jsonl'}")


@nami1k_app.command("annotate")
@o.defaults_from(nami1k_annotate_core.PageRequest)
def nami1k_annotate(
    images: o.own(List[str], "--images", help="A folder from `generate` (one model), as DIR or NAME=DIR. Repeatable.",
        panel=o.PROMPTS),
    out: o.out("The HTML page to write.", o.OUTPUT),
    link: o.own(bool, "--link", help="Refer to the images by relative paths instead of embedding them.", panel=o.PAGE) = None,
    max_side: o.own(int, "--max-side", panel=o.PAGE,
        help="Embedded images are JPEGs at most this many pixels wide/high; 0 embeds the PNGs as they are.") = None,
    seed: o.seed("Seed of the blind shuffle of the images.", o.PAGE) = None,
    title: o.own(str, "--title", help="Page title.", panel=o.PAGE) = None,
) -> None:
    """Write ONE self-contained HTML page on which annotators score every image 0-100 on relevance, coherence, aesthetics and realism.

    Images of all models are shuffled together and shown without model names. Keys: right / left arrow = next / previous image, Enter in a score field = next image, 1-4 = jump to a score field, up / down = +/-1 (Shift: 10). Scores are saved in the browser (localStorage) as they are typed; "Export JSON" downloads nami1k-<annotator>.json for `nami eval nami1k score`.

    Examples:

      nami eval nami1k annotate --images nami=eval/nami1k/2b --images flux=eval/nami1k/flux --out annotate.html

      nami eval nami1k annotate --images eval/nami1k/2b --out eval/nami1k/page.html --link
    """
    from nami_core.eval.nami1k.annotate import PageRequest, write_page

    page = PageRequest(images, out, embed=not link, **o.given(max_side=max_side, seed=seed, title=title))
    data = write_page(page.models, page.out, page.embed, page.max_side, page.seed, page.title)
    typer.echo(f"wrote {out} ({len(data['items'])} images)")


@nami1k_app.command("score")
def nami1k_score(
    annotations: Annotated[List[Path], typer.Argument(help="Exported nami1k-<annotator>.json files, one per annotator.")],
    models: o.own(str, "--models", help="Comma-separated models to report, in this order.", show_default="all, sorted",
        panel=o.SCORING) = None,
    json_out: o.json_file("Also write the scores as JSON to this file.", o.OUTPUT) = None,
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
    from nami_core.config import parse_name_list

    chosen = list(parse_name_list(models, "--models")) if models is not None else None
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
@o.defaults_from(ClipScoreRequest)
def clipscore(
    images: Annotated[Path, typer.Argument(
        help="Folder of images (searched recursively); prompts from nami PNG chunks or same-stem .txt files.")],
    clip: o.clip("Folder of a transformers CLIP model + processor (e.g. openai/clip-vit-large-patch14 saved with "
                 "save_pretrained).", o.SCORING),
    json_out: o.json_file("Also write per-image scores and the mean as JSON.", o.OUTPUT) = None,
    device: o.Device = None,
    batch_size: o.batch_size("Images per CLIP call.", o.PRECISION) = None,
) -> None:
    """CLIPScore = 100 x max(cos(image, prompt), 0), averaged over the images (last line: `clipscore <mean>`).

    Prompts over CLIP's 77 tokens are truncated with a warning.

    Examples:

      nami eval clipscore eval/nami1k/2b --clip /w/clip-vit-large-patch14

      nami eval clipscore eval/geneval/run1 --clip /w/clip-vit-base-patch32 --json clipscore.json --device cuda
    """
    req = ClipScoreRequest(images=images, clip=clip, **o.given(json_out=json_out, device=device,
                                                               batch_size=batch_size))
    from nami_core.eval.clip_model import ClipEncoder
    from nami_core.eval.clipscore import prompted_images, score_images
    from nami_core.files import write_json_atomic

    pairs = prompted_images(req.images)
    encoder = ClipEncoder(req.clip, device_name(req.device))
    with warnings_as_lines(), progress_bar("scoring") as update:
        scores = score_images(encoder, pairs, req.batch_size, update)
    mean = sum(scores) / len(scores)
    if req.json_out is not None:
        write_json_atomic(req.json_out, {
            "clipscore": mean, "images": len(scores), "clip": str(req.clip), "definition": "100 * max(cos, 0)",
            "per_image": {str(p.relative_to(req.images)): s for (p, _), s in zip(pairs, scores)}})
    typer.echo(f"clipscore {mean:.4f}")


@app.command("fid")
@o.defaults_from(FidRequest)
def fid(
    real: Annotated[Path, typer.Argument(help="Folder of reference images (searched recursively).")],
    fake: Annotated[Path, typer.Argument(help="Folder of generated images (searched recursively).")],
    inception: o.own(str, "--inception", panel=o.SCORING,
        help="Path of inception-2015-12-05.pt (the TorchScript FID Inception of StyleGAN2-ADA / clean-fid)."),
    json_out: o.json_file("Also write the result as JSON.", o.OUTPUT) = None,
    device: o.Device = None,
    batch_size: o.batch_size("Images per Inception call.", o.PRECISION) = None,
) -> None:
    """Fréchet Inception Distance between two image folders (last line: `fid <value>`).

    Images are resized to 299 x 299 bilinearly without antialiasing (pytorch-fid / clean-fid "legacy_pytorch" / StyleGAN2-ADA), so the numbers compare with published TensorFlow-style FIDs.

    Examples:

      nami eval fid coco/val2014_30k eval/coco30k/2b --inception /w/inception-2015-12-05.pt --device cuda

      nami eval fid real/ fake/ --inception /w/inception-2015-12-05.pt --json fid.json
    """
    req = FidRequest(real=real, fake=fake, inception=inception, **o.given(
        json_out=json_out, device=device, batch_size=batch_size))
    from nami_core.eval.fid import InceptionFeatures, folder_fid
    from nami_core.files import write_json_atomic

    extractor = InceptionFeatures(req.inception, device_name(req.device))
    result = folder_fid(req.real, req.fake, extractor, req.batch_size)
    if req.json_out is not None:
        write_json_atomic(req.json_out, {**result, "inception": str(req.inception),
                                         "resize": "bilinear 299, no antialias"})
    typer.echo(f"fid {result['fid']:.4f}")
