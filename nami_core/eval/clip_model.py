"""A transformers CLIP model and its processor from a local folder: unit-norm image and text features.

Shared by GenEval's colour classifier (`clip_colors.py`) and CLIPScore (`clipscore.py`).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Sequence

import torch

from ..errors import NamiError
from .weights import CLIP_HINT, clip_folder, load_pretrained



def _features(output) -> torch.Tensor:
    # transformers 4.x returns the projected features; 5.x a model output whose pooler_output holds them
    return output if torch.is_tensor(output) else output.pooler_output


class ClipEncoder:
    """CLIP image and text towers with the model's own processor.

    `image_features(images)` -> (N, D) and `text_features(texts)` -> (M, D), both L2-normalised,
    float32, on the CPU. Texts longer than the model's context (77 tokens for OpenAI CLIP) are
    truncated; `text_features` warns once per call when it had to.
    """

    def __init__(self, path: str | Path, device: torch.device | str = "cpu", flag: str = "--clip") -> None:
        from transformers import AutoProcessor, CLIPModel

        what = f"{flag} (a CLIP model)"
        folder = clip_folder(path, flag)
        self.path = folder
        self.device = torch.device(device)
        self.model = load_pretrained(CLIPModel, folder, what, CLIP_HINT).to(self.device)
        self.processor = load_pretrained(AutoProcessor, folder, what, CLIP_HINT)
        if not hasattr(self.processor, "tokenizer") or not hasattr(self.processor, "image_processor"):
            raise NamiError(f"{what}: {folder} has no CLIP processor (tokenizer + image processor); {CLIP_HINT}")
        self.max_tokens = int(self.model.config.text_config.max_position_embeddings)

    @torch.no_grad()
    def image_features(self, images: Sequence, batch_size: int = 16) -> torch.Tensor:
        """PIL images -> (N, D) unit vectors."""
        chunks = []
        for first in range(0, len(images), batch_size):
            batch = self.processor.image_processor(images=list(images[first:first + batch_size]), return_tensors="pt")
            pixels = batch["pixel_values"].to(self.device, dtype=self.model.dtype)
            chunks.append(_features(self.model.get_image_features(pixel_values=pixels)).float().cpu())
        feats = torch.cat(chunks) if chunks else torch.zeros(0, self.model.config.projection_dim)
        return torch.nn.functional.normalize(feats, dim=-1)

    def count_tokens(self, text: str) -> int:
        """Tokens of `text` including the start and end tokens."""
        return len(self.processor.tokenizer(text, truncation=False)["input_ids"])

    @torch.no_grad()
    def text_features(self, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        """Texts -> (M, D) unit vectors; texts over the context length are truncated (with a warning)."""
        too_long = [t for t in texts if self.count_tokens(t) > self.max_tokens]
        if too_long:
            warnings.warn(f"{len(too_long)} prompt(s) exceed CLIP's {self.max_tokens} tokens and were truncated, "
                          f"e.g. {too_long[0][:60]!r}", stacklevel=2)
        chunks = []
        for first in range(0, len(texts), batch_size):
            tokens = self.processor.tokenizer(list(texts[first:first + batch_size]), padding=True, truncation=True,
                                              max_length=self.max_tokens, return_tensors="pt")
            tokens = {k: v.to(self.device) for k, v in tokens.items() if k in ("input_ids", "attention_mask")}
            chunks.append(_features(self.model.get_text_features(**tokens)).float().cpu())
        feats = torch.cat(chunks) if chunks else torch.zeros(0, self.model.config.projection_dim)
        return torch.nn.functional.normalize(feats, dim=-1)
