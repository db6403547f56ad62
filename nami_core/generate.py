"""`nami sample`: load a model, generate, write PNGs with their metadata."""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from .errors import NamiError
from .png import save_png


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
    dtype: str = "auto"
    attention: str = "auto"
    batch_size: int = 8
    prompt_style: str = "plain"
    timestep_rounding: str | None = None
    compile: bool = False

    def validate(self) -> None:
        """Check what can be checked before a model is loaded; one error line names the option."""
        from .config import TIMESTEP_ROUNDINGS, check_mode

        if self.n < 1:
            raise NamiError(f"--n must be at least 1, got {self.n}")
        if self.batch_size < 1:
            raise NamiError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.mode is not None:
            check_mode(self.mode)
        if not self.prompt.strip():
            raise NamiError("the prompt is empty")
        if self.timestep_rounding is not None and self.timestep_rounding not in TIMESTEP_ROUNDINGS:
            raise NamiError(f"--timestep-rounding must be one of {', '.join(TIMESTEP_ROUNDINGS)}, "
                            f"got {self.timestep_rounding!r}")


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


def run_sample(req: SampleRequest, on_step: Callable[[int, int], None] | None = None,
               on_plan: Callable[[list[int]], None] | None = None) -> SampleReport:
    """Generate `req.n` images of `req.prompt`; image i has seed `req.seed + i`."""
    from .modeldir import load_pipeline, resolve_model_dir
    from .runtime import dtype_name, resolve_device, resolve_dtype
    from .text.prompt_styles import get_prompt_style

    req.validate()
    model_prompt, negative = get_prompt_style(req.prompt_style).apply(req.prompt, req.negative)
    device = resolve_device(req.device)
    dtype = resolve_dtype(req.dtype, device)
    model_dir = resolve_model_dir(req.model)

    t0 = time.perf_counter()
    pipe = load_pipeline(model_dir, device, dtype, req.attention)
    if req.compile:
        pipe.compile()
    load_seconds = time.perf_counter() - t0

    run = pipe.settings(req.mode, req.steps, req.cfg, timestep_rounding=req.timestep_rounding)
    if on_plan is not None:
        on_plan(list(run.steps))
    described = {"prompt": req.prompt, "prompt_style": req.prompt_style, "model_prompt": model_prompt,
                 "negative": negative, "model": str(model_dir), "dtype": dtype_name(req.dtype, device), **settings_record(run)}

    seeds = [req.seed + i for i in range(req.n)]
    paths = output_paths(req.out, req.prompt, seeds)
    stage_seconds = [0.0] * len(run.steps)
    metadata_all = []
    t1 = time.perf_counter()
    for start in range(0, req.n, req.batch_size):
        chunk = seeds[start : start + req.batch_size]
        out = pipe(model_prompt, negative_prompt=negative, num_images_per_prompt=len(chunk), steps=run.steps,
                   cfg=run.guidance, mode=run.plan.mode, timestep_rounding=req.timestep_rounding, seed=chunk[0],
                   callback=(lambda k, i, z: on_step(k, i)) if on_step is not None else None)
        stage_seconds = [a + b for a, b in zip(stage_seconds, out.stage_seconds)]
        for image, s, path in zip(out.images, out.seeds, paths[start : start + len(chunk)]):
            meta = {**described, "seed": s}
            save_png(image, path, meta, sidecar=True)
            metadata_all.append(meta)
    return SampleReport(paths, stage_seconds, load_seconds, time.perf_counter() - t1, metadata_all)


def settings_record(run) -> dict:
    """What a PNG records of a call's resolved `SamplingSettings`."""
    from .config import guidance_record

    return {"steps": list(run.steps), "cfg": guidance_record(run.guidance), "mode": run.plan.mode,
            "resolution": run.plan.flow.resolutions[-1], "timestep_rounding": run.scheduler.config.timestep_rounding}



def report_dict(report: SampleReport) -> dict:
    data = asdict(report)
    data["paths"] = [str(p) for p in report.paths]
    return data
