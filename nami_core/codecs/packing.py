"""Latent grids <-> transformer tokens (FLUX 2x2 packing order) and rotary position ids."""

from __future__ import annotations

import torch


def pack(grid: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, (H/p)*(W/p), C*p*p), channel-major inside a patch, as FLUX."""
    b, c, h, w = grid.shape
    if h % patch or w % patch:
        raise ValueError(f"latent grid {h}x{w} is not divisible by the patch size {patch}")
    x = grid.view(b, c, h // patch, patch, w // patch, patch)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(b, (h // patch) * (w // patch), c * patch * patch)


def unpack(tokens: torch.Tensor, height: int, width: int, patch: int) -> torch.Tensor:
    """(B, (H/p)*(W/p), C*p*p) -> (B, C, H, W); inverse of `pack` for a height x width grid."""
    b, n, d = tokens.shape
    c = d // (patch * patch)
    x = tokens.view(b, height // patch, width // patch, c, patch, patch)
    return x.permute(0, 3, 1, 4, 2, 5).reshape(b, c, height, width)


def image_ids(rows: int, cols: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """Rotary ids (0, row, col) of a rows x cols token grid, shape (rows*cols, 3)."""
    ids = torch.zeros(rows, cols, 3, device=device, dtype=dtype)
    ids[..., 1] = torch.arange(rows, device=device, dtype=dtype)[:, None]
    ids[..., 2] = torch.arange(cols, device=device, dtype=dtype)[None, :]
    return ids.reshape(rows * cols, 3)


def text_ids(length: int, ordered: bool = False, device=None, dtype=torch.float32) -> torch.Tensor:
    """Rotary ids of text tokens, shape (length, 3): all zero (FLUX), or `ordered`: token k at (k, 0, 0)."""
    ids = torch.zeros(length, 3, device=device, dtype=dtype)
    if ordered:
        ids[:, 0] = torch.arange(length, device=device, dtype=dtype)
    return ids
