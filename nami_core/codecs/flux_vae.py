"""FLUX VAE codec: diffusers AutoencoderKL, 16 channels, f8, latents normalised and 2x2 packed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin

from ..config import positive_int
from ..errors import NamiError


class FluxVAECodec(ModelMixin, ConfigMixin):
    """`z = (vae_latent - shift_factor) * scaling_factor`; tokens are 2x2 patches of z (docs/method.md §1)."""

    config_name = "config.json"

    @register_to_config
    def __init__(self, vae_config: dict[str, Any] | None = None, patch_size: int = 2) -> None:
        super().__init__()
        from diffusers import AutoencoderKL  # imported on use: pixel-space models never pay for it

        self.vae = AutoencoderKL.from_config(dict(vae_config or {}))
        cfg = self.vae.config
        self.channels = int(cfg.latent_channels)
        self.downsample = 2 ** (len(cfg.block_out_channels) - 1)
        self.patch_size = positive_int("codec patch_size", patch_size)
        self.scaling_factor = float(cfg.scaling_factor)
        self.shift_factor = float(cfg.shift_factor or 0.0)

    @classmethod
    def from_vae(cls, vae, patch_size: int = 2) -> "FluxVAECodec":
        """Wrap a loaded diffusers `AutoencoderKL`."""
        config = {k: v for k, v in vae.config.items() if not k.startswith("_")}
        codec = cls(vae_config=config, patch_size=patch_size)
        codec.vae.load_state_dict(vae.state_dict())
        return codec

    @classmethod
    def from_vae_path(cls, path: str | Path, patch_size: int = 2) -> "FluxVAECodec":
        path = Path(path)
        if not (path / "config.json").is_file():
            raise NamiError(f"no diffusers AutoencoderKL at {path} (missing config.json)")
        from diffusers import AutoencoderKL

        try:
            vae = AutoencoderKL.from_pretrained(path)
        except (OSError, ValueError, RuntimeError) as exc:
            raise NamiError(f"cannot load the VAE from {path}: {str(exc).splitlines()[0]}") from None
        return cls.from_vae(vae, patch_size)

    @property
    def pixels_per_token(self) -> int:
        return self.downsample * self.patch_size

    def encode(self, images: torch.Tensor, generator=None) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> normalised latent grid (B, 16, H/8, W/8) (posterior mode)."""
        dist = self.vae.encode(images.to(self.vae.dtype)).latent_dist
        latent = dist.mode()
        return (latent - self.shift_factor) * self.scaling_factor

    def decode(self, grid: torch.Tensor) -> torch.Tensor:
        """(B, 16, h, w) normalised latents -> images (B, 3, 8h, 8w) in [-1, 1]."""
        latent = grid.to(self.vae.dtype) / self.scaling_factor + self.shift_factor
        return self.vae.decode(latent).sample.clamp(-1.0, 1.0)

    def describe(self) -> str:
        return f"flux-vae ({self.channels} ch, f{self.downsample}, patch {self.patch_size})"
