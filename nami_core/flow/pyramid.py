"""Resolution pyramid operators on latent grids (B, C, H, W) (docs/method.md §1, §4, §5)."""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F


def down(x: torch.Tensor) -> torch.Tensor:
    """Bilinear 1/2, i.e. the exact 2x2 average. (B, C, H, W) -> (B, C, H/2, W/2)."""
    return F.avg_pool2d(x, kernel_size=2, stride=2)


def up(x: torch.Tensor) -> torch.Tensor:
    """Nearest x2. (B, C, H, W) -> (B, C, 2H, 2W)."""
    return x.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)


def down_to(x: torch.Tensor, side: int) -> torch.Tensor:
    """Apply `down` until the grid height is `side`, keeping the aspect ratio (a non-square grid
    halves both sides): (B, C, H, W) -> (B, C, side, side*W/H). Raises ValueError when a side
    would not halve exactly."""
    shape = tuple(x.shape)
    while x.shape[-2] > side:
        if x.shape[-2] % 2 or x.shape[-1] % 2:
            raise ValueError(f"cannot reach side {side} from {shape} by halving")
        x = down(x)
    if x.shape[-2] != side:
        raise ValueError(f"cannot reach side {side} from {shape} by halving")
    return x


def noise_down(eps: torch.Tensor) -> torch.Tensor:
    """One level of the noise pyramid, `2 * Down(eps)`: keeps unit variance."""
    return 2.0 * down(eps)


def noise_pyramid(eps_full: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """Noise at every level, lowest first: `eps_k = 2 * Down(eps_{k+1})`. Shapes (B, C, H/2^j, W/2^j)."""
    pyramid = [eps_full]
    for _ in range(levels - 1):
        pyramid.append(noise_down(pyramid[-1]))
    return pyramid[::-1]


def randn(shape: Sequence[int], generators: Sequence[torch.Generator] | None, device, dtype=torch.float32):
    """Standard normal noise of `shape` (B, ...), drawn per item from its own generator.

    One generator per batch item makes each image reproducible from its seed alone.
    Noise is drawn on the CPU in float32 and then moved, so a seed gives the same
    image on any device.
    """
    if generators is None:
        return torch.randn(tuple(shape), dtype=torch.float32).to(device=device, dtype=dtype)
    if len(generators) != shape[0]:
        raise ValueError(f"need one generator per batch item: {len(generators)} for batch {shape[0]}")
    items = [torch.randn(tuple(shape[1:]), generator=g, dtype=torch.float32) for g in generators]
    return torch.stack(items).to(device=device, dtype=dtype)


def block_noise(shape: Sequence[int], gamma: float, generators, device, dtype=torch.float32) -> torch.Tensor:
    """Renoise noise eta (docs/method.md §5), shape (B, C, H, W) with even H, W.

    Independent across 2x2 blocks, covariance `(1 + gamma) I - gamma 11^T` inside a block:
    `eta = sqrt(1 + gamma) * (xi - Up(Down(xi))) + sqrt(1 - 3 gamma) * Up(Down(xi))`,
    which for gamma = 1/3 is `sqrt(4/3) * (xi - Up(Down(xi)))`.
    """
    xi = randn(shape, generators, device, torch.float32)
    mean = up(down(xi))
    eta = math.sqrt(1.0 + gamma) * (xi - mean)
    rest = 1.0 - 3.0 * gamma
    if rest > 1e-12:
        eta = eta + math.sqrt(rest) * mean
    return eta.to(dtype)
