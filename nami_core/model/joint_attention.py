"""The attention module of a FLUX block: its projections and q/k norms, and the rotary tables.

`JointAttention` holds the parameters diffusers' `FluxAttention` holds, under the same names and
shapes (`to_q`, `norm_q`, `to_out.0`, `add_q_proj`, `norm_added_q`, `to_add_out`, ...), so a FLUX
state dict, the public NAMI checkpoint and LoRA adapters made for FLUX apply unchanged
(tests/test_transformer.py loads one into the other). It is built from diffusers'
`AttentionModuleMixin` (processors, the dispatcher's `set_attention_backend`, `fuse_projections`)
and torch layers, not imported from `diffusers.models.transformers`: importing that package imports
every transformer diffusers ships, about a second of a cold `nami sample` (docs/benchmarks.md,
"Cold start"). What it computes is its processor's (`ragged_attention.RaggedAttnProcessor`).

`RotaryEmbedding` gives the (cos, sin) tables of FLUX's axial rotary embedding for a list of
position ids, with diffusers' `get_1d_rotary_pos_embed` per axis, as `FluxPosEmbed` does.
"""

from __future__ import annotations

from typing import Sequence

import torch
from diffusers.models.attention import AttentionModuleMixin
from diffusers.models.embeddings import get_1d_rotary_pos_embed
from diffusers.utils.torch_utils import maybe_adjust_dtype_for_device
from torch import nn


class JointAttention(nn.Module, AttentionModuleMixin):
    """FLUX attention over `heads` heads of `head_dim`: q/k/v projections of width `dim` with
    RMS norms of q and k (eps 1e-6); a double-stream block's (`text_projections`) adds the text
    stream's projections, norms and output projection; a single-stream block's (`pre_only`) has
    no output projection (the block's `proj_out` mixes attention and MLP). `processor` computes
    the attention."""

    def __init__(self, dim: int, heads: int, head_dim: int, processor, text_projections: bool = False,
                 pre_only: bool = False, eps: float = 1e-6) -> None:
        super().__init__()
        inner = heads * head_dim
        self.heads, self.head_dim, self.inner_dim = heads, head_dim, inner
        self.query_dim = self.out_dim = dim
        self.use_bias = self.added_proj_bias = True  # what the mixin's `fuse_projections` reads
        self.pre_only = pre_only
        self.added_kv_proj_dim = dim if text_projections else None
        self.norm_q = nn.RMSNorm(head_dim, eps=eps)
        self.norm_k = nn.RMSNorm(head_dim, eps=eps)
        self.to_q, self.to_k, self.to_v = (nn.Linear(dim, inner) for _ in range(3))
        if not pre_only:
            self.to_out = nn.ModuleList([nn.Linear(inner, dim), nn.Dropout(0.0)])
        if text_projections:
            self.norm_added_q = nn.RMSNorm(head_dim, eps=eps)
            self.norm_added_k = nn.RMSNorm(head_dim, eps=eps)
            self.add_q_proj, self.add_k_proj, self.add_v_proj = (nn.Linear(dim, inner) for _ in range(3))
            self.to_add_out = nn.Linear(inner, dim)
        self.set_processor(processor)

    def forward(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None, **kwargs):
        """The processor's attention (see `RaggedAttnProcessor.__call__` for shapes)."""
        return self.processor(self, hidden_states, encoder_hidden_states, **kwargs)


QKV = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]


def qkv_projections(attn: JointAttention, hidden_states: torch.Tensor,
                    encoder_hidden_states: torch.Tensor | None = None) -> QKV:
    """q, k, v of hidden_states (B, L, D) -> (B, L, inner) each, and the text stream's q, k, v of
    encoder_hidden_states (B, T, D) (None without a text stream), through the fused projections
    after `attn.fuse_projections()`."""
    text = encoder_hidden_states is not None and attn.added_kv_proj_dim is not None
    if attn.fused_projections:
        q, k, v = attn.to_qkv(hidden_states).chunk(3, dim=-1)
        eq, ek, ev = attn.to_added_qkv(encoder_hidden_states).chunk(3, dim=-1) if text else (None,) * 3
    else:
        q, k, v = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        eq, ek, ev = ((attn.add_q_proj(encoder_hidden_states), attn.add_k_proj(encoder_hidden_states),
                       attn.add_v_proj(encoder_hidden_states)) if text else (None,) * 3)
    return q, k, v, eq, ek, ev


class RotaryEmbedding(nn.Module):
    """FLUX's axial rotary embedding: position ids (L, A) -> (cos, sin), each (L, sum(axes_dim)),
    axis a using `axes_dim[a]` channels, frequencies in float64 where the device has it."""

    def __init__(self, theta: int, axes_dim: Sequence[int]) -> None:
        super().__init__()
        self.theta = theta
        self.axes_dim = list(axes_dim)

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        positions = ids.float()
        freqs_dtype = maybe_adjust_dtype_for_device(torch.float64, ids.device)
        tables = [get_1d_rotary_pos_embed(dim, positions[:, axis], theta=self.theta, repeat_interleave_real=True,
                                          use_real=True, freqs_dtype=freqs_dtype)
                  for axis, dim in enumerate(self.axes_dim)]
        cos, sin = (torch.cat(parts, dim=-1).to(ids.device) for parts in zip(*tables))
        return cos, sin
