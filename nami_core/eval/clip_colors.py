"""GenEval's colour classifier: zero-shot CLIP over ten colours on the object cut out by its mask.

As in GenEval's `evaluate_images.py` (which runs open_clip's ViT-L-14 with OpenAI weights):

* the object is pasted through its binary mask onto a plain #999999 image of the same size
  (pixels outside the mask become grey (153, 153, 153)), then cropped to its box (PIL rounds the
  box to whole pixels), then given to CLIP's image preprocessing;
* the classifier for an object class holds, per colour, the mean of three unit-norm text
  embeddings, "a photo of a {color} {object}", "a photo of a {color}-colored {object}" and
  "a photo of a {color} object", renormalised (clip_benchmark's zero-shot classifier);
* the colour is the argmax of the cosine similarity over GenEval's ten colours.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .clip_model import ClipEncoder
from .geneval import GENEVAL_COLORS

TEMPLATES = ("a photo of a {color} {object}", "a photo of a {color}-colored {object}", "a photo of a {color} object")
BACKGROUND = (153, 153, 153)  # GenEval's default bgcolor "#999"


def object_crop(image, box: Sequence[float], mask: np.ndarray | None):
    """The object as GenEval shows it to CLIP.

    image: PIL RGB (W x H); box: (x0, y0, x1, y1) in pixels; mask: (H, W) bool or None (no paste).
    Returns the PIL crop of the masked image to the box.
    """
    from PIL import Image

    if mask is not None:
        if tuple(mask.shape) != (image.height, image.width):
            raise ValueError(f"mask shape {mask.shape} does not match the image size {image.height}x{image.width}")
        pixels = np.asarray(image.convert("RGB")).copy()
        pixels[~mask.astype(bool)] = BACKGROUND
        image = Image.fromarray(pixels)
    return image.crop(tuple(float(v) for v in box[:4]))


def class_prompts(classname: str, colors: Sequence[str] = GENEVAL_COLORS) -> list[list[str]]:
    """Per colour, its three prompts for objects of `classname`."""
    return [[t.format(color=c, object=classname) for t in TEMPLATES] for c in colors]


def zero_shot_weights(text_features: torch.Tensor) -> torch.Tensor:
    """(n_colors, n_templates, D) unit text embeddings -> (D, n_colors) classifier columns.

    Each column is the mean of its templates' embeddings, renormalised to unit length.
    """
    mean = torch.nn.functional.normalize(text_features, dim=-1).mean(dim=1)
    return torch.nn.functional.normalize(mean, dim=-1).T


class ClipColorClassifier:
    """Names the colour of detected objects; the per-class text classifiers are cached."""

    def __init__(self, path: str | Path, device: torch.device | str = "cpu",
                 colors: Sequence[str] = GENEVAL_COLORS) -> None:
        self.encoder = ClipEncoder(path, device)
        self.colors = tuple(colors)
        self._weights: dict[str, torch.Tensor] = {}

    def weights(self, classname: str) -> torch.Tensor:
        """(D, n_colors) zero-shot classifier for objects of `classname`."""
        if classname not in self._weights:
            prompts = class_prompts(classname, self.colors)
            flat = self.encoder.text_features([p for group in prompts for p in group])
            self._weights[classname] = zero_shot_weights(flat.view(len(self.colors), len(TEMPLATES), -1))
        return self._weights[classname]

    def classify(self, image, objects: Sequence[tuple[Sequence[float], np.ndarray | None]],
                 classname: str) -> list[str]:
        """Colour names of `objects` [(box, mask)] of class `classname` in `image` (PIL RGB)."""
        if not objects:
            return []
        crops = [object_crop(image, box, mask) for box, mask in objects]
        logits = self.encoder.image_features(crops) @ self.weights(classname)
        return [self.colors[i] for i in logits.argmax(dim=1).tolist()]
