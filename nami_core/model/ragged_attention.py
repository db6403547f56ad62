"""Joint text + image attention when the rows of a batch have different text lengths.

A FLUX block attends over the joint sequence [text (T tokens), image (N tokens)]. After the
batch's text is cut to its longest real prompt (T = max length), a shorter row b still has
T - L_b padded text tokens that no one may attend to. `RaggedText` says which, from host-side
lengths, so nothing is read back from the device while sampling. `RaggedAttnProcessor` (the
processor of every attention module of a `NamiTransformer`) then calls, by backend:

* native SDPA: one call with a (B, 1, 1, T + N) key mask, which PyTorch's memory-efficient and
  cuDNN kernels take without building a (T + N)^2 mask;
* flash-attn: `flash_attn_varlen_func` over the real tokens of every row packed into one
  sequence, with cumulative lengths (no mask at all);
* xformers: `memory_efficient_attention` over the same packed sequence with a block-diagonal
  bias made from the lengths (no dense bias), built once per packing on the packing's device.

The q and k RMS norms run in float32 with a float32 weight (`qk_rms_norm`), as CUDA's autocast
runs them, so input and weight agree and the fused kernel runs under bf16 weights and under
autocast over fp32 weights alike; q and k go to the attention kernel in v's dtype, which the packed
kernels need (autocast casts only for SDPA).

A batch with no padded row needs none of this: every backend gets a plain call with no mask.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.embeddings import apply_rotary_emb
from diffusers.models.transformers.transformer_flux import FluxAttnProcessor, _get_qkv_projections

from ..runtime import host_to_device


@dataclass
class Packing:
    """The real tokens of a (B, T + N) joint sequence, packed row after row: `index` (total,) into
    the flattened batch, `seqlens` per row, `cu_seqlens` (B + 1,) int32 and the longest row.
    `xformers_bias` is xformers' block-diagonal mask of these rows, made on first use."""

    index: torch.Tensor
    seqlens: tuple[int, ...]
    cu_seqlens: torch.Tensor
    max_seqlen: int
    _xformers_bias: object = field(default=None, repr=False)

    def xformers_bias(self):
        """xformers' `BlockDiagonalMask` of the rows, on the packing's device, built once."""
        if self._xformers_bias is None:
            from xformers.ops.fmha.attn_bias import BlockDiagonalMask

            self._xformers_bias = BlockDiagonalMask.from_seqlens(list(self.seqlens), device=self.index.device)
        return self._xformers_bias


@dataclass
class RaggedText:
    """Row b of a batch has `lengths[b]` real text tokens of `text_tokens`, then padding.
    Masks and packings are built once per image token count and device, then reused; `build`
    makes them before the blocks run (`NamiTransformer.prepare`), so a compiled block only ever
    finds them made and compiles once per shape, not once more when its first call fills the cache."""

    lengths: tuple[int, ...]
    text_tokens: int
    _masks: dict = field(default_factory=dict, repr=False)
    _packings: dict = field(default_factory=dict, repr=False)

    def build(self, image_tokens: int, device, backend) -> "RaggedText":
        """Make what attention with `backend` will look up for `image_tokens` image tokens on `device`."""
        name = getattr(backend, "value", backend)
        if name in PACKED_KERNELS:
            packing = self.packing(image_tokens, device)
            if name == "xformers":
                packing.xformers_bias()
        else:
            self.key_mask(image_tokens, device)
        return self

    def key_mask(self, image_tokens: int, device) -> torch.Tensor:
        """(B, T + N) bool, True on the keys a row may attend to."""
        key = (image_tokens, str(device))
        if key not in self._masks:
            text = torch.arange(self.text_tokens)[None, :] < torch.tensor(self.lengths)[:, None]
            mask = torch.cat([text, torch.ones(len(self.lengths), image_tokens, dtype=torch.bool)], dim=1)
            self._masks[key] = host_to_device(mask, device)
        return self._masks[key]

    def packing(self, image_tokens: int, device) -> Packing:
        key = (image_tokens, str(device))
        if key not in self._packings:
            width = self.text_tokens + image_tokens
            rows = [torch.cat([torch.arange(n), torch.arange(self.text_tokens, width)]) + b * width
                    for b, n in enumerate(self.lengths)]
            seqlens = tuple(n + image_tokens for n in self.lengths)
            cu = torch.tensor([0, *itertools.accumulate(seqlens)], dtype=torch.int32)
            self._packings[key] = Packing(host_to_device(torch.cat(rows), device), seqlens, host_to_device(cu, device),
                                          max(seqlens))
        return self._packings[key]


def pack(x: torch.Tensor, packing: Packing) -> torch.Tensor:
    """(B, L, H, D) -> (total, H, D): the real tokens of every row, row after row."""
    return x.flatten(0, 1).index_select(0, packing.index)


def unpack(packed: torch.Tensor, packing: Packing, batch: int, width: int) -> torch.Tensor:
    """(total, H, D) -> (B, L, H, D), zeros at the padded text positions."""
    out = packed.new_zeros(batch * width, *packed.shape[1:])
    return out.index_copy_(0, packing.index, packed).view(batch, width, *packed.shape[1:])


def flash_varlen(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, packing: Packing) -> torch.Tensor:
    """flash-attn's variable-length kernel on packed (total, H, D) tensors."""
    from flash_attn import flash_attn_varlen_func

    cu, longest = packing.cu_seqlens, packing.max_seqlen
    return flash_attn_varlen_func(q, k, v, cu_seqlens_q=cu, cu_seqlens_k=cu, max_seqlen_q=longest, max_seqlen_k=longest)


def xformers_block_diagonal(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, packing: Packing) -> torch.Tensor:
    """xformers' memory-efficient kernel on packed (total, H, D) tensors, one block per row."""
    import xformers.ops as xops

    return xops.memory_efficient_attention(q[None], k[None], v[None], attn_bias=packing.xformers_bias())[0]


# backend name -> kernel over packed tokens; other backends take the key mask through diffusers' dispatcher
PACKED_KERNELS: dict[str, Callable[[torch.Tensor, torch.Tensor, torch.Tensor, Packing], torch.Tensor]] = {
    "flash": flash_varlen,
    "flash_varlen": flash_varlen,
    "xformers": xformers_block_diagonal,
}


def ragged_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ragged: RaggedText | None,
                     backend, parallel_config=None) -> torch.Tensor:
    """Attention of (B, T + N, H, D) queries, keys and values where row b's padded text keys are
    excluded (see module doc). Returns (B, T + N, H, D); padded text rows of the output are zeros
    for packed kernels and don't-care values for the masked call."""
    name = getattr(backend, "value", backend)
    if ragged is None:
        return dispatch_attention_fn(q, k, v, attn_mask=None, backend=backend, parallel_config=parallel_config)
    batch, width = q.shape[0], q.shape[1]
    image_tokens = width - ragged.text_tokens
    kernel = PACKED_KERNELS.get(name)
    if kernel is None:
        mask = ragged.key_mask(image_tokens, q.device)
        return dispatch_attention_fn(q, k, v, attn_mask=mask, backend=backend, parallel_config=parallel_config)
    packing = ragged.packing(image_tokens, q.device)
    out = kernel(pack(q, packing), pack(k, packing), pack(v, packing), packing)
    return unpack(out, packing, batch, width)


def qk_rms_norm(norm: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`norm` (an `nn.RMSNorm` over the head dim) of x (B, L, H, D) in float32, weight included,
    so input and weight agree and the fused kernel runs; returns float32, as CUDA's autocast does."""
    weight = None if norm.weight is None else norm.weight.float()
    return F.rms_norm(x.float(), norm.normalized_shape, weight, norm.eps)


class RaggedAttnProcessor(FluxAttnProcessor):
    """FLUX joint attention (double- and single-stream blocks) that takes a `RaggedText` instead
    of a dense mask. Projections, QK norms and rotary embedding are diffusers' own."""

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, image_rotary_emb=None,
                 ragged: RaggedText | None = None):
        """hidden_states (B, N, C) image tokens, or (B, T + N, C) joint tokens in single-stream
        blocks; encoder_hidden_states (B, T, C) text tokens in double-stream blocks."""
        if attention_mask is not None:
            raise ValueError("NamiTransformer attention takes `ragged` text lengths, not a dense attention mask")
        q, k, v, eq, ek, ev = _get_qkv_projections(attn, hidden_states, encoder_hidden_states)
        q, k, v = (t.unflatten(-1, (-1, attn.head_dim)) for t in (q, k, v))
        q, k = qk_rms_norm(attn.norm_q, q), qk_rms_norm(attn.norm_k, k)
        if attn.added_kv_proj_dim is not None:
            eq, ek, ev = (t.unflatten(-1, (-1, attn.head_dim)) for t in (eq, ek, ev))
            q = torch.cat([qk_rms_norm(attn.norm_added_q, eq), q], dim=1)
            k = torch.cat([qk_rms_norm(attn.norm_added_k, ek), k], dim=1)
            v = torch.cat([ev, v], dim=1)
        if image_rotary_emb is not None:
            q = apply_rotary_emb(q, image_rotary_emb, sequence_dim=1)
            k = apply_rotary_emb(k, image_rotary_emb, sequence_dim=1)
        q, k = q.to(v.dtype), k.to(v.dtype)
        out = ragged_attention(q, k, v, ragged, self._attention_backend, self._parallel_config)
        out = out.flatten(2, 3).to(v.dtype)
        if encoder_hidden_states is None:
            return out
        text, image = out.split_with_sizes([encoder_hidden_states.shape[1], hidden_states.shape[1]], dim=1)
        image = attn.to_out[1](attn.to_out[0](image.contiguous()))
        return image, attn.to_add_out(text.contiguous())
