"""Generating with the parts of a nami model: prompt -> text encoder -> progressive sampler over the
NAMI transformer -> codec -> images.

`SamplingPipeline` holds the parts (`transformer`, `scheduler`, `codec`, `text_encoder`, `bridge`)
and generates with them. It is what `nami sample` and the benchmark generators load
(`modeldir.load_pipeline`): it imports none of diffusers' pipeline machinery, whose module imports
every model diffusers ships (docs/benchmarks.md, "Cold start"). `NamiPipeline` (`nami_core.pipeline`) is the same generation as a diffusers
`DiffusionPipeline`: `from_pretrained` / `save_pretrained`, model offload, progress bars and
diffusers' LoRA methods.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from diffusers.utils import BaseOutput

from .denoiser import Denoiser
from .errors import ConfigError, NamiError
from .flow.jump import RenoiseJump
from .flow.plan import FlowPlan, sampling_plan
from .flow.sampler import ProgressiveSampler, initial_noise
from .flow.scheduler import NamiFlowScheduler
from .text.embeddings import TextEmbeddings
from .model.peft_loading import peft_hidden

with peft_hidden():  # diffusers' `ModelMixin.device` imports its hooks, which import peft; sampling needs none
    import diffusers.hooks  # noqa: F401


@dataclass(frozen=True)
class SamplingSettings:
    """What one pipeline call runs: the `FlowPlan`, Euler steps and guidance scale per window,
    and the scheduler that lays out and steps each window's grid."""

    plan: FlowPlan
    steps: tuple[int, ...]
    guidance: tuple[float, ...]
    scheduler: NamiFlowScheduler


@dataclass
class NamiPipelineOutput(BaseOutput):
    """images: PIL list, float array (B, H, W, 3) in [0, 1], or latents; per-stage seconds; seeds."""

    images: list | np.ndarray | torch.Tensor
    stage_seconds: list[float]
    seeds: list[int]


class SamplingPipeline:
    """Text-to-image with a NAMI model's parts: `transformer` (NamiTransformer), `scheduler`
    (NamiFlowScheduler: stage resolutions, windows, jump, defaults), `codec` (PixelCodec or
    FluxVAECodec), `text_encoder` (NamiTextEncoder) and, for bridged weights, `bridge` (BridgeJump).

    The parts run where they are (`modeldir.load_pipeline` places them); there are no offload hooks
    and no progress bar of its own (`__call__`'s `callback` sees every step).
    """

    def __init__(self, transformer, scheduler, codec, text_encoder, bridge=None) -> None:
        self.transformer, self.scheduler, self.codec = transformer, scheduler, codec
        self.text_encoder, self.bridge = text_encoder, bridge

    @property
    def parts(self) -> dict:
        """The parts by name, as `NamiPipeline(**parts)` takes them."""
        return {"transformer": self.transformer, "scheduler": self.scheduler, "codec": self.codec,
                "text_encoder": self.text_encoder, "bridge": self.bridge}

    @property
    def device(self) -> torch.device:
        """The transformer's device (where `modeldir.load_pipeline` put the parts)."""
        return next(self.transformer.parameters()).device

    @property
    def _execution_device(self) -> torch.device:
        """Where sampling runs: `device` (diffusers' pipelines also follow offload hooks)."""
        return self.device

    def progress_bar(self, total: int):
        """A bar that draws nothing (callers show progress through `__call__`'s `callback`)."""
        return contextlib.nullcontext(_NoBar())

    def maybe_free_model_hooks(self) -> None:
        """No hooks to free (diffusers' pipelines release offloaded models here)."""

    # -- planning -------------------------------------------------------------------------
    def plan(self, mode: str | None = None, resolution: int | None = None, height: int | None = None,
             width: int | None = None) -> FlowPlan:
        """The `FlowPlan` of `mode` with the last stage at `resolution` (square) or `height` x
        `width` pixels (either defaults to the model's side); defaults: the model's."""
        return sampling_plan(self.scheduler.flow, self.transformer.stage_ends, self.codec.pixels_per_token,
                             mode or self.scheduler.config.default_mode, resolution, height, width)

    def settings(self, mode: str | None = None, steps=None, cfg=None, resolution: int | None = None,
                 timestep_rounding: str | None = None, height: int | None = None,
                 width: int | None = None) -> "SamplingSettings":
        """What a call with these arguments runs: the plan, steps and guidance per window, and the
        scheduler (the model's, with `timestep_rounding` overridden when given)."""
        plan = self.plan(mode, resolution, height, width)
        self.jump_for(plan)  # a size the jump cannot take is refused before any work
        config = self.scheduler.config
        scheduler = self.scheduler
        if timestep_rounding is not None and timestep_rounding != config.timestep_rounding:
            scheduler = type(self.scheduler).from_config(config, timestep_rounding=timestep_rounding)
        return SamplingSettings(
            plan=plan,
            steps=plan.stage_steps(steps if steps is not None else tuple(config.default_steps)),
            guidance=plan.stage_guidance(config.default_cfg if cfg is None else cfg),
            scheduler=scheduler,
        )

    def compile(self):
        """Compile the transformer for sampling (`model.compiled.compile_for_sampling`): static
        shapes per stage, batch and text bucket, the steps replayed as CUDA graphs on a GPU. The
        first call per stage shape pays the compile time. Returns the `CompileStats`."""
        from .model.compiled import compile_for_sampling

        return compile_for_sampling(self.transformer, self._execution_device)

    def jump_for(self, plan: FlowPlan):
        """The jump between windows: the learned bridge of a bridged model (which takes only the
        grids it was trained at), else the renoise jump of the plan."""
        if plan.flow.jump == "bridge" and len(plan) > 1:
            if self.bridge is None:
                raise ConfigError("this model uses the bridge jump but has no bridge weights")
            trained = [tuple(shift.shape[-2:]) for shift in self.bridge.shift]
            wanted = [(h // self.codec.downsample, w // self.codec.downsample) for h, w in plan.flow.sizes[1:]]
            if wanted != trained:
                side = trained[-1][0] * self.codec.downsample
                asked = "x".join(map(str, plan.flow.sizes[-1][::-1]))
                raise ConfigError(f"this model's learned bridge jump adds a fixed offset per latent grid, trained "
                                  f"at {side}x{side} only, so it cannot sample {asked}; sample at {side}x{side}")
            return self.bridge
        return RenoiseJump(plan.jumps, plan.gamma)

    # -- model offload --------------------------------------------------------------------
    def _onload(self, name: str) -> None:
        """Under `enable_model_cpu_offload`, move component `name` to the execution device (and
        offload the component before it in `model_cpu_offload_seq`) before a call that is not
        its `forward` (text encoding, decoding), which accelerate's hooks would not see.
        Without offload hooks, or for a component with no weights, this does nothing."""
        module = getattr(self, name)
        hook = getattr(module, "_hf_hook", None)
        if hook is not None and hasattr(hook, "pre_forward") and next(module.parameters(), None) is not None:
            hook.pre_forward(module)

    # -- text -----------------------------------------------------------------------------
    def encode_prompts(self, prompts: Sequence[str]) -> TextEmbeddings:
        """Encode each distinct prompt once; returns embeddings in the given order (B = len(prompts))."""
        self._onload("text_encoder")
        unique = list(dict.fromkeys(prompts))
        return self.text_encoder.encode(unique).select([unique.index(p) for p in prompts])

    # -- sampling -------------------------------------------------------------------------
    def decode(self, latents: torch.Tensor, output_type: str = "pil"):
        """Latent grids (B, C, H, W) -> PIL images, or a float array (B, H, W, 3) in [0, 1] for "np"."""
        self._onload("codec")
        pixels = self.codec.decode(latents)
        array = ((pixels.float() + 1.0) / 2.0).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
        bad = int((~np.isfinite(array).reshape(len(array), -1).all(axis=1)).sum())  # on the host copy: no extra sync
        if bad:
            raise NamiError(f"{bad} of {len(array)} sampled image(s) came out non-finite (NaN or inf pixels) and "
                            "were not written; the model's weights, a --lora scale or the guidance overflow")
        return array if output_type == "np" else to_pil(array)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | Sequence[str],
        negative_prompt: str | None = None,
        num_images_per_prompt: int = 1,
        steps: str | int | Sequence[int] | None = None,
        cfg: float | str | Sequence[float] | None = None,
        mode: str | None = None,
        resolution: int | None = None,
        timestep_rounding: str | None = None,
        seed: int = 0,
        height: int | None = None,
        width: int | None = None,
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
        output_type: str = "pil",
        callback: Callable[[int, int, torch.Tensor], None] | None = None,
        return_dict: bool = True,
    ):
        """Generate images.

        Image i uses its own generator seeded with `seed + i` (or `generator[i]`), so an
        image is reproducible from its seed whatever the batch. `steps` is per stage
        ("10,10,10") or a total split evenly; `cfg` is one guidance scale or one per stage
        ("8,3,3"). `timestep_rounding` "fp16" rounds model timesteps as the public release's
        float16 pipeline does (default: the scheduler's). `height` and `width` (pixels; either
        defaults to the model's side) give any aspect ratio whose sides halve into whole tokens in
        every stage; `resolution` a square side. `output_type`: "pil", "np" or "latent".
        `callback(stage, step, latents)` runs after every Euler step.
        """
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts:
            raise ConfigError("no prompt given")
        if num_images_per_prompt < 1:
            raise ConfigError(f"number of images must be at least 1, got {num_images_per_prompt}")
        if output_type not in ("pil", "np", "latent"):
            raise ConfigError(f"output_type must be pil, np or latent, got {output_type!r}")
        prompts = [p for p in prompts for _ in range(num_images_per_prompt)]
        batch = len(prompts)
        run = self.settings(mode, steps, cfg, resolution, timestep_rounding, height, width)
        plan = run.plan

        generators, seeds = _generators(batch, seed, generator)
        device = self._execution_device
        cond = self.encode_prompts(prompts)
        uncond = None
        if any(w != 1.0 for w in run.guidance):
            uncond = self.encode_prompts([negative_prompt or ""] * batch)

        height, width = (side // self.codec.downsample for side in plan.flow.sizes[-1])
        noise = initial_noise(batch, self.codec.channels, (height, width), plan, generators, device)
        sampler = ProgressiveSampler(Denoiser(self.transformer, self.codec.patch_size), plan, self.jump_for(plan),
                                     run.scheduler)

        total = sum(run.steps)
        with self.progress_bar(total=total) as bar:

            def on_step(stage: int, step: int, z: torch.Tensor) -> None:
                bar.update()
                if callback is not None:
                    callback(stage, step, z)

            result = sampler(cond.to(device), uncond.to(device) if uncond is not None else None,
                             noise, run.steps, run.guidance, generators, on_step)

        images = result.latents if output_type == "latent" else self.decode(result.latents.to(device), output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return images, result.stage_seconds, seeds
        return NamiPipelineOutput(images=images, stage_seconds=result.stage_seconds, seeds=seeds)


def _generators(batch: int, seed: int, generator) -> tuple[list[torch.Generator], list[int]]:
    """One CPU generator per image, seeded `seed + i`, or the given ones; and their seeds."""
    if generator is None:
        seeds = [seed + i for i in range(batch)]
        return [torch.Generator("cpu").manual_seed(s) for s in seeds], seeds
    generators = [generator] * batch if isinstance(generator, torch.Generator) else list(generator)
    if len(generators) != batch:
        raise ConfigError(f"got {len(generators)} generators for {batch} images")
    return generators, [int(g.initial_seed()) for g in generators]


class _NoBar:
    """The `progress_bar` of a `SamplingPipeline`: counts nothing."""

    def update(self, n: int = 1) -> None:
        pass


def to_pil(array: np.ndarray) -> list:
    """(B, H, W, 3) floats in [0, 1] -> B RGB PIL images (rounded to 8 bits, as diffusers' `numpy_to_pil`)."""
    from PIL import Image

    return [Image.fromarray(image) for image in (array * 255).round().astype("uint8")]
