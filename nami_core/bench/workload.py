"""What a benchmark runs: a model shape (preset or saved model directory) with random weights,
random text embeddings, and the stage resolutions for a final resolution.

Weights are random: latency and throughput depend on shapes, not on values. A preset's
latents are those of the FLUX VAE (16 channels, f8, 2x2 packing: 16 pixels per token).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import FlowConfig, ModelConfig
from ..errors import NamiError
from ..info import FLUX_VAE_PIXELS_PER_TOKEN, ModelDescription, describe_model_dir, describe_preset
from ..text.embeddings import TextEmbeddings
from .requests import DEFAULT_PRESET

FLUX_VAE_DOWNSAMPLE = 8

# The FLUX.1 autoencoder's shape (diffusers AutoencoderKL config), for timing decode with random weights.
FLUX_VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4,
    block_out_channels=[128, 256, 512, 512],
    layers_per_block=2,
    act_fn="silu",
    latent_channels=16,
    norm_num_groups=32,
    sample_size=1024,
    scaling_factor=0.3611,
    shift_factor=0.1159,
    use_quant_conv=False,
    use_post_quant_conv=False,
    force_upcast=True,
    mid_block_add_attention=True,
)


@dataclass(frozen=True)
class BenchModel:
    """A model shape and its latent layout.

    `downsample` pixels per latent cell, `patch` latent cells per token side, so a token
    covers `downsample * patch` pixels; the latent grid has `model.in_channels / patch^2`
    channels. `model_dir` is set when the shape came from a saved model directory.
    """

    description: ModelDescription
    downsample: int
    patch: int
    model_dir: Path | None = None

    @property
    def name(self) -> str:
        return self.description.name

    @property
    def model(self) -> ModelConfig:
        return self.description.model

    @property
    def pixels_per_token(self) -> int:
        return self.downsample * self.patch

    @property
    def channels(self) -> int:
        return self.model.in_channels // (self.patch * self.patch)

    @property
    def num_stages(self) -> int:
        return self.description.flow.num_stages

    def flow(self, final: int) -> FlowConfig:
        """The model's flow (window ratios, gamma, grid) at the stage resolutions ending at `final`,
        each half the next; `FlowPlan` checks that every stage is a whole number of tokens."""
        return self.description.flow.ending_at(final)

    def image_tokens(self, resolution: int) -> int:
        return (resolution // self.pixels_per_token) ** 2


def load_bench_model(preset: str | None, model_dir: str | Path | None) -> BenchModel:
    """The model shape of `--preset` or `--model` (configs only, no weights are read)."""
    if preset and model_dir:
        raise NamiError("give --preset or --model, not both")
    if model_dir is None:
        return BenchModel(describe_preset(preset or DEFAULT_PRESET), FLUX_VAE_DOWNSAMPLE,
                          FLUX_VAE_PIXELS_PER_TOKEN // FLUX_VAE_DOWNSAMPLE)
    root = Path(model_dir)
    desc = describe_model_dir(root)
    codec = json.loads((root / "codec" / "config.json").read_text())
    downsample = 1 if codec.get("_class_name") == "PixelCodec" else FLUX_VAE_DOWNSAMPLE
    return BenchModel(desc, downsample, desc.pixels_per_token // downsample, root)


def random_transformer(model: ModelConfig, device: torch.device, dtype: torch.dtype, seed: int = 0):
    """A `NamiTransformer` of shape `model` with random weights, built directly on `device`."""
    from ..model.transformer import NamiTransformer

    torch.manual_seed(seed)
    with torch.device(device):
        transformer = NamiTransformer.from_model_config(model)
    return place(transformer, device, dtype).eval()


def place(module, device: torch.device, dtype: torch.dtype):
    """`module.to(device, dtype)` without diffusers' warning about casting a model loaded without torch_dtype."""
    from diffusers.utils import logging as dlogging

    level = dlogging.get_verbosity()
    dlogging.set_verbosity_error()
    try:
        return module.to(device=device, dtype=dtype)
    finally:
        dlogging.set_verbosity(level)


def random_text(model: ModelConfig, batch: int, tokens: int, device: torch.device,
                real_tokens: int | None = None, seed: int = 0) -> TextEmbeddings:
    """Random text conditioning as a tokenizer pads it: sequence (batch, tokens, text_dim) whose
    first `real_tokens` (default: all) are real and the rest padding, mask (batch, tokens),
    pooled (batch, pooled_dim); the lengths are known on the host."""
    if tokens < 1:
        raise NamiError(f"--text-tokens must be at least 1, got {tokens}")
    real = tokens if real_tokens is None else real_tokens
    if not 1 <= real <= tokens:
        raise NamiError(f"--prompt-tokens must be between 1 and --text-tokens ({tokens}), got {real}")
    g = torch.Generator().manual_seed(seed)
    mask = (torch.arange(tokens) < real).expand(batch, tokens)
    return TextEmbeddings.from_host_mask(
        torch.randn(batch, tokens, model.text_dim, generator=g), mask.clone(),
        torch.randn(batch, model.pooled_dim, generator=g),
    ).to(device)


def load_component(model_dir: Path, name: str):
    """One component (`codec`, `text_encoder`) of a saved model directory, via its model_index.json class."""
    import importlib

    from ..modeldir import quiet_loading

    index_path = model_dir / "model_index.json"
    if not index_path.is_file():
        raise NamiError(f"{model_dir} is not a nami model directory (no model_index.json)")
    entry = json.loads(index_path.read_text()).get(name)
    if not entry or entry[0] is None:
        raise NamiError(f"model directory {model_dir} has no {name}")
    quiet_loading()
    cls = getattr(importlib.import_module(entry[0]), entry[1])
    return cls.from_pretrained(model_dir, subfolder=name)


def random_flux_vae_codec():
    """A FLUX-sized VAE codec (84M parameters) with random weights, for timing decode."""
    from ..codecs.flux_vae import FluxVAECodec

    torch.manual_seed(0)
    return FluxVAECodec(vae_config=FLUX_VAE_CONFIG).eval()
