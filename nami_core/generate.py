"""`nami sample`: load a model, generate, write PNGs with their metadata."""

from __future__ import annotations

import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from .config import (ATTENTION_BACKENDS, DEVICES, DTYPE_CHOICES, MAX_BATCH_SIZE, MAX_SEED, MAX_SIDE, MODES, TIMESTEP_ROUNDINGS,
                     check_fields, empty_means, guidance_scales, when_empty, one_of, parse_size, step_counts, within)
from .flow.saved import check_sampling
from .input_paths import MODEL, check_reads, reads
from .model_paths import resolve_model_dir
from .errors import NamiError
from .output_names import grid_name, sample_name
from .text.prompt_styles import PROMPT_STYLES
from .sample_writer import write_sample


MAX_IMAGES = 100_000  # images of one `nami sample` call (--n); checked before any seed list is built
FAR_FROM_TRAINED = 2.0  # an image with more than this many times (or this fraction of) the trained pixels


@dataclass
class SampleRequest:
    """Everything `nami sample` was asked for. `out` is a directory, or a `.png` path for one image.

    In a directory every image gets a name of its own (`output_names.sample_name`). Nothing is
    replaced unless `overwrite`: a name already taken (by the PNG or its sidecar `.json`), in a
    directory or given as `out`, is numbered `-1`, `-2`, ... The image size is `width` x `height`
    pixels, or `size` ("1024x576") parsed into them; None: the model's side. `grid` also writes
    one grid of the images beside them (`grid_path`).
    """

    prompt: str
    model: str | None = field(default=None, metadata={**reads(MODEL), "shown": "the bundled nami-shapes model"})
    out: Path | str = field(default=Path("nami-samples"),
                            metadata=when_empty("give a folder, or a .png file name for one image"))
    n: int = field(default=1, metadata=within(1, MAX_IMAGES))
    seed: int = 0
    steps: str | None = field(default=None, metadata={"shown": "the model's"})
    cfg: str | float | None = field(default=None, metadata={"shown": "the model's"})
    negative: str | None = field(default=None, metadata=empty_means("no negative prompt, not even the prompt style's"))
    mode: str | None = field(default=None, metadata={**one_of(MODES), "shown": "the model's"})
    device: str = field(default="auto", metadata=one_of(DEVICES))
    dtype: str = field(default="auto", metadata=one_of(DTYPE_CHOICES))
    attention: str = field(default="auto", metadata=one_of(ATTENTION_BACKENDS))
    batch_size: int = field(default=8, metadata=within(1, MAX_BATCH_SIZE))
    prompt_style: str = field(default="plain", metadata=one_of(tuple(PROMPT_STYLES)))
    timestep_rounding: str | None = field(default=None, metadata={**one_of(TIMESTEP_ROUNDINGS), "shown": "the model's"})
    compile: bool = False
    overwrite: bool = False
    loras: tuple[str, ...] = field(default=(), metadata={"option": "--lora"})  # ADAPTER[:SCALE] each
    height: int | None = field(default=None, metadata={**within(1, MAX_SIDE), "shown": "the model's side"})  # pixels
    width: int | None = field(default=None, metadata={**within(1, MAX_SIDE), "shown": "the model's side"})
    size: str | None = field(default=None, metadata={"shown": "the model's square side"})
    grid: bool = False

    def __post_init__(self) -> None:
        self.loras = tuple(self.loras)
        if self.size is not None:
            if self.width is not None or self.height is not None:
                raise NamiError("give --size or --width/--height, not both")
            self.width, self.height = parse_size(self.size)
            self.size = None

    def validate(self) -> None:
        """Check what can be checked before a model is loaded; one error line names the option."""
        from .model.lora import parse_lora_spec
        from .text.prompt_styles import get_prompt_style

        if not self.prompt.strip():
            raise NamiError("the prompt is empty")
        check_fields(self)
        if self.steps is not None:
            step_counts(self.steps, "--steps")
        get_prompt_style(self.prompt_style)
        if self.cfg is not None:
            guidance_scales(self.cfg, "--cfg")
        adapters = [parse_lora_spec(spec)[0].resolve() for spec in self.loras]
        if len(set(adapters)) != len(adapters):
            raise NamiError("--lora names one adapter twice; give it once, with the scale you want (ADAPTER:SCALE)")
        if self.seed + self.n - 1 > MAX_SEED:
            raise NamiError(f"--seed {self.seed} with --n {self.n} gives seeds up to {self.seed + self.n - 1}, beyond the "
                            f"largest seed {MAX_SEED}")
        check_reads(self)
        self.check_out()
        check_sampling(resolve_model_dir(self.model), self.mode, self.steps, self.cfg, self.height, self.width)

    def seeds(self) -> list[int]:
        return [self.seed + i for i in range(self.n)]

    def check_out(self) -> None:
        """`--out` names PNGs that can be written, or is a folder (or can be made one) for them, by
        the output policy (`output_targets`): not the model or an adapter, nor inside or around them."""
        from .model.lora import adapter_folder, parse_lora_spec
        from .model_paths import resolve_model_dir
        from .output_targets import SAMPLES, check_out_file, check_out_folder, file_in_the_way

        out = Path(self.out)
        if not out.exists() and out.suffix.lower() in OTHER_IMAGE_SUFFIXES and not str(self.out).endswith(("/", os.sep)):
            raise NamiError(f"--out {out}: nami sample writes PNG images; give a .png file name, or a folder")
        inputs = {"--model": resolve_model_dir(self.model)}
        inputs.update({f"--lora {spec}": adapter_folder(parse_lora_spec(spec)[0]) for spec in self.loras})
        named = named_paths(self.out, self.seeds())
        if named is None:
            if out.exists() and not out.is_dir():
                raise NamiError(f"--out {out} is a file; give a folder, or a .png file name for one image")
            check_out_folder(out, SAMPLES, inputs)
            return
        blocker = file_in_the_way(out)
        if blocker is not None:
            raise NamiError(f"--out {out}: {blocker} is a file, not a folder")
        for path in named + ([named_grid(out)] if self.grid else []):
            if path.is_dir():
                raise NamiError(f"--out {path} is a folder; give a .png file name, or a folder for the images")
            check_out_file(path, (".png",), "PNG image", inputs, make_folder=True)


OTHER_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff")


@dataclass
class SampleReport:
    paths: list[Path]
    stage_seconds: list[float]
    load_seconds: float
    sample_seconds: float
    metadata: list[dict] = field(default_factory=list)
    compile: dict | None = None  # `CompileStats.report()` with --compile
    compile_warning: str | None = None  # one line when a compiled part ran eagerly
    grid: Path | None = None


def named_grid(out: Path) -> Path:
    """The grid beside images named after the `.png` `out`: `<stem>-grid.png`."""
    return out.with_name(f"{out.stem}-grid.png")


def grid_path(out: Path, named: list[Path] | None, metadata: dict) -> Path:
    """Where `--grid` goes: beside the images, `<stem>-grid.png` for a named `.png`, else
    `<slug>-<key>-grid.png` in the folder (the images' name without their seed)."""
    return named_grid(out) if named is not None else out / grid_name(metadata)


def size_warning(trained: tuple[int, int], height: int, width: int) -> str | None:
    """One line when `height` x `width` is far from the `trained` (height, width) size, in pixels:
    more than `FAR_FROM_TRAINED` times its pixel count, or less than that fraction of it."""
    ratio = (height * width) / (trained[0] * trained[1])
    if 1 / FAR_FROM_TRAINED <= ratio <= FAR_FROM_TRAINED:
        return None
    times = f"{ratio:.0f} times" if ratio >= 10 else f"{ratio:.2g} times"
    return (f"the model was trained at {trained[1]}x{trained[0]} px; {width}x{height} has {times} its pixels, far "
            f"from what it learned: expect a flat or broken picture (sizes near {trained[1]}x{trained[0]} work)")


def named_paths(out: Path | str, seeds: list[int]) -> list[Path] | None:
    """The paths the user named: `out` itself for one image to a `.png` (`<stem>-<seed>.png` for
    several); None when `out` is a folder (also a folder whose name ends in .png, or any name
    given with a trailing separator: `x.png/`)."""
    folder = str(out).endswith(("/", os.sep))
    out = Path(out)
    if out.suffix.lower() != ".png" or out.is_dir() or folder:
        return None
    if len(seeds) == 1:
        return [out]
    return [out.with_name(f"{out.stem}-{s}.png") for s in seeds]


def image_path(out: Path, named: list[Path] | None, index: int, metadata: dict) -> Path:
    """Where image `index` goes: its named path, or its own name in the folder `out`."""
    return named[index] if named is not None else out / sample_name(metadata)


def vocabulary_warning(req: SampleRequest) -> str | None:
    """One line when the prompt uses words outside the model's saved vocabulary (plus the words of
    its `--lora` adapters' fine-tuning captions), else None. No claim, and no line, when the model
    or an adapter carries no vocabulary."""
    from .model.lora import adapter_folder, parse_lora_spec
    from .modeldir import resolve_model_dir
    from .vocabulary import combined_vocabulary

    adapters = [adapter_folder(parse_lora_spec(spec)[0]) for spec in req.loras]
    vocabulary = combined_vocabulary(resolve_model_dir(req.model), adapters)
    return None if vocabulary is None else vocabulary.warning(req.prompt)


def run_sample(req: SampleRequest, on_step: Callable[[int, int], None] | None = None,
               on_plan: Callable[[list[int]], None] | None = None,
               on_warning: Callable[[str], None] | None = None) -> SampleReport:
    """Generate `req.n` images of `req.prompt`; image i has seed `req.seed + i`. `on_warning`
    receives one line for each adapter that only partly fits the model, and one for a size far from
    the one the model was trained at (Python's warnings by default)."""
    from .model.lora import apply_loras, parse_lora_spec
    from .modeldir import load_pipeline, resolve_model_dir
    from .runtime import dtype_name, resolve_device, resolve_dtype
    from .text.prompt_styles import get_prompt_style

    req.validate()
    model_prompt, negative = get_prompt_style(req.prompt_style).apply(req.prompt, req.negative)
    device = resolve_device(req.device)
    dtype = resolve_dtype(req.dtype, device)
    model_dir = resolve_model_dir(req.model)

    t0 = time.perf_counter()
    pipe = load_pipeline(model_dir, device, dtype, req.attention, diffusers_pipeline=bool(req.loras))
    loras = apply_loras(pipe, list(req.loras), on_warning)
    if req.compile:
        pipe.compile()
    load_seconds = time.perf_counter() - t0

    run = pipe.settings(req.mode, req.steps, req.cfg, timestep_rounding=req.timestep_rounding,
                        height=req.height, width=req.width)
    if req.height is not None or req.width is not None:
        side = pipe.scheduler.flow.resolutions[-1]  # the size the model directory records it was trained at
        warning = size_warning((side, side), *run.plan.flow.sizes[-1])
        if warning is not None:
            (on_warning or _warn)(warning)
    if on_plan is not None:
        on_plan(list(run.steps))
    described = {"prompt": req.prompt, "prompt_style": req.prompt_style, "model_prompt": model_prompt,
                 "negative": negative, "model": str(model_dir), "dtype": dtype_name(req.dtype, device), **settings_record(run)}
    if loras:
        described["lora"] = [[str(path), scale] for path, scale in map(parse_lora_spec, req.loras)]

    seeds = req.seeds()
    out_dir = Path(req.out)
    named = named_paths(req.out, seeds)
    paths: list[Path] = []
    stage_seconds = [0.0] * len(run.steps)
    metadata_all = []
    t1 = time.perf_counter()
    for start in range(0, req.n, req.batch_size):
        chunk = seeds[start : start + req.batch_size]
        try:
            out = pipe(model_prompt, negative_prompt=negative, num_images_per_prompt=len(chunk), steps=run.steps,
                       cfg=run.guidance, mode=run.plan.mode, timestep_rounding=req.timestep_rounding, seed=chunk[0],
                       height=req.height, width=req.width,
                       callback=(lambda k, i, z: on_step(k, i)) if on_step is not None else None)
        except RuntimeError as exc:
            error = memory_error(exc, run, len(chunk))
            if error is None:
                raise
            raise error from None
        stage_seconds = [a + b for a, b in zip(stage_seconds, out.stage_seconds)]
        for image, s in zip(out.images, out.seeds):
            meta = {**described, "seed": s}
            target = image_path(out_dir, named, len(paths), meta)
            paths.append(write_sample(image, target, meta, overwrite=req.overwrite))
            metadata_all.append(meta)
    grid = None
    if req.grid:
        grid = write_grid(paths, metadata_all, grid_path(out_dir, named, described), {**described, "seeds": seeds},
                          req.overwrite)
    stats = pipe.transformer.compile_stats
    return SampleReport(paths, stage_seconds, load_seconds, time.perf_counter() - t1, metadata_all,
                        None if stats is None else stats.report(), None if stats is None else stats.fallback(), grid)


def write_grid(paths: list[Path], metadata: list[dict], target: Path, record: dict, overwrite: bool) -> Path:
    """The images written (`paths`) as one grid, prompt and seed under each, at `target` (or the
    next free numbered name, as images are)."""
    from PIL import Image

    from .grid import image_grid

    images = []
    for path in paths:
        with Image.open(path) as image:
            images.append(image.convert("RGB"))
    picture = image_grid(images, [f"{meta['prompt']}\nseed {meta['seed']}" for meta in metadata])
    return write_sample(picture, target, record, overwrite=overwrite)


def _warn(text: str) -> None:
    import warnings

    warnings.warn(text, stacklevel=3)


def memory_error(exc: RuntimeError, run, batch: int) -> NamiError | None:
    """A failed allocation while sampling as one `NamiError` line naming the image size; None for
    any other error."""
    text = str(exc)
    if "can't allocate memory" not in text and "out of memory" not in text.lower():
        return None
    height, width = run.plan.flow.sizes[-1]
    wanted = re.search(r"allocate ([0-9]+) bytes", text)
    needed = f" (one tensor needed {int(wanted[1]) / 2**30:.1f} GiB)" if wanted else ""
    return NamiError(f"out of memory sampling {batch} image(s) of {width}x{height}{needed}; "
                     "use a smaller size or --batch-size")


def settings_record(run) -> dict:
    """What a PNG records of a call's resolved `SamplingSettings`."""
    from .config import guidance_record

    height, width = run.plan.flow.sizes[-1]
    record = {"steps": list(run.steps), "cfg": guidance_record(run.guidance), "mode": run.plan.mode,
              "resolution": height, "timestep_rounding": run.scheduler.config.timestep_rounding}
    if width != height:
        record["width"] = width  # "resolution" is then the height
    return record


def report_dict(report: SampleReport) -> dict:
    data = asdict(report)
    data["paths"] = [str(p) for p in report.paths]
    data["grid"] = str(report.grid) if report.grid is not None else None
    return data
