"""Generating benchmark images with a nami model: one seed rule for every benchmark.

Image j of prompt i gets seed `seed + i * per_prompt + j`, whatever the batch size, so any image
of any benchmark can be regenerated alone with `nami sample PROMPT --seed S`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

from ..config import (DEVICES, DTYPE_CHOICES, MAX_BATCH_SIZE, MAX_SEED, check_fields, guidance_record, guidance_scales, one_of,
                      step_counts, within)
from ..errors import NamiError
from ..flow.saved import check_sampling
from ..input_paths import MODEL, check_reads, reads
from ..model_paths import resolve_model_dir

MAX_IMAGES_PER_PROMPT = 1000  # images of one prompt in a benchmark (GenEval: 4, DPG-Bench: 4)


def image_seed(seed: int, prompt_index: int, image_index: int, per_prompt: int) -> int:
    return seed + prompt_index * per_prompt + image_index


@dataclass
class Generated:
    """One generated image: prompt `index`, image `j` of that prompt, its seed, and the PIL image."""

    index: int
    j: int
    seed: int
    image: object


@dataclass(kw_only=True)
class GenerationSettings:
    """How a benchmark's images are made (`nami eval geneval | dpg | nami1k generate`), checked at
    construction before any model loads: image j of prompt i has seed `seed + i * images_per_prompt + j`."""

    model: str | None = field(default=None, metadata={**reads(MODEL), "shown": "the bundled model"})
    steps: str | None = field(default=None, metadata={"shown": "the model's"})
    cfg: str | None = field(default=None, metadata={"shown": "the model's"})
    device: str = field(default="auto", metadata=one_of(DEVICES))
    dtype: str = field(default="auto", metadata=one_of(DTYPE_CHOICES))
    batch_size: int = field(default=8, metadata=within(1, MAX_BATCH_SIZE))
    seed: int = 0
    images_per_prompt: int = field(default=1, metadata=within(1, MAX_IMAGES_PER_PROMPT))

    def __post_init__(self) -> None:
        check_fields(self)
        if self.cfg is not None:
            guidance_scales(self.cfg, "--cfg")
        if self.steps is not None:
            step_counts(self.steps, "--steps")

    def check_inputs(self) -> None:
        """What the run reads, before anything loads (`input_paths`), and the steps and guidance
        against the model's configs (`flow.saved.check_sampling`)."""
        check_reads(self)
        if self.generating():
            check_sampling(resolve_model_dir(self.model), steps=self.steps, cfg=self.cfg)

    def generating(self) -> bool:
        """Whether the run generates images (a benchmark that scores images already made does not)."""
        return True

    def inputs(self) -> dict[str, Any]:
        """The inputs by option: an output may not be, hold or lie inside any of them (`output_targets`)."""
        return {"--model": self.model}

    def generator(self) -> "Generator":
        """Load the model with these settings (imports torch)."""
        return Generator(self.model, self.device, self.steps, self.cfg, self.dtype)


class Generator:
    """A loaded model (`SamplingPipeline`, or a `NamiPipeline` with `loras` applied: each
    `ADAPTER[:SCALE]`) with the steps and guidance every image of a run uses."""

    def __init__(self, model: str | None, device: str = "auto", steps: str | None = None,
                 cfg: str | float | None = None, dtype: str = "auto", loras: Sequence[str] = ()) -> None:
        from ..model.lora import apply_loras
        from ..modeldir import load_pipeline
        from ..runtime import dtype_name, resolve_device, resolve_dtype

        if cfg is not None:
            guidance_scales(cfg, "--cfg")
        self.model_name = str(model or "default")
        resolved = resolve_device(device)
        self.dtype = dtype_name(dtype, resolved)
        self.pipe = load_pipeline(model, resolved, resolve_dtype(self.dtype), diffusers_pipeline=bool(loras))
        apply_loras(self.pipe, list(loras))
        run = self.pipe.settings(steps=steps, cfg=cfg)
        self.stage_steps, self.guidance = run.steps, run.guidance

    def info(self, prompt: str, seed: int, **extra) -> dict:
        """What a PNG's "nami" chunk records about its generation."""
        return {"prompt": prompt, "seed": seed, "steps": list(self.stage_steps), "cfg": guidance_record(self.guidance),
                "model": self.model_name, "dtype": self.dtype, **extra}

    def images(self, prompts: Sequence[str], per_prompt: int, seed: int, batch_size: int) -> Iterator[Generated]:
        """Every image of every prompt, in order (prompt-major), `batch_size` images per model call."""
        last = image_seed(seed, len(prompts) - 1, per_prompt - 1, per_prompt)
        if last > MAX_SEED:
            raise NamiError(f"--seed {seed} gives the last image the seed {last}, beyond the largest seed {MAX_SEED}")
        per_call = max(1, batch_size // per_prompt)
        for first in range(0, len(prompts), per_call):
            chunk = list(prompts[first:first + per_call])
            result = self.pipe(chunk, num_images_per_prompt=per_prompt, seed=image_seed(seed, first, 0, per_prompt),
                               steps=self.stage_steps, cfg=self.guidance)
            for k, image in enumerate(result.images):
                index, j = first + k // per_prompt, k % per_prompt
                yield Generated(index, j, image_seed(seed, index, j, per_prompt), image)
