"""The blocks of a `NamiTransformer`: the modules of diffusers' FLUX blocks (`FluxTransformerBlock`,
`FluxSingleTransformerBlock`: the same names and shapes, so the same state-dict keys and LoRA
targets), built from diffusers' layers (`AdaLayerNormZero`, `FeedForward`) and `JointAttention`,
with a forward of our own that dispatches fewer operations.

* Modulation: every AdaLN of a step reads `silu(temb)`; the transformer computes it once per step
  (`act`) instead of once per AdaLN. `norm(x) * (1 + scale) + shift` and the gated residuals
  `x + gate * y` are one `addcmul` each.
* Single-stream blocks take and return the joint (B, T + N, D) sequence, so consecutive single
  blocks neither concatenate nor split text and image tokens, and every block gets contiguous input.
* Attention: `RaggedAttnProcessor` called directly (no keyword inspection per call), q and k
  normalised and rotated together (`ragged_attention.norm_rope`).

Results equal diffusers' blocks within float rounding (tests/test_transformer.py runs both).
"""

from __future__ import annotations

import torch

from diffusers.models.attention import FeedForward
from diffusers.models.normalization import AdaLayerNormZero, AdaLayerNormZeroSingle
from torch import nn

from .joint_attention import JointAttention
from .ragged_attention import JointLayout, RaggedAttnProcessor

Rotary = tuple[torch.Tensor, torch.Tensor]


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """AdaLN modulation of x (B, L, D) by shift and scale (B, 1, D): x * (1 + scale) + shift."""
    return torch.addcmul(shift, x, 1 + scale)


def feed_forward(ff, x: torch.Tensor) -> torch.Tensor:
    """diffusers' `FeedForward` (GELU projection, dropout with p = 0, output linear) without its dropout."""
    return ff.net[2](ff.net[0](x))


class DoubleStreamBlock(nn.Module):
    """FLUX double-stream block of width `dim`: text and image streams with their own weights
    (AdaLN-zero modulation, MLP), joint attention."""

    def __init__(self, dim: int, num_attention_heads: int, attention_head_dim: int) -> None:
        super().__init__()
        self.norm1 = AdaLayerNormZero(dim)
        self.norm1_context = AdaLayerNormZero(dim)
        self.attn = JointAttention(dim, num_attention_heads, attention_head_dim, RaggedAttnProcessor(),
                                   text_projections=True)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.ff = FeedForward(dim=dim, dim_out=dim, activation_fn="gelu-approximate")
        self.norm2_context = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.ff_context = FeedForward(dim=dim, dim_out=dim, activation_fn="gelu-approximate")

    def forward(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor, act: torch.Tensor,
                rotary: Rotary, layout: JointLayout | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Image tokens (B, N, D), text tokens (B, T, D), act = silu(temb) (B, D), the stage's rotary
        tables and joint layout -> (text (B, T, D), image (B, N, D))."""
        image_mod = self.norm1.linear(act)[:, None].chunk(6, dim=-1)  # shift, scale, gate: attention, MLP
        text_mod = self.norm1_context.linear(act)[:, None].chunk(6, dim=-1)
        image_attn, text_attn = self.attn.processor(
            self.attn, modulate(self.norm1.norm(hidden_states), image_mod[0], image_mod[1]),
            modulate(self.norm1_context.norm(encoder_hidden_states), text_mod[0], text_mod[1]),
            image_rotary_emb=rotary, layout=layout)
        hidden_states = self._stream(hidden_states, image_attn, image_mod, self.norm2, self.ff)
        encoder_hidden_states = self._stream(encoder_hidden_states, text_attn, text_mod, self.norm2_context,
                                             self.ff_context)
        if encoder_hidden_states.dtype == torch.float16:
            encoder_hidden_states = encoder_hidden_states.clip(-65504, 65504)
        return encoder_hidden_states, hidden_states

    @staticmethod
    def _stream(x: torch.Tensor, attention: torch.Tensor, mod, norm, ff) -> torch.Tensor:
        """One stream after attention: gated residual, modulated MLP, gated residual."""
        x = torch.addcmul(x, mod[2], attention)
        return torch.addcmul(x, mod[5], feed_forward(ff, modulate(norm(x), mod[3], mod[4])))


class SingleStreamBlock(nn.Module):
    """FLUX single-stream block of width `dim` over the joint [text, image] sequence: attention and
    an MLP of 4 x `dim` side by side, mixed by one output projection."""

    def __init__(self, dim: int, num_attention_heads: int, attention_head_dim: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.mlp_hidden_dim = int(dim * mlp_ratio)
        self.norm = AdaLayerNormZeroSingle(dim)
        self.proj_mlp = nn.Linear(dim, self.mlp_hidden_dim)
        self.act_mlp = nn.GELU(approximate="tanh")
        self.proj_out = nn.Linear(dim + self.mlp_hidden_dim, dim)
        self.attn = JointAttention(dim, num_attention_heads, attention_head_dim, RaggedAttnProcessor(), pre_only=True)

    def forward(self, joint: torch.Tensor, act: torch.Tensor, rotary: Rotary,
                layout: JointLayout | None = None) -> torch.Tensor:
        """Joint tokens (B, T + N, D), act = silu(temb) (B, D) -> joint tokens (B, T + N, D)."""
        shift, scale, gate = self.norm.linear(act)[:, None].chunk(3, dim=-1)
        x = modulate(self.norm.norm(joint), shift, scale)
        mlp = self.act_mlp(self.proj_mlp(x))
        attention = self.attn.processor(self.attn, x, image_rotary_emb=rotary, layout=layout)
        out = torch.addcmul(joint, gate, self.proj_out(torch.cat([attention, mlp], dim=2)))
        return out.clip(-65504, 65504) if out.dtype == torch.float16 else out
