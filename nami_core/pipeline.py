"""NamiPipeline: prompt -> text encoder -> progressive sampler over the NAMI transformer -> codec -> images."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Sequence

import numpy as np
import torch
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput

# Every component class must be importable from sys.modules when diffusers loads a saved pipeline.
from .codecs import flux_vae, pixel  # noqa: F401
from .config import FlowConfig, check_mode
from .denoiser import Denoiser
from .errors import ConfigError
from .flow import scheduler  # noqa: F401
from .flow.jump import RenoiseJump
from .flow.sampler import ProgressiveSampler, initial_noise
from .flow.schedule import FlowPlan
from .interop.diffusers_registry import register_pipeline_class
from .model import transformer  # noqa: F401
from .text.encoder import TextEmbeddings


@dataclass
class NamiPipelineOutput(BaseOutput):
    """images: PIL list, float array (B, H, W, 3) in [0, 1], or latents; per-stage seconds; seeds."""

    images: list | np.ndarray | torch.Tensor
    stage_seconds: list[float]
    seeds: list[int]


class NamiPipeline(DiffusionPipeline):
    """Text-to-image with a NAMI model.

    Components: `transformer` (NamiTransformer), `scheduler` (NamiFlowScheduler: stage
    resolutions, windows, jump, defaults), `codec` (PixelCodec or FluxVAECodec),
    `text_encoder` (NamiTextEncoder) and, for bridged weights, `bridge` (BridgeJump).
    """

    model_cpu_offload_seq = "text_encoder->transformer->codec"
    _optional_components = ["bridge"]

    def __init__(self, transformer, scheduler, codec, text_encoder, bridge=None) -> None:
        super().__init__()
        self.register_modules(
            transformer=transformer, scheduler=scheduler, codec=codec, text_encoder=text_encoder, bridge=bridge
        )

    # -- planning -------------------------------------------------------------------------
    def flow_for(self, resolution: int | None) -> FlowConfig:
        """The scheduler's flow, rescaled so the last stage has side `resolution`."""
        flow = self.scheduler.flow
        if resolution is None or resolution == flow.resolutions[-1]:
            return flow
        K = flow.num_stages
        lowest = resolution / 2 ** (K - 1)
        if lowest != int(lowest):
            raise ConfigError(f"resolution {resolution} cannot be halved {K - 1} times into integer stage sides")
        return replace(flow, resolutions=tuple(int(lowest) * 2**k for k in range(K)))

    def plan(self, mode: str | None = None, resolution: int | None = None,
             timestep_rounding: str | None = None) -> FlowPlan:
        """The `FlowPlan` of `mode` at `resolution` (defaults: the model's); `timestep_rounding`
        ("none" | "fp16") overrides the scheduler's."""
        mode = check_mode(mode or self.scheduler.config.default_mode)
        flow = self.flow_for(resolution)
        if timestep_rounding is not None:
            flow = replace(flow, timestep_rounding=timestep_rounding)
        ppt = self.codec.pixels_per_token
        lowest = flow.resolutions[0] if mode != "flux-base" else flow.resolutions[-1]
        if lowest % ppt:
            raise ConfigError(
                f"stage resolution {lowest} is not a multiple of the codec's {ppt} pixels per token"
            )
        return FlowPlan(mode, flow, self.transformer.stage_ends, ppt)

    def jump_for(self, plan: FlowPlan):
        if plan.flow.jump == "bridge":
            if self.bridge is None:
                raise ConfigError("this model uses the bridge jump but has no bridge weights")
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
        emb = self.text_encoder.encode(unique)
        index = torch.tensor([unique.index(p) for p in prompts])
        return emb.select(index.to(emb.sequence.device))

    # -- sampling -------------------------------------------------------------------------
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
        float16 pipeline does (default: the scheduler's). `output_type`: "pil", "np" or "latent".
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
        plan = self.plan(mode, resolution, timestep_rounding)
        stage_steps = plan.stage_steps(steps if steps is not None else tuple(self.scheduler.config.default_steps))
        guidance = plan.stage_guidance(self.scheduler.config.default_cfg if cfg is None else cfg)

        if generator is None:
            seeds = [seed + i for i in range(batch)]
            generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
        else:
            generators = [generator] * batch if isinstance(generator, torch.Generator) else list(generator)
            if len(generators) != batch:
                raise ConfigError(f"got {len(generators)} generators for {batch} images")
            seeds = [int(g.initial_seed()) for g in generators]

        device = self._execution_device
        cond = self.encode_prompts(prompts)
        uncond = None
        if any(w != 1.0 for w in guidance):
            uncond = self.encode_prompts([negative_prompt or ""] * batch)

        full_side = plan.flow.resolutions[-1] // self.codec.downsample
        noise = initial_noise(batch, self.codec.channels, (full_side, full_side), plan, generators, device)
        sampler = ProgressiveSampler(Denoiser(self.transformer, self.codec.patch_size), plan, self.jump_for(plan))

        total = sum(stage_steps)
        with self.progress_bar(total=total) as bar:

            def on_step(stage: int, step: int, z: torch.Tensor) -> None:
                bar.update()
                if callback is not None:
                    callback(stage, step, z)

            result = sampler(cond.to(device), uncond.to(device) if uncond is not None else None,
                             noise, stage_steps, guidance, generators, on_step)

        if output_type == "latent":
            images = result.latents
        else:
            self._onload("codec")
            pixels = self.codec.decode(result.latents.to(device))
            array = ((pixels.float() + 1.0) / 2.0).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
            images = array if output_type == "np" else self.numpy_to_pil(array)
        self.maybe_free_model_hooks()
        if not return_dict:
            return images, result.stage_seconds, seeds
        return NamiPipelineOutput(images=images, stage_seconds=result.stage_seconds, seeds=seeds)


# `DiffusionPipeline.from_pretrained(dir)` resolves the saved "_class_name" on the diffusers package.
register_pipeline_class(NamiPipeline)
