"""Training target for one stage window (docs/method.md §4, Algorithm 1).

For a clean grid x_k at the window's resolution and fresh unit noise eps_k:
`start = S * eps + (1 - S) * Up(Down(x_k))` (pure noise in the first window),
`end = E * eps + (1 - E) * x_k`, `x_r = r * start + (1 - r) * end`,
target `v = start - end`, timestep `tau = tau_end + r * (tau_start - tau_end)`.
`Down(x_k)` is x_{k-1}, so the start point is the previous stage's clean image upsampled.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..config import TIMESTEP_SAMPLINGS
from .pyramid import down, up
from .plan import StageWindow


@dataclass
class StageTargets:
    """x_r (B, C, h, w), velocity target (B, C, h, w), ratio r (B,), model timestep tau (B,)."""

    x_r: torch.Tensor
    velocity: torch.Tensor
    r: torch.Tensor
    tau: torch.Tensor


def sample_ratios(n: int, window: StageWindow, method: str, generator=None, device=None) -> torch.Tensor:
    """Local ratios r in (0, 1), shape (n,): uniform or logit-normal `sigmoid(N(0, 1))`,
    then the window's warp (identity except flux-base's resolution shift)."""
    if method == "uniform":
        t = torch.rand(n, generator=generator, dtype=torch.float64)
    elif method == "logit-normal":
        t = torch.sigmoid(torch.randn(n, generator=generator, dtype=torch.float64))
    else:
        raise ValueError(f"ratio sampling must be one of {', '.join(TIMESTEP_SAMPLINGS)}, got {method!r}")
    r = torch.from_numpy(np.asarray(window.warp(t.numpy())))
    return r.to(device=device, dtype=torch.float32)


def stage_targets(x: torch.Tensor, noise: torch.Tensor, r: torch.Tensor, window: StageWindow) -> StageTargets:
    """Build the training pair for window `window` from clean x (B, C, h, w), noise (B, C, h, w), r (B,)."""
    S, E = window.sigma_start, window.sigma_end
    if S < 1.0:
        start = S * noise + (1 - S) * up(down(x))
    else:
        start = noise
    end = E * noise + (1 - E) * x
    rr = r.to(x.dtype).reshape(-1, 1, 1, 1)
    x_r = rr * start + (1 - rr) * end
    return StageTargets(x_r=x_r, velocity=start - end, r=r, tau=window.tau(r))


def flow_loss(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample mean squared error, (B, ...) x2 -> (B,)."""
    return (predicted.float() - target.float()).pow(2).flatten(1).mean(1)
