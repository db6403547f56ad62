"""Validation images during training (`--validation-prompt`, `--validation-prompts FILE`,
`--validation-every N`, `--validation-seed S`).

Every N steps, and at the run's last step, the main process draws each prompt once with the
weights `nami sample` would use (the EMA when the run keeps one, else the raw weights), with the
run's default steps and guidance (`--sample-steps`, `--sample-cfg`; under `--lora`, the frozen
model's own, which the adapter samples with): prompt i with seed S + i, so `nami sample PROMPT
--seed S+i --model RUN/final` (`--model MODEL --lora RUN/final/ema` for an adapter) draws the same
picture from the final weights.
The grid, prompt and seed under each tile, is written to `RUN/samples/step-N.png` and logged to the
trackers of `--report-to`. The pipeline is the one a model directory loads (`export.pipeline_parts`:
the data's text encoder and codec, the run's flow) around the live transformer.

Drawing leaves training exactly as it was: the EMA is swapped into the weights and back (an exact
exchange), the global random streams are restored afterwards (the images take their noise from
their own seeded generators), and batches never depend on them. On several processes only the
main one draws; the others wait, and an error there stops every process (`ranks.on_any_rank`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

FOLDER = "samples"
BATCH = 8  # prompts drawn at once


def grid_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / FOLDER / f"step-{step}.png"


class Validation:
    """What a run draws for validation, when, and the pipeline parts it draws with (built once)."""

    def __init__(self, settings, plan, manifest: dict, patch: int) -> None:
        self.prompts = settings.validation_prompt_list()
        self.every = settings.validation_interval
        self.seed = settings.validation_seed or 0
        self.last = settings.steps
        self.run_dir = Path(settings.out)
        self._recipe = (plan, manifest, patch, settings.mode, settings.sample_steps, settings.sample_cfg)
        self._base_model = Path(settings.init) if settings.lora else None  # an adapter samples as its model
        self._parts = None

    @property
    def enabled(self) -> bool:
        return bool(self.prompts)

    def due(self, step: int) -> bool:
        """Whether the run draws after optimizer step `step` (counted from 1)."""
        return self.enabled and (step % self.every == 0 or step == self.last)

    def seeds(self) -> list[int]:
        return [self.seed + i for i in range(len(self.prompts))]

    def pipeline(self, transformer, device):
        """A `SamplingPipeline` around `transformer` with the run's scheduler, codec and text encoder."""
        from ..sampling_pipeline import SamplingPipeline
        from .export import pipeline_parts

        if self._parts is None:
            scheduler, codec, encoder = pipeline_parts(*self._recipe)
            if self._base_model is not None:
                scheduler = type(scheduler).from_pretrained(self._base_model / "scheduler")
            encoder.load_models()
            self._parts = (scheduler, codec.to(device), encoder.to(device))
        return SamplingPipeline(transformer, *self._parts)

    def draw(self, transformer, device) -> list:
        """One PIL image per prompt, prompt i with seed `seed + i`, the model's default steps and
        guidance; `BATCH` prompts at a time."""
        pipe = self.pipeline(transformer, device)
        images = []
        for start in range(0, len(self.prompts), BATCH):
            images += pipe(self.prompts[start:start + BATCH], seed=self.seed + start).images
        return images

    def write(self, step: int, images: Sequence) -> tuple[Path, object]:
        """The grid of `images` (prompt and seed under each) at `RUN/samples/step-N.png`; (path, grid)."""
        from ..grid import image_grid
        from ..png import save_png

        seeds = self.seeds()
        grid = image_grid(images, [f"{p}\nseed {s}" for p, s in zip(self.prompts, seeds)])
        path = grid_path(self.run_dir, step)
        save_png(grid, path, {"step": step, "prompts": self.prompts, "seeds": seeds})
        return path, grid


def log_grid(trackers: Sequence, grid, step: int) -> None:
    """Hand the grid to each accelerate tracker as it takes images (TensorBoard: an NHWC array)."""
    import numpy as np

    for tracker in trackers:
        if tracker.name == "tensorboard":
            tracker.log_images({"validation": np.asarray(grid)[None]}, step=step, dataformats="NHWC")
        else:
            tracker.log_images({"validation": [grid]}, step=step)
