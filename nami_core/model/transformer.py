"""NamiTransformer: a FLUX MM-DiT whose block list is cut into nested stage modules.

The module names and shapes are those of diffusers' `FluxTransformer2DModel`, so a
FLUX-family state dict (or the public NAMI checkpoint) loads without renaming. Stage k
runs the prefix `[0, stage_ends[k])` of the ordered list [double blocks..., single
blocks...], then the shared final norm and projection.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import CombinedTimestepTextProjEmbeddings
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.normalization import AdaLayerNormContinuous
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from ..config import ModelConfig
from .blocks import DoubleStreamBlock, SingleStreamBlock, modulate
from .joint_attention import RotaryEmbedding
from .lora import TRANSFORMER_LORA_METHODS, LoraOnFirstUse
from .ragged_attention import JointLayout, RaggedText, rotary_tables

MIN_TEXT_BUCKET = 16


def text_bucket(tokens: int, slot: int) -> int:
    """The text length a compiled model pads `tokens` real tokens to: the next power of two from
    `MIN_TEXT_BUCKET` on, at most the slot. A process sampling prompts of any length then sees a
    few text shapes per stage, not one per length (docs/benchmarks.md, "Compiled sampling")."""
    bucket = MIN_TEXT_BUCKET
    while bucket < tokens:
        bucket *= 2
    return min(bucket, slot)


@dataclass
class StageInputs:
    """What every step through one block prefix shares, built once per stage by
    `NamiTransformer.prepare`, as tensors: the projected text (B, T, D), cut to the longest real
    prompt for `text_padding="mask"` (padded to its `text_bucket` when compiled); the pooled-text
    embedding (B, D); the `rotary_tables` (T + N, 1, head_dim) of the text and image ids; the
    `JointLayout` of the padded text rows (None when no row is padded), with the host-side
    `ragged` lengths it came from; the number of blocks to run; in training, the first block whose
    activations are recomputed in backward (None: none; every block when `gradient_checkpointing`
    is on)."""

    text: torch.Tensor
    pooled: torch.Tensor
    rotary: tuple[torch.Tensor, torch.Tensor]
    layout: JointLayout | None
    num_blocks: int
    ragged: RaggedText | None = None
    recompute_from: int | None = None

    def tensors(self) -> list[torch.Tensor]:
        """The tensors a step reads that differ between prompts of one shape, in a fixed order
        (a packing depends on the lengths alone and is not among them)."""
        mask = [] if self.layout is None or self.layout.key_mask is None else [self.layout.key_mask]
        return [self.text, self.pooled, *self.rotary, *mask]

    def signature(self) -> tuple:
        """Shapes, dtypes and block count: equal signatures read equal-sized tensors, and packed
        layouts the same lengths."""
        packing = None if self.layout is None or self.layout.packing is None else self.layout.packing.seqlens
        return (self.num_blocks, packing, *((tuple(t.shape), t.dtype, str(t.device)) for t in self.tensors()))

    def static_copy(self) -> "StageInputs":
        """A copy whose tensors are fresh buffers (for a replayed step: `load_into` refills them)."""
        layout = self.layout
        if layout is not None and layout.key_mask is not None:
            layout = JointLayout(key_mask=layout.key_mask.clone())
        return replace(self, text=self.text.clone(), pooled=self.pooled.clone(),
                       rotary=tuple(t.clone() for t in self.rotary), layout=layout)

    def load_into(self, static: "StageInputs") -> None:
        """Copy these tensors into `static` (a `static_copy` of inputs of the same signature)."""
        for source, target in zip(self.tensors(), static.tensors()):
            target.copy_(source)


class NamiTransformer(LoraOnFirstUse, ModelMixin, ConfigMixin):
    """FLUX-compatible transformer with a stage plan.

    Config: the `FluxTransformer2DModel` arguments (no guidance embedding) plus
    `stage_ends` (cumulative block ends per stage), `prediction` ("velocity" or
    "sample": what the output head predicts; see `nami_core.flow.parameterization`),
    `text_positions` ("none" or "ordered": the text tokens' rotary ids) and `text_padding`
    ("mask": padded text keys are masked; "none": the padded sequence is attended to whole, as in
    the public NAMI-2B release). See `ModelConfig`.
    """

    lora_methods = TRANSFORMER_LORA_METHODS  # diffusers' PeftAdapterMixin, on first use
    _supports_gradient_checkpointing = True
    _no_split_modules = ["DoubleStreamBlock", "SingleStreamBlock"]
    _skip_layerwise_casting_patterns = ["pos_embed", "norm"]

    @register_to_config
    def __init__(
        self,
        patch_size: int = 1,
        in_channels: int = 64,
        out_channels: int | None = None,
        num_layers: int = 8,
        num_single_layers: int = 14,
        attention_head_dim: int = 128,
        num_attention_heads: int = 16,
        joint_attention_dim: int = 4096,
        pooled_projection_dim: int = 1024,
        axes_dims_rope: Sequence[int] = (16, 56, 56),
        stage_ends: Sequence[int] = (9, 16, 22),
        prediction: str = "velocity",
        text_positions: str = "none",
        text_padding: str = "mask",
    ) -> None:
        super().__init__()
        # Validates heads/width, rope axes and the stage plan; raises ConfigError.
        self.model_config = ModelConfig.from_transformer_config(self.config)
        if patch_size != 1:
            raise ValueError("NamiTransformer packs patches outside the model; patch_size must be 1")
        self.out_channels = out_channels or in_channels
        self.inner_dim = num_attention_heads * attention_head_dim

        self.pos_embed = RotaryEmbedding(theta=10000, axes_dim=axes_dims_rope)
        self.time_text_embed = CombinedTimestepTextProjEmbeddings(
            embedding_dim=self.inner_dim, pooled_projection_dim=pooled_projection_dim
        )
        self.context_embedder = nn.Linear(joint_attention_dim, self.inner_dim)
        self.x_embedder = nn.Linear(in_channels, self.inner_dim)
        self.transformer_blocks = nn.ModuleList(
            [
                DoubleStreamBlock(self.inner_dim, num_attention_heads, attention_head_dim)
                for _ in range(num_layers)
            ]
        )
        self.single_transformer_blocks = nn.ModuleList(
            [
                SingleStreamBlock(self.inner_dim, num_attention_heads, attention_head_dim)
                for _ in range(num_single_layers)
            ]
        )
        self.norm_out = AdaLayerNormContinuous(self.inner_dim, self.inner_dim, elementwise_affine=False, eps=1e-6)
        self.proj_out = nn.Linear(self.inner_dim, self.out_channels, bias=True)
        self.gradient_checkpointing = False
        self.compilation = None  # `model.compiled.Compilation` once `compile_blocks` ran
        self._compiled_step = None

    @property
    def depth(self) -> int:
        return len(self.transformer_blocks) + len(self.single_transformer_blocks)

    @property
    def stage_ends(self) -> tuple[int, ...]:
        return tuple(self.config.stage_ends)

    def blocks(self) -> list[nn.Module]:
        """The ordered block list: double-stream blocks, then single-stream blocks."""
        return list(self.transformer_blocks) + list(self.single_transformer_blocks)

    def unused_parameters(self, num_blocks: int) -> list[nn.Parameter]:
        """The parameters a forward through the first `num_blocks` blocks gives no gradient: those of
        the later blocks and, when the prefix ends on a double-stream block, that block's text-output
        path (`attn.to_add_out`, `ff_context`), whose result only the next block would read.
        Frozen parameters (a LoRA run's base weights) are left out: they never get a gradient."""
        unused = [p for block in self.blocks()[num_blocks:] for p in block.parameters()]
        if 0 < num_blocks <= len(self.transformer_blocks):
            last = self.transformer_blocks[num_blocks - 1]
            unused += list(last.attn.to_add_out.parameters()) + list(last.ff_context.parameters())
        return [p for p in unused if p.requires_grad]

    def attention_backend(self):
        """The dispatcher backend the attention modules use (`model.attention.apply_backend`)."""
        first = self.blocks()[0]
        return getattr(first.attn.processor, "_attention_backend", None)

    def compile_blocks(self, dynamic: bool | None = False, unit: str = "block", backend: str | None = None,
                       static_text: bool = True, static_steps: bool = False):
        """Compile with torch.compile (state-dict keys unchanged); returns the model's `CompileStats`.

        `unit` "block": each block (regional compilation); "stage": a stage's whole step.
        `dynamic=False` gives every shape its own kernels (sampling: a stage has one shape per batch
        and text bucket); `None` lets torch switch to shape-generic kernels once a size varies
        (training). `static_text` pads the text to `text_bucket` lengths. `static_steps` replays
        the sampler's steps from static buffers, as CUDA graphs on a GPU (`model.static_step`).
        `backend`: inductor, or aot_eager / eager (dynamo's graphs without code generation, for
        tests); default `NAMI_COMPILE_BACKEND`, else inductor. See `model.compiled`.
        """
        from .compiled import Compilation, default_backend

        self.compilation = compilation = Compilation(self, backend or default_backend(), unit, dynamic, static_text,
                                                     static_steps)
        self._compiled_step = None
        if unit == "stage":
            self._compiled_step = compilation.unit_for(self._step, "stage")
        else:
            for block in self.blocks():
                block._compiled_call_impl = compilation.unit_for(block._call_impl, type(block).__name__)
        return compilation.stats

    @property
    def compile_stats(self):
        """`CompileStats` of the compiled model, None when it is not compiled."""
        return None if self.compilation is None else self.compilation.stats

    def num_blocks_for(self, stage: int | None = None, num_blocks: int | None = None) -> int:
        if num_blocks is not None:
            if not 1 <= num_blocks <= self.depth:
                raise ValueError(f"num_blocks must be in [1, {self.depth}], got {num_blocks}")
            return num_blocks
        if stage is None:
            return self.depth
        if not 0 <= stage < len(self.stage_ends):
            raise ValueError(f"stage must be in [0, {len(self.stage_ends) - 1}], got {stage}")
        return self.stage_ends[stage]

    def prepare(
        self,
        encoder_hidden_states: torch.Tensor,
        pooled_projections: torch.Tensor,
        img_ids: torch.Tensor,
        txt_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        lengths: Sequence[int] | None = None,
        stage: int | None = None,
        num_blocks: int | None = None,
        recompute_from: int | None = None,
    ) -> StageInputs:
        """What every step through one block prefix shares, computed once (see `StageInputs`).

        encoder_hidden_states (B, T, joint_attention_dim), pooled_projections (B, pooled_projection_dim),
        img_ids (N, 3), txt_ids (T, 3); attention_mask (B, T) True on real tokens, and `lengths`
        their count per row when known on the host (else read off the mask once). With
        `text_padding="mask"` the text is cut to the longest real prompt and shorter rows are
        handled by `RaggedText`; with "none" the padded sequence is attended to whole.
        """
        n_blocks = self.num_blocks_for(stage, num_blocks)
        compilation = self.compilation
        ragged = layout = None
        if self.config.text_padding == "mask" and attention_mask is not None:
            lengths = tuple(int(n) for n in (lengths if lengths is not None else attention_mask.sum(1).tolist()))
            tokens = max(max(lengths), 1)
            static = compilation is not None and compilation.static_text
            if static:
                tokens = text_bucket(tokens, encoder_hidden_states.shape[1])
            encoder_hidden_states, txt_ids = encoder_hidden_states[:, :tokens], txt_ids[:tokens]
            if static or min(lengths) < tokens:  # a compiled model masks always: one graph per text bucket
                ragged = RaggedText(lengths, tokens)
                layout = ragged.layout(img_ids.shape[0], encoder_hidden_states.device, self.attention_backend())
        return StageInputs(
            text=self.context_embedder(encoder_hidden_states),
            pooled=self.time_text_embed.text_embedder(pooled_projections),
            rotary=rotary_tables(*self.pos_embed(torch.cat((txt_ids, img_ids), dim=0))),
            layout=layout,
            num_blocks=n_blocks,
            ragged=ragged,
            recompute_from=0 if self.gradient_checkpointing else recompute_from,
        )

    def forward_prepared(self, hidden_states: torch.Tensor, timestep: torch.Tensor, inputs: StageInputs) -> torch.Tensor:
        """One step: image tokens (B, N, in_channels) and model timesteps tau (B,) in [0, 1]
        (x1000 inside, in float32, and so the sinusoidal embedding) through the prepared block
        prefix and the final layer -> (B, N, out_channels). Compiled as one unit with
        `compile_blocks(unit="stage")`."""
        step = self._compiled_step or self._step
        return step(hidden_states, timestep, inputs)

    def _step(self, hidden_states: torch.Tensor, timestep: torch.Tensor, inputs: StageInputs) -> torch.Tensor:
        # in float32: bf16 holds x1000 timesteps only to 4 units (diffusers' FLUX casts first)
        embed = self.time_text_embed
        temb = embed.timestep_embedder(embed.time_proj(timestep.float() * 1000).to(dtype=inputs.pooled.dtype))
        act = F.silu(temb + inputs.pooled)  # what every AdaLN of the step reads
        image = self.x_embedder(hidden_states)
        text = inputs.text
        blocks = self.blocks()[: inputs.num_blocks]
        double = len(self.transformer_blocks)
        recompute_from = inputs.recompute_from
        if recompute_from is None or not torch.is_grad_enabled():
            recompute_from = len(blocks)
        for index, block in enumerate(blocks[:double]):
            text, image = self._run_block(block, index >= recompute_from, image, text, act, inputs.rotary,
                                          inputs.layout)
        if len(blocks) > double:
            joint = torch.cat([text, image], dim=1)  # single-stream blocks pass the joint sequence on
            for index, block in enumerate(blocks[double:], double):
                joint = self._run_block(block, index >= recompute_from, joint, act, inputs.rotary, inputs.layout)
            image = joint[:, text.shape[1]:]
        scale, shift = self.norm_out.linear(act)[:, None].chunk(2, dim=-1)
        return self.proj_out(modulate(self.norm_out.norm(image), shift, scale))

    @staticmethod
    def _run_block(block, recompute: bool, *args):
        """`block(*args)`, recomputing its activations in backward when `recompute`."""
        return checkpoint(block, *args, use_reentrant=False) if recompute else block(*args)

    def forward(
        self,
        hidden_states: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        pooled_projections: torch.Tensor | None = None,
        timestep: torch.Tensor | None = None,
        img_ids: torch.Tensor | None = None,
        txt_ids: torch.Tensor | None = None,
        stage: int | None = None,
        attention_mask: torch.Tensor | None = None,
        *,
        num_blocks: int | None = None,
        lengths: Sequence[int] | None = None,
        recompute_from: int | None = None,
        stage_inputs: StageInputs | None = None,
        prepare_only: bool = False,
    ):
        """Run the block prefix of `stage` (0-based; None = all blocks) and the final layer:
        `forward_prepared(hidden_states, timestep, prepare(...))`. With `prepare_only` it returns
        the `StageInputs` alone; given `stage_inputs` it needs only `hidden_states` and `timestep`.
        Going through the module call keeps hooks (offload, compile, DDP) in the path.

        Args:
            hidden_states: image tokens (B, N, in_channels).
            encoder_hidden_states: text tokens (B, T, joint_attention_dim).
            pooled_projections: pooled text (B, pooled_projection_dim).
            timestep: (B,) model timestep tau in [0, 1] (multiplied by 1000 inside).
            img_ids: (N, 3) rotary ids (0, row, col); txt_ids: (T, 3) rotary ids of the text tokens
                (zeros, or (k, 0, 0) for token k with `text_positions="ordered"`).
            attention_mask: optional (B, T) text mask, True = real token; used only by models whose
                `text_padding` is "mask". `lengths`: its per-row sums, when known on the host.
            num_blocks: run exactly this many blocks (overrides `stage`).
        Returns:
            (B, N, out_channels), or `StageInputs` with `prepare_only`.
        """
        if stage_inputs is None:
            stage_inputs = self.prepare(encoder_hidden_states, pooled_projections, img_ids, txt_ids, attention_mask,
                                        lengths, stage, num_blocks, recompute_from)
            if prepare_only:
                return stage_inputs
        return self.forward_prepared(hidden_states, timestep, stage_inputs)

    @classmethod
    def from_model_config(cls, config: ModelConfig) -> "NamiTransformer":
        return cls(**config.transformer_kwargs())
