"""Parameter counts of a NAMI transformer from its config alone (no torch, no weights).

They mirror diffusers' FLUX modules exactly; tests check them against built models.
"""

from __future__ import annotations

from ..config import ModelConfig

TIMESTEP_CHANNELS = 256


def shared_params(model: ModelConfig) -> int:
    """Embedders (image, text, timestep, pooled) and the final norm/projection."""
    D = model.width
    x_embed = model.in_channels * D + D
    context = model.text_dim * D + D
    timestep = TIMESTEP_CHANNELS * D + D + D * D + D
    pooled = model.pooled_dim * D + D + D * D + D
    final = 2 * D * D + 2 * D + D * model.in_channels + model.in_channels
    return x_embed + context + timestep + pooled + final


def double_block_params(model: ModelConfig) -> int:
    """Two AdaLN-Zero (6D), joint attention with separate text weights, two MLPs (4D), four QK norms."""
    D, hd = model.width, model.head_dim
    return 36 * D * D + 30 * D + 4 * hd


def single_block_params(model: ModelConfig) -> int:
    """AdaLN-Zero (3D), fused attention + MLP branch with one output projection, two QK norms."""
    D, hd = model.width, model.head_dim
    return 15 * D * D + 11 * D + 2 * hd


def block_params(model: ModelConfig) -> list[int]:
    """Parameters of each block of the ordered list [double..., single...]."""
    return [double_block_params(model)] * model.double_blocks + [single_block_params(model)] * model.single_blocks


def count_parameters(model: ModelConfig) -> tuple[int, list[int]]:
    """(total parameters, per-block parameters)."""
    blocks = block_params(model)
    return shared_params(model) + sum(blocks), blocks
