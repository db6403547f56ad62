"""The `mask2former:PATH` detector: a transformers Mask2Former (COCO instance) run the way GenEval runs mmdet's.

GenEval (`evaluation/evaluate_images.py`) calls mmdet 2.x `inference_detector` with the config
`mask2former_swin-s-p4-w7-224_lsj_8x2_50e_coco.py`. This module reproduces that test pipeline and
mmdet's instance post-processing (`MaskFormerFusionHead.instance_postprocess`) around the network
of transformers' `Mask2FormerForUniversalSegmentation`; the transformers post-processor is not used.

Pre-processing (`preprocess`):
  * keep-ratio resize into (1333, 800): factor = min(1333 / long side, 800 / short side), new side =
    int(side * factor + 0.5); bilinear with half-pixel centres and no antialiasing (cv2's
    INTER_LINEAR), rounded back to uint8 as mmcv's uint8 resize does;
  * pad right and bottom to a multiple of 32 with the value 128 (mmdet's `pad_val` for this config,
    applied before normalisation);
  * RGB, normalised with mean (123.675, 116.28, 103.53) and std (58.395, 57.12, 57.375).

Post-processing (`upsample_mask_logits`, `instance_postprocess`):
  * mask logits (1/4 resolution) are upsampled bilinearly (align_corners=False) to the padded size,
    cropped to the resized image, and upsampled bilinearly again to the original image size;
  * class probabilities = softmax over the 80 classes + "no object", the last column dropped;
  * the top 100 (query, class) pairs of the flattened (queries x classes) scores are kept;
  * binary mask = mask logit > 0; mask score = mean of sigmoid(mask logit) inside the binary mask
    (sum / (area + 1e-6)); detection score = class probability x mask score;
  * box = tight box of the binary mask as (x0, y0, x1 + 1, y1 + 1) in pixels (all zeros when empty);
  * class index i is GenEval's object name i (`coco.GENEVAL_OBJECT_NAMES`).

Colours: for every detection GenEval could compare (score above `THRESHOLD`, the top `MAX_OBJECTS`
of its class), the optional `ClipColorClassifier` names its colour; lower-scoring detections keep
color=None since GenEval's rules never look at them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ...errors import NamiError
from .. import geneval as ge
from ..coco import GENEVAL_OBJECT_NAMES
from ..weights import check_model_folder, load_pretrained

SCALE = (1333, 800)
SIZE_DIVISOR = 32
PAD_VALUE = 128.0
MEAN = (123.675, 116.28, 103.53)
STD = (58.395, 57.12, 57.375)
MAX_PER_IMAGE = 100
MASK2FORMER_HINT = ("save a transformers Mask2Former COCO-instance model there, e.g. "
                    "facebook/mask2former-swin-small-coco-instance via save_pretrained(PATH)")


def rescale_size(width: int, height: int, scale: tuple[int, int] = SCALE) -> tuple[int, int]:
    """mmcv's keep-ratio size: the largest (w, h) with the long side <= max(scale), short <= min(scale)."""
    factor = min(max(scale) / max(height, width), min(scale) / min(height, width))
    return int(width * factor + 0.5), int(height * factor + 0.5)


def preprocess(image, scale: tuple[int, int] = SCALE) -> tuple[torch.Tensor, tuple[int, int]]:
    """PIL RGB image -> (pixel_values (1, 3, Hp, Wp) float32, (h, w) of the resized image inside the padding)."""
    rgb = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32)).permute(2, 0, 1)[None]
    width, height = rescale_size(image.width, image.height, scale)
    if (height, width) != tuple(rgb.shape[-2:]):
        rgb = F.interpolate(rgb, size=(height, width), mode="bilinear", align_corners=False, antialias=False)
        rgb = rgb.round().clamp(0, 255)
    padded_h = -(-height // SIZE_DIVISOR) * SIZE_DIVISOR
    padded_w = -(-width // SIZE_DIVISOR) * SIZE_DIVISOR
    rgb = F.pad(rgb, (0, padded_w - width, 0, padded_h - height), value=PAD_VALUE)
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (rgb - mean) / std, (height, width)


def upsample_mask_logits(mask_logits: torch.Tensor, padded: tuple[int, int], resized: tuple[int, int],
                         original: tuple[int, int]) -> torch.Tensor:
    """(Q, h, w) low-resolution mask logits -> (Q, H, W) logits at the original image size (mmdet's path)."""
    x = F.interpolate(mask_logits[None].float(), size=padded, mode="bilinear", align_corners=False)
    x = x[:, :, :resized[0], :resized[1]]
    return F.interpolate(x, size=original, mode="bilinear", align_corners=False)[0]


def masks_to_boxes(masks: torch.Tensor) -> torch.Tensor:
    """(N, H, W) bool -> (N, 4) float boxes (x0, y0, x1 + 1, y1 + 1); an empty mask gives zeros."""
    boxes = torch.zeros(masks.shape[0], 4)
    columns = masks.any(dim=1)  # (N, W)
    rows = masks.any(dim=2)  # (N, H)
    for i in range(masks.shape[0]):
        xs = torch.nonzero(columns[i]).flatten()
        ys = torch.nonzero(rows[i]).flatten()
        if len(xs) and len(ys):
            boxes[i] = torch.tensor([xs[0], ys[0], xs[-1] + 1, ys[-1] + 1], dtype=torch.float32)
    return boxes


@dataclass
class Instances:
    """Instance predictions of one image, in descending order of class probability (the top-k order).

    labels: (N,) class indices; scores: (N,) detection scores; boxes: (N, 4) pixel boxes;
    masks: (N, H, W) bool.
    """

    labels: torch.Tensor
    scores: torch.Tensor
    boxes: torch.Tensor
    masks: torch.Tensor


def instance_postprocess(class_logits: torch.Tensor, mask_logits: torch.Tensor,
                         max_per_image: int = MAX_PER_IMAGE) -> Instances:
    """mmdet's instance post-processing of one image.

    class_logits: (Q, K + 1), the last column "no object"; mask_logits: (Q, H, W) at image size.
    Keeps the `max_per_image` best (query, class) pairs of the flattened (Q x K) class
    probabilities (flat index = query * K + class), each scored by class probability x mean mask
    probability inside its binary mask (logit > 0). Ties keep the lower flat index first.
    """
    num_classes = class_logits.shape[1] - 1
    probs = F.softmax(class_logits.float(), dim=-1)[:, :-1]
    flat = probs.flatten()
    k = min(max_per_image, flat.numel())
    order = torch.argsort(-flat, stable=True)[:k]
    top_scores = flat[order]
    labels = order % num_classes
    queries = order // num_classes
    binary = mask_logits > 0  # (Q, H, W)
    area = binary.flatten(1).sum(1).float()
    inside = (torch.sigmoid(mask_logits.float()) * binary).flatten(1).sum(1)
    mask_scores = inside / (area + 1e-6)  # (Q,)
    masks = binary[queries]
    return Instances(labels=labels, scores=top_scores * mask_scores[queries], boxes=masks_to_boxes(masks),
                     masks=masks)


class Mask2FormerDetector:
    """GenEval's detector on transformers Mask2Former weights (80 COCO classes, GenEval names)."""

    name = "mask2former"
    classes = GENEVAL_OBJECT_NAMES

    def __init__(self, path: str | Path, colors=None, device: torch.device | str = "cpu",
                 scale: tuple[int, int] = SCALE, threshold: float = ge.THRESHOLD,
                 max_objects: int = ge.MAX_OBJECTS) -> None:
        from transformers import Mask2FormerForUniversalSegmentation

        what = "mask2former detector"
        folder = check_model_folder(path, what, MASK2FORMER_HINT)
        self.device = torch.device(device)
        self.model = load_pretrained(Mask2FormerForUniversalSegmentation, folder, what, MASK2FORMER_HINT).to(self.device)
        labels = int(getattr(self.model.config, "num_labels", 0))
        if labels != len(GENEVAL_OBJECT_NAMES):
            raise NamiError(f"{what}: {folder} predicts {labels} classes; GenEval needs a COCO-instance model "
                            f"with {len(GENEVAL_OBJECT_NAMES)} classes; {MASK2FORMER_HINT}")
        self.colors = colors
        self.scale = scale
        self.threshold = threshold
        self.max_objects = max_objects

    @torch.no_grad()
    def instances(self, image) -> Instances:
        """Mask2Former + mmdet post-processing on one PIL RGB image."""
        pixels, resized = preprocess(image, self.scale)
        out = self.model(pixel_values=pixels.to(self.device, dtype=self.model.dtype))
        masks = upsample_mask_logits(out.masks_queries_logits[0].float().cpu(), tuple(pixels.shape[-2:]), resized,
                                     (image.height, image.width))
        return instance_postprocess(out.class_queries_logits[0].float().cpu(), masks)

    def detect(self, image) -> list[ge.Detection]:
        found = self.instances(image)
        detections = [ge.Detection(self.classes[int(label)], float(score), tuple(float(v) for v in box), mask.numpy())
                      for label, score, box, mask in zip(found.labels, found.scores, found.boxes, found.masks)]
        if self.colors is not None:
            self.name_colors(image, detections)
        return detections

    def name_colors(self, image, detections: list[ge.Detection]) -> None:
        """Set `color` on the detections GenEval's rules can compare (above threshold, top per class)."""
        by_class: dict[str, list[ge.Detection]] = {}
        for det in sorted(detections, key=lambda d: -d.score):
            if det.score > self.threshold and len(by_class.setdefault(det.cls, [])) < self.max_objects:
                by_class[det.cls].append(det)
        for cls, dets in by_class.items():
            names = self.colors.classify(image, [(d.box, d.mask) for d in dets], cls)
            for det, color in zip(dets, names):
                det.color = color
