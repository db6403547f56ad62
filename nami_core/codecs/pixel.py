"""Pixel-space codec for small models: the latent grid is the image itself."""

from __future__ import annotations

import torch
from diffusers.configuration_utils import register_to_config
from diffusers.models.modeling_utils import ModelMixin  # noqa: F401  (diffusers' pipeline loader looks the base class up in this module)

from ..components import ConfigOnlyComponent
from ..config import positive_int


class PixelCodec(ConfigOnlyComponent):
    """Images in [-1, 1] are the latent grid (3 channels, no downsampling); tokens are p x p patches."""

    @register_to_config
    def __init__(self, patch_size: int = 4, channels: int = 3) -> None:
        super().__init__()
        self.channels = positive_int("codec channels", channels)
        self.downsample = 1
        self.patch_size = positive_int("codec patch_size", patch_size)
        # No weights; a buffer gives the module a device and dtype for pipeline placement.
        self.register_buffer("anchor", torch.zeros(()), persistent=False)

    @property
    def pixels_per_token(self) -> int:
        return self.downsample * self.patch_size

    def encode(self, images: torch.Tensor, generator=None) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, 3, H, W)."""
        return images

    def decode(self, grid: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> images (B, 3, H, W) in [-1, 1]."""
        return grid.clamp(-1.0, 1.0)

    def describe(self) -> str:
        return f"pixel (patch {self.patch_size})"
