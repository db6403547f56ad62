"""The network as the flow sees it: latent grid + local ratio -> velocity grid, for one window."""

from __future__ import annotations

import torch

from .codecs.packing import image_ids, pack, text_ids, unpack
from .flow.parameterization import to_velocity
from .flow.plan import StageWindow
from .text.embeddings import TextEmbeddings


class Denoiser:
    """Wraps a `NamiTransformer`: packs the grid into tokens, runs the window's block prefix and
    converts the output to a velocity.

    What a window's steps share (projected text, pooled embedding, rotary ids, ragged text
    lengths) is prepared once per (text batch, window, grid) and reused by every step, so a step
    reads nothing back from the device.
    """

    def __init__(self, transformer, patch_size: int) -> None:
        self.transformer = transformer
        self.patch_size = int(patch_size)
        self.prediction = transformer.config.prediction
        self.ordered_text = transformer.config.text_positions == "ordered"
        self.dtype = transformer.dtype
        self._prepared: dict[tuple, tuple[TextEmbeddings, object]] = {}  # window key -> (text, StageInputs)

    def prepare(self, window: StageWindow, text: TextEmbeddings, height: int, width: int, device,
                recompute_from: int | None = None):
        """The transformer's `StageInputs` for `window` on a height x width latent grid, built on
        the first call for this (text, window, grid, attention backend) and returned as is afterwards.
        `recompute_from`: blocks from this index on recompute their activations in backward."""
        key = (window.index, window.blocks, height, width, str(device), recompute_from,
               str(self.transformer.attention_backend()))
        cached = self._prepared.get(key)
        if cached is not None and cached[0] is text:
            return cached[1]
        p = self.patch_size
        inputs = self.transformer(
            encoder_hidden_states=text.sequence.to(device=device, dtype=self.dtype),
            pooled_projections=text.pooled.to(device=device, dtype=self.dtype),
            img_ids=image_ids(height // p, width // p, device=device),
            txt_ids=text_ids(text.sequence.shape[1], ordered=self.ordered_text, device=device),
            attention_mask=text.mask.to(device),
            lengths=text.lengths,
            num_blocks=window.blocks,
            recompute_from=recompute_from,
            prepare_only=True,
        )
        self._prepared[key] = (text, inputs)
        return inputs

    def __call__(
        self,
        z: torch.Tensor,
        r: torch.Tensor,
        tau: torch.Tensor,
        window: StageWindow,
        text: TextEmbeddings,
    ) -> torch.Tensor:
        """z (B, C, h, w), r (B,), tau (B,), text of batch B -> velocity (B, C, h, w) in z's dtype.
        When the transformer was compiled with static steps (`compile_blocks(static_steps=True)`),
        sampling replays the step from static buffers (`model.static_step`; CUDA graphs on a GPU)."""
        inputs = self.prepare(window, text, z.shape[-2], z.shape[-1], z.device)
        compilation = self.transformer.compilation
        graphs = None if compilation is None else compilation.step_graphs
        if graphs is None or torch.is_grad_enabled():
            return self.velocity(z, r, tau, window, inputs)
        key = (window, self.patch_size, self.prediction)
        return graphs.run(key, lambda *args: self.velocity(*args[:3], window, args[3]), z, r, tau, inputs)

    def velocity(self, z: torch.Tensor, r: torch.Tensor, tau: torch.Tensor, window: StageWindow,
                 inputs) -> torch.Tensor:
        """The velocity (B, C, h, w) at z (B, C, h, w), ratios r (B,) and timesteps tau (B,) with
        prepared `StageInputs`."""
        return to_velocity(self.forward(z, tau, inputs), z, r, window, self.prediction)

    def forward(self, z: torch.Tensor, tau: torch.Tensor, inputs) -> torch.Tensor:
        """The network's raw output (B, C, h, w) in z's dtype for z (B, C, h, w) with prepared inputs."""
        _, _, h, w = z.shape
        p = self.patch_size
        out = self.transformer(hidden_states=pack(z, p).to(self.dtype), timestep=tau, stage_inputs=inputs)
        return unpack(out.to(z.dtype), h, w, p)

    def predict(self, z: torch.Tensor, tau: torch.Tensor, window: StageWindow, text: TextEmbeddings,
                recompute_from: int | None = None) -> torch.Tensor:
        """The network's raw output for z (B, C, h, w) at timesteps tau (B,): (B, C, h, w) in z's
        dtype (a velocity or a clean grid, as `prediction` says)."""
        return self.forward(z, tau, self.prepare(window, text, z.shape[-2], z.shape[-1], z.device, recompute_from))
