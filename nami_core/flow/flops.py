"""Analytic FLOP model of the transformer (linear layers and attention), along a stage plan, shared by `nami info` and `nami bench`.

One multiply-add counts as 2 FLOPs. Per forward pass with N image tokens and T text
tokens at width D (MLP ratio 4):

* every double- or single-stream block: `24 D^2 (N + T)` for its token-wise linears
  plus `4 D (N + T)^2` for attention (QK^T and AV), plus its AdaLN modulation;
* embedders (image, text, timestep, pooled text) and the final norm/projection.

Norms, activations, rotary embedding and the Euler update are not counted.
"""

from __future__ import annotations

from ..config import ModelConfig
from .plan import FlowPlan

TIMESTEP_CHANNELS = 256


def embed_flops(model: ModelConfig, image_tokens: int, text_tokens: int) -> float:
    D = model.width
    x_embed = 2 * image_tokens * model.in_channels * D
    context = 2 * text_tokens * model.text_dim * D
    timestep = 2 * (TIMESTEP_CHANNELS * D + D * D)
    pooled = 2 * (model.pooled_dim * D + D * D)
    final = 2 * D * 2 * D + 2 * image_tokens * D * model.in_channels
    return float(x_embed + context + timestep + pooled + final)


def block_flops(model: ModelConfig, index: int, image_tokens: int, text_tokens: int) -> float:
    """FLOPs of block `index` of the ordered list [double..., single...] for one forward."""
    D = model.width
    L = image_tokens + text_tokens
    modulation = 2 * (2 * D * 6 * D) if index < model.double_blocks else 2 * D * 3 * D
    return float(modulation + 24 * D * D * L + 4 * D * L * L)


def forward_flops(model: ModelConfig, image_tokens: int, text_tokens: int, blocks: int) -> float:
    """One forward pass (batch 1) running the first `blocks` blocks."""
    total = embed_flops(model, image_tokens, text_tokens)
    for i in range(blocks):
        total += block_flops(model, i, image_tokens, text_tokens)
    return total


def plan_flops(model: ModelConfig, plan: FlowPlan, steps: tuple[int, ...], text_tokens: int) -> float:
    """Forward FLOPs per image for a whole sampling run (one forward per Euler step)."""
    total = 0.0
    for window, n in zip(plan, steps):
        tokens = window.tokens(plan.pixels_per_token)
        total += n * forward_flops(model, tokens, text_tokens, window.blocks)
    return total
