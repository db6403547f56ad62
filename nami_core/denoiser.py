"""The network as the flow sees it: latent grid + local ratio -> velocity grid, for one window."""

from __future__ import annotations

import torch

from .codecs.packing import image_ids, pack, text_ids, unpack
from .flow.parameterization import to_velocity
from .flow.plan import StageWindow
from .text.encoder import TextEmbeddings


class Denoiser:
    """Wraps a `NamiTransformer`: packs the grid into tokens, builds rotary ids, runs the
    window's block prefix and converts the output to a velocity."""

    def __init__(self, transformer, patch_size: int) -> None:
        self.transformer = transformer
        self.patch_size = int(patch_size)
        self.prediction = transformer.config.prediction
        self.ordered_text = transformer.config.text_positions == "ordered"

    def __call__(
        self,
        z: torch.Tensor,
        r: torch.Tensor,
        tau: torch.Tensor,
        window: StageWindow,
        text: TextEmbeddings,
    ) -> torch.Tensor:
        """z (B, C, h, w), r (B,), tau (B,), text of batch B -> velocity (B, C, h, w) in z's dtype."""
        b, _, h, w = z.shape
        p = self.patch_size
        dtype = self.transformer.dtype
        device = z.device
        tokens = pack(z, p).to(dtype)
        out = self.transformer(
            hidden_states=tokens,
            encoder_hidden_states=text.sequence.to(device=device, dtype=dtype),
            pooled_projections=text.pooled.to(device=device, dtype=dtype),
            timestep=tau.to(device=device),
            img_ids=image_ids(h // p, w // p, device=device),
            txt_ids=text_ids(text.sequence.shape[1], ordered=self.ordered_text, device=device),
            attention_mask=text.mask.to(device),
            num_blocks=window.blocks,
        )
        out = unpack(out.to(z.dtype), h, w, p)
        return to_velocity(out, z, r.to(device), window, self.prediction)
