"""`nami sample`: load a model, generate, write PNGs with their metadata."""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from .errors import NamiError


@dataclass
class SampleRequest:
    """Everything `nami sample` was asked for. `out` is a directory, or a `.png` path for one image."""

    prompt: str
    model: str | None = None
    out: Path = Path("nami-samples")
    n: int = 1
    seed: int = 0
    steps: str | None = None
    cfg: str | float | None = None
    negative: str | None = None
    mode: str | None = None
    device: str = "auto"
    dtype: str = "fp32"
    attention: str = "auto"
    batch_size: int = 8
    prompt_style: str = "plain"
    timestep_rounding: str | None = None


@dataclass
class SampleReport:
    paths: list[Path]
    stage_seconds: list[float]
    load_seconds: float
    sample_seconds: float
    metadata: list[dict] = field(default_factory=list)


def slug(text: str, limit: int = 48) -> str:
    s = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return (s[:limit].rstrip("-")) or "image"


def output_paths(out: Path, prompt: str, seeds: list[int]) -> list[Path]:
    """One path per image: `out` itself for a single `.png`, else numbered files."""
    if out.suffix.lower() == ".png":
        if len(seeds) == 1:
            return [out]
        return [out.with_name(f"{out.stem}-{s}.png") for s in seeds]
    return [out / f"{slug(prompt)}-{s}.png" for s in seeds]


def save_png(image, path: Path, metadata: dict) -> None:
    """Write `image` (PIL) with `metadata` in a PNG text chunk ("nami") and a sidecar JSON."""
    from PIL.PngImagePlugin import PngInfo

    path.parent.mkdir(parents=True, exist_ok=True)
    info = PngInfo()
    text = json.dumps(metadata, sort_keys=True)
    info.add_text("nami", text)
    info.add_text("prompt", str(metadata.get("prompt", "")))
    tmp = path.with_name(path.name + ".tmp")
    image.save(tmp, format="PNG", pnginfo=info)
    tmp.replace(path)
    path.with_suffix(".json").write_text(json.dumps(metadata, indent=2, sort_keys=True) + "\n")


def run_sample(req: SampleRequest, on_step: Callable[[int, int], None] | None = None,
               on_plan: Callable[[list[int]], None] | None = None) -> SampleReport:
    """Generate `req.n` images of `req.prompt`; image i has seed `req.seed + i`."""
    from .config import TIMESTEP_ROUNDINGS, check_mode, guidance_record
    from .modeldir import load_pipeline, resolve_model_dir
    from .runtime import resolve_device, resolve_dtype
    from .text.prompt_styles import get_prompt_style

    if req.n < 1:
        raise NamiError(f"--n must be at least 1, got {req.n}")
    if req.batch_size < 1:
        raise NamiError(f"--batch-size must be at least 1, got {req.batch_size}")
    if req.mode is not None:
        check_mode(req.mode)
    if not req.prompt.strip():
        raise NamiError("the prompt is empty")
    if req.timestep_rounding is not None and req.timestep_rounding not in TIMESTEP_ROUNDINGS:
        raise NamiError(f"--timestep-rounding must be one of {', '.join(TIMESTEP_ROUNDINGS)}, got {req.timestep_rounding!r}")
    model_prompt, negative = get_prompt_style(req.prompt_style).apply(req.prompt, req.negative)
    device = resolve_device(req.device)
    dtype = resolve_dtype(req.dtype)
    model_dir = resolve_model_dir(req.model)

    t0 = time.perf_counter()
    pipe = load_pipeline(model_dir, device, dtype, req.attention)
    load_seconds = time.perf_counter() - t0

    mode = req.mode or pipe.scheduler.config.default_mode
    plan = pipe.plan(mode, timestep_rounding=req.timestep_rounding)
    steps = plan.stage_steps(req.steps if req.steps is not None else tuple(pipe.scheduler.config.default_steps))
    guidance = plan.stage_guidance(pipe.scheduler.config.default_cfg if req.cfg is None else req.cfg)
    if on_plan is not None:
        on_plan(list(steps))

    seeds = [req.seed + i for i in range(req.n)]
    paths = output_paths(req.out, req.prompt, seeds)
    stage_seconds = [0.0] * len(steps)
    metadata_all = []
    t1 = time.perf_counter()
    for start in range(0, req.n, req.batch_size):
        chunk = seeds[start : start + req.batch_size]
        out = pipe(
            model_prompt,
            negative_prompt=negative,
            num_images_per_prompt=len(chunk),
            steps=steps,
            cfg=guidance,
            mode=mode,
            timestep_rounding=req.timestep_rounding,
            seed=chunk[0],
            callback=(lambda k, i, z: on_step(k, i)) if on_step is not None else None,
        )
        stage_seconds = [a + b for a, b in zip(stage_seconds, out.stage_seconds)]
        for image, s, path in zip(out.images, out.seeds, paths[start : start + len(chunk)]):
            meta = {
                "prompt": req.prompt,
                "prompt_style": req.prompt_style,
                "model_prompt": model_prompt,
                "negative": negative,
                "timestep_rounding": plan.flow.timestep_rounding,
                "seed": s,
                "steps": list(steps),
                "cfg": guidance_record(guidance),
                "mode": mode,
                "model": str(model_dir),
                "resolution": plan.flow.resolutions[-1],
                "dtype": req.dtype,
            }
            save_png(image, path, meta)
            metadata_all.append(meta)
    return SampleReport(paths, stage_seconds, load_seconds, time.perf_counter() - t1, metadata_all)


def report_dict(report: SampleReport) -> dict:
    data = asdict(report)
    data["paths"] = [str(p) for p in report.paths]
    return data
