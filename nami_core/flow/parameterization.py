"""What the network predicts, converted to the velocity `v = start_k - end_k` of docs/method.md §4.

Inside window k (start sigma S, end sigma E), for clean x_k at the window's resolution,
`x_r = a * eps + b * Up(Down(x_k)) + c * x_k` with
`a = r*S + (1-r)*E`, `b = r*(1-S)`, `c = (1-r)*(1-E)`.
A network that predicts x_k ("sample") therefore gives eps, and from it
`v = (S - E) * eps + (1 - S) * Up(Down(x_k)) - (1 - E) * x_k` exactly. The noise
coefficient `a` reaches 0 at the very end of the last window, so it is clamped.
"""

from __future__ import annotations

import torch

from .pyramid import down, up
from .plan import StageWindow

MIN_NOISE = 0.05


def _per_item(r: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return r.to(like.dtype).reshape(-1, *([1] * (like.ndim - 1)))


def velocity_from_sample(
    x_hat: torch.Tensor, x_r: torch.Tensor, r: torch.Tensor, window: StageWindow, min_noise: float = MIN_NOISE
) -> torch.Tensor:
    """Predicted clean grid x_hat (B, C, h, w), state x_r (B, C, h, w), ratios r (B,) -> velocity (B, C, h, w)."""
    S, E = window.sigma_start, window.sigma_end
    r = _per_item(r, x_r)
    a = (r * S + (1 - r) * E).clamp_min(min_noise)
    c = (1 - r) * (1 - E)
    if S < 1.0:
        ud = up(down(x_hat))
        eps = (x_r - r * (1 - S) * ud - c * x_hat) / a
        return (S - E) * eps + (1 - S) * ud - (1 - E) * x_hat
    eps = (x_r - c * x_hat) / a
    return (S - E) * eps - (1 - E) * x_hat


def to_velocity(
    output: torch.Tensor, x_r: torch.Tensor, r: torch.Tensor, window: StageWindow, prediction: str
) -> torch.Tensor:
    """Network output (B, C, h, w) -> velocity (B, C, h, w) for either prediction type."""
    if prediction == "velocity":
        return output
    if prediction == "sample":
        return velocity_from_sample(output, x_r, r, window)
    raise ValueError(f"unknown prediction type {prediction!r}")
