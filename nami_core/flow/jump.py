"""Jumps between consecutive stage windows (docs/method.md §5).

A jump takes the state at the end of window k, a latent grid (B, C, h, w), to the
start of window k + 1, a grid (B, C, 2h, 2w).
"""

from __future__ import annotations

from typing import Sequence

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from .pyramid import block_noise, up


class RenoiseJump:
    """`z <- alpha_k * Up(z) + beta_k * eta` with block-correlated noise eta (paper v1, Pyramid Flow).

    After the jump the state sits at sigma = S_{k+1}, matching the training start point
    of window k + 1 in distribution.
    """

    def __init__(self, coefficients: Sequence[tuple[float, float]], gamma: float) -> None:
        self.coefficients = list(coefficients)
        self.gamma = float(gamma)

    def __call__(self, z: torch.Tensor, k: int, generators=None) -> torch.Tensor:
        alpha, beta = self.coefficients[k]
        z = up(z)
        eta = block_noise(z.shape, self.gamma, generators, z.device, torch.float32)
        return (alpha * z.float() + beta * eta).to(z.dtype)


class BridgeJump(ModelMixin, ConfigMixin):
    """Learned jump: `z <- scale_k * Up(z) + shift_k`, no renoise (the public "bridged" release).

    `scale` holds one scalar per transition, shape (K-1,); `shift[k]` has the next
    stage's latent shape (1, C, H_{k+1}, W_{k+1}).
    """

    config_name = "config.json"

    @register_to_config
    def __init__(self, channels: int = 16, sides: Sequence[int] = (64, 128)) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(len(sides)))
        self.shift = nn.ParameterList([nn.Parameter(torch.zeros(1, channels, s, s)) for s in sides])

    def forward(self, z: torch.Tensor, k: int, generators=None) -> torch.Tensor:
        shift = self.shift[k]
        z_up = up(z)
        if z_up.shape[-2:] != shift.shape[-2:]:
            raise ValueError(
                f"bridge jump {k} expects a {tuple(shift.shape[-2:])} grid after upsampling, "
                f"got {tuple(z_up.shape[-2:])}"
            )
        return self.scale[k].to(z.dtype) * z_up + shift.to(z.dtype)
