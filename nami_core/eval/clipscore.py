"""CLIPScore of generated images against their prompts, with a transformers CLIP from a local folder.

CLIPScore(image, prompt) = 100 * max(cos(E_image, E_text), 0), the convention of torchmetrics'
`CLIPScore` and of text-to-image papers; Hessel et al. (2021) weight the same clipped cosine by
2.5 instead of 100. The reported score is the mean over images. Prompts longer than CLIP's context
(77 tokens) are truncated, with a warning.

Images: every .png / .jpg / .jpeg / .webp under the folder (recursively, name order). The prompt of
an image is the "prompt" of its nami PNG chunk (written by every `nami` generator), else the text
of a same-stem .txt file beside it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from ..errors import NamiError
from ..config import field_default
from .metric_requests import ClipScoreRequest
from .clip_model import ClipEncoder
from ..png import read_png_metadata
from .io import list_images, read_rgb


def clip_score(cosine: torch.Tensor) -> torch.Tensor:
    """(N,) cosine similarities -> (N,) CLIPScores, 100 * max(cos, 0)."""
    return 100.0 * cosine.clamp(min=0)


def prompted_images(folder: str | Path) -> list[tuple[Path, str]]:
    """(image path, prompt) for every image under `folder`; NamiError for an image with no prompt."""
    paths = list_images(folder)
    if not paths:
        raise NamiError(f"{folder} holds no .png/.jpg/.webp images")
    pairs = []
    for path in paths:
        prompt = read_png_metadata(path).get("prompt") if path.suffix.lower() == ".png" else None
        caption = path.with_suffix(".txt")
        if not prompt and caption.is_file():
            prompt = caption.read_text(encoding="utf-8", errors="replace").strip()
        if not isinstance(prompt, str) or not prompt.strip():
            raise NamiError(f"{path} has no prompt: neither a nami PNG chunk nor {caption.name} beside it")
        pairs.append((path, prompt))
    return pairs


def score_images(encoder: ClipEncoder, pairs: list[tuple[Path, str]],
                 batch_size: int = field_default(ClipScoreRequest, "batch_size"),
                 on_batch: Callable[[int, int], None] | None = None) -> list[float]:
    """The CLIPScore of every (image, prompt) pair, in order."""
    scores: list[float] = []
    for first in range(0, len(pairs), batch_size):
        chunk = pairs[first:first + batch_size]
        images = encoder.image_features([read_rgb(p) for p, _ in chunk])
        texts = encoder.text_features([t for _, t in chunk])
        scores.extend(clip_score((images * texts).sum(dim=-1)).tolist())
        if on_batch is not None:
            on_batch(len(scores), len(pairs))
    return scores
