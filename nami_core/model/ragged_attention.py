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

`RaggedText.layout` builds what a backend needs (`JointLayout`: the key mask, or the packing) once
per stage, before the blocks run (`NamiTransformer.prepare`): the blocks receive tensors only, so
a compiled block or stage never builds anything inside itself and compiles once per shape.

The q and k RMS norms run in float32 with a float32 weight (`qk_rms_norm`), as CUDA's autocast
runs them, so input and weight agree and the fused kernel runs under bf16 weights and under
autocast over fp32 weights alike. q and k are then rotated together, in one pass over both
(`norm_rope`, with the stage's `rotary_tables`), and go to the attention kernel in v's dtype,
which the packed kernels need (autocast casts only for SDPA).

A batch with no padded row needs none of this: every backend gets a plain call with no mask.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from diffusers.models.attention_dispatch import dispatch_attention_fn

from ..runtime import host_to_device
from .joint_attention import qkv_projections


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


@dataclass(frozen=True)
class JointLayout:
    """Where the real tokens of a stage's joint (B, T + N) sequences are, as the attention backend
    takes it: a (B, T + N) bool key mask (native SDPA and other dispatcher backends) or a `Packing`
    (flash, xformers). Made by `RaggedText.layout` before the blocks run."""

    key_mask: torch.Tensor | None = None
    packing: Packing | None = None


@dataclass
class RaggedText:
    """Row b of a batch has `lengths[b]` real text tokens of `text_tokens`, then padding.
    Masks and packings are built once per image token count and device, then reused; `layout`
    hands them out before the blocks run (`NamiTransformer.prepare`)."""

    lengths: tuple[int, ...]
    text_tokens: int
    _masks: dict = field(default_factory=dict, repr=False)
    _packings: dict = field(default_factory=dict, repr=False)

    def layout(self, image_tokens: int, device, backend) -> JointLayout:
        """What attention with `backend` needs for `image_tokens` image tokens on `device`."""
        name = getattr(backend, "value", backend)
        if name in PACKED_KERNELS:
            packing = self.packing(image_tokens, device)
            if name == "xformers":
                packing.xformers_bias()
            return JointLayout(packing=packing)
        return JointLayout(key_mask=self.key_mask(image_tokens, device))

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


def ragged_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: JointLayout | None,
                     backend, parallel_config=None) -> torch.Tensor:
    """Attention of (B, T + N, H, D) queries, keys and values where row b's padded text keys are
    excluded (see module doc). Returns (B, T + N, H, D); padded text rows of the output are zeros
    for packed kernels and don't-care values for the masked call."""
    if layout is None:
        return dispatch_attention_fn(q, k, v, attn_mask=None, backend=backend, parallel_config=parallel_config)
    kernel = PACKED_KERNELS.get(getattr(backend, "value", backend))
    if kernel is None:
        if layout.key_mask is None:
            raise ValueError(f"the stage inputs were prepared for a packed attention kernel, not {backend}")
        return dispatch_attention_fn(q, k, v, attn_mask=layout.key_mask, backend=backend,
                                     parallel_config=parallel_config)
    packing = layout.packing
    if packing is None:
        raise ValueError(f"the stage inputs were prepared with a key mask, not for the packed kernel of {backend}")
    out = kernel(pack(q, packing), pack(k, packing), pack(v, packing), packing)
    return unpack(out, packing, q.shape[0], q.shape[1])


def rotary_tables(cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """diffusers' FLUX rotary embedding (cos, sin), each (L, D) with every frequency twice, as the
    tables `rotate` takes: (L, 1, D) float32 cos, and sin with the sign of the pair rotation folded
    in (-sin on even channels), so the rotation needs no negation per call."""
    sign = torch.tensor([-1.0, 1.0], device=sin.device).repeat(sin.shape[-1] // 2)
    return cos.float()[:, None], (sin.float() * sign)[:, None]


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """FLUX's rotary embedding of x (..., L, H, D) with `rotary_tables` (L, 1, D): each channel pair
    (x0, x1) -> (x0 cos - x1 sin, x1 cos + x0 sin), as x * cos + swap_pairs(x) * signed sin."""
    swapped = x.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)
    return torch.addcmul(x * cos, swapped, sin)


def norm_rope(attn, q: torch.Tensor, k: torch.Tensor, eq: torch.Tensor | None = None, ek: torch.Tensor | None = None,
              rotary: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """The RMS-normalised, rotated queries and keys of one attention module as one (2, B, L, H, D)
    float32 tensor [q, k]: image (or joint) q and k (B, N, H, D) with `norm_q` / `norm_k`, text eq
    and ek (B, T, H, D) of a double-stream block with `norm_added_q` / `norm_added_k` in front of
    them (L = T + N), all rotated in one pass.

    Without autograd (sampling) all of them are normalised in one pass too, each part then scaled
    by its weights in place. Under autograd each is normalised with its weight by one fused
    `qk_rms_norm` (what backward keeps is then its input alone: train/memory.py)."""
    if torch.is_grad_enabled():
        qk = torch.stack([qk_rms_norm(attn.norm_q, q), qk_rms_norm(attn.norm_k, k)])
        if eq is not None:
            text = torch.stack([qk_rms_norm(attn.norm_added_q, eq), qk_rms_norm(attn.norm_added_k, ek)])
            qk = torch.cat([text, qk], dim=2)
    else:
        qk = torch.stack([q, k]) if eq is None else torch.cat([torch.stack([eq, ek]), torch.stack([q, k])], dim=2)
        qk = F.rms_norm(qk.float(), (qk.shape[-1],), None, attn.norm_q.eps)
        parts = [(qk, attn.norm_q, attn.norm_k)]
        if eq is not None:
            text = eq.shape[1]
            parts = [(qk[:, :, text:], attn.norm_q, attn.norm_k), (qk[:, :, :text], attn.norm_added_q, attn.norm_added_k)]
        for part, norm_q, norm_k in parts:
            if norm_q.weight is not None:
                part.mul_(torch.stack([norm_q.weight, norm_k.weight]).view(2, 1, 1, 1, -1))
    return qk if rotary is None else rotate(qk, *rotary)


def qk_rms_norm(norm: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`norm` (an `nn.RMSNorm` over the head dim) of x (B, L, H, D) in float32, weight included,
    so input and weight agree and the fused kernel runs; returns float32, as CUDA's autocast does."""
    weight = None if norm.weight is None else norm.weight.float()
    return F.rms_norm(x.float(), norm.normalized_shape, weight, norm.eps)


class RaggedAttnProcessor:
    """FLUX joint attention (double- and single-stream blocks) that takes a `JointLayout` instead
    of a dense mask and the stage's `rotary_tables`: projections (`qkv_projections`), q/k norms
    and rotation (`norm_rope`), the kernel of the dispatcher backend diffusers'
    `set_attention_backend` sets (`ragged_attention`)."""

    _attention_backend = None  # set per processor by the attention module's `set_attention_backend`
    _parallel_config = None

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, image_rotary_emb=None,
                 layout: JointLayout | None = None):
        """hidden_states (B, N, C) image tokens, or (B, T + N, C) joint tokens in single-stream
        blocks; encoder_hidden_states (B, T, C) text tokens in double-stream blocks;
        image_rotary_emb: `rotary_tables` (T + N, 1, head_dim) of the joint sequence."""
        if attention_mask is not None:
            raise ValueError("NamiTransformer attention takes a `JointLayout` of the text lengths, not a dense "
                             "attention mask")
        q, k, v, eq, ek, ev = qkv_projections(attn, hidden_states, encoder_hidden_states)
        q, k, v = (t.unflatten(-1, (-1, attn.head_dim)) for t in (q, k, v))
        if attn.added_kv_proj_dim is not None:
            eq, ek, ev = (t.unflatten(-1, (-1, attn.head_dim)) for t in (eq, ek, ev))
            v = torch.cat([ev, v], dim=1)
        q, k = norm_rope(attn, q, k, eq, ek, image_rotary_emb).to(v.dtype).unbind(0)
        out = ragged_attention(q, k, v, layout, self._attention_backend, self._parallel_config).flatten(2, 3)
        if encoder_hidden_states is None:
            return out
        text, image = out.split_with_sizes([encoder_hidden_states.shape[1], hidden_states.shape[1]], dim=1)
        image = attn.to_out[1](attn.to_out[0](image.contiguous()))
        return image, attn.to_add_out(text.contiguous())
