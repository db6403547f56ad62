"""The `shapes` detector: finds flat shapes of the shapes world on a plain background.

For every blob that differs from the background it estimates, per pixel, how much of the pixel the
object covers (`coverage`, 0..1), from which it takes moments that survive the blur of a generative
model because blur is symmetric:

* `skew_y`, the skewness of the vertical profile: a triangle (apex up) puts its mass low (-0.566),
  the symmetric circle, square and diamond give 0;
* `kurtosis_gap`, the mean kurtosis of the two axis profiles minus that of the two diagonal
  profiles (after scaling each axis to unit spread): a square's axis profiles are uniform (1.8)
  and its diagonal profiles triangular (2.4), so -0.6; a diamond, the same square turned by 45
  degrees, +0.6; a circle and the triangle 0.

Blur shrinks both features toward 0, so each class owns the segment from its ideal point to
`BLUR_SHRINK` x that point. The class probability is a softmax over the squared distances to the
segments; the score multiplies it by how plausible the blob is as one shape of that class (distance
to the segment, aspect ratio, covariance tilt, area against spread, size). A clean rendered shape
scores above 0.95; an upside-down triangle, two merged shapes or specks of noise score low.
The color is the palette color nearest to the blob's interior color.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ...data.shapes import CLASSES, COLORS
from ..geneval import Detection

# Ideal (skew_y, kurtosis_gap) per class, for unblurred shapes.
PROTOTYPES = {
    "circle": (0.0, 0.0),
    "square": (0.0, -0.6),
    "triangle": (-2 * math.sqrt(2) / 5, 0.0),
    "diamond": (0.0, 0.6),
}
# Expected sigma_x / sigma_y and area / (sigma_x * sigma_y) of each unblurred shape in a square box.
ASPECTS = {"circle": 1.0, "square": 1.0, "triangle": math.sqrt(18 / 24), "diamond": 1.0}
FILLS = {"circle": 4 * math.pi, "square": 12.0, "triangle": 3 * math.sqrt(48) / 2, "diamond": 12.0}
BLUR_SHRINK = 0.6  # features of blurred shapes may shrink to this fraction of the ideal point
TEMPERATURE = 0.1  # softmax width in feature units
FEATURE_TOLERANCE = 0.2  # distance from the class segment at which plausibility falls to exp(-1/2)
ASPECT_TOLERANCE = 0.3  # in log(aspect)
TILT_TOLERANCE = 0.2  # in correlation of x and y
FILL_RANGE = (0.7, 1.1)  # area / spread within this fraction of the class's value costs nothing
FILL_TOLERANCE = 0.1
LOW_DISTANCE, HIGH_DISTANCE = 25.0, 60.0  # RGB distance from the background: blob pixels, blob seeds
MIN_AREA_FRACTION = 0.005  # blobs covering less of the image are noise
SMALL_AREA_FRACTION = 0.015  # below this the score ramps down to 0 at MIN_AREA_FRACTION
PART_CONFIDENCE = 0.9  # a blob splits by color when each part scores this much as a shape
SPLIT_SHARE = 0.15  # a color must hold this share of a blob's strong pixels to form its own part
LARGE_AREA_FRACTION = (0.3, 0.5)  # the score ramps down to 0 between these

PALETTE_NAMES = tuple(COLORS)
PALETTE = np.array([COLORS[n] for n in PALETTE_NAMES], dtype=np.float64)  # (8, 3)


@dataclass(frozen=True)
class ShapeFeatures:
    """Moments of one blob's coverage map, in pixels (x right, y down, pixel i spans [i, i+1])."""

    area: float  # sum of coverage
    cx: float
    cy: float
    sx: float  # standard deviation along x
    sy: float
    tilt: float  # correlation of x and y
    skew_y: float
    kurtosis_gap: float

    @property
    def fill(self) -> float:
        return self.area / (self.sx * self.sy)


def estimate_background(rgb: np.ndarray) -> np.ndarray:
    """Median color of the one-pixel image border. rgb: (H, W, 3) float -> (3,)."""
    ring = np.concatenate([rgb[0], rgb[-1], rgb[1:-1, 0], rgb[1:-1, -1]])
    return np.median(ring, axis=0)


def find_blobs(distance: np.ndarray) -> tuple[np.ndarray, int]:
    """Label 4-connected blobs of pixels farther than LOW_DISTANCE from the background that hold
    at least one pixel farther than HIGH_DISTANCE. distance: (H, W) -> labels (H, W) int, count."""
    from scipy import ndimage

    labels, count = ndimage.label(distance > LOW_DISTANCE)
    if count == 0:
        return labels, 0
    peaks = ndimage.maximum(distance, labels, index=np.arange(1, count + 1))
    keep = np.concatenate([[False], np.asarray(peaks) > HIGH_DISTANCE])
    labels = np.where(keep[labels], labels, 0)
    relabeled, count = ndimage.label(labels > 0)
    return relabeled, count


def interior_color(rgb: np.ndarray, distance: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Median color of the blob's pixels that differ most from the background. -> (3,)"""
    values = distance[mask]
    core = mask & (distance >= 0.8 * np.percentile(values, 95))
    return np.median(rgb[core], axis=0)


def nearest_palette_color(color: np.ndarray) -> str:
    return PALETTE_NAMES[int(np.argmin(np.linalg.norm(PALETTE - color, axis=1)))]


def palette_line_residuals(pixels: np.ndarray, background: np.ndarray) -> np.ndarray:
    """Distance of each pixel from each background-to-palette-color segment (antialiased edges lie
    on their color's segment). pixels: (N, 3) -> (N, 8)."""
    direction = PALETTE - background  # (8, 3)
    offset = pixels - background  # (N, 3)
    t = np.clip(offset @ direction.T / (direction**2).sum(axis=1), 0.0, 1.0)  # (N, 8)
    closest = t[..., None] * direction[None]  # (N, 8, 3)
    return np.linalg.norm(offset[:, None, :] - closest, axis=-1)


def split_by_color(rgb: np.ndarray, distance: np.ndarray, mask: np.ndarray, background: np.ndarray) -> list[np.ndarray]:
    """Masks (H, W) bool of the parts of a blob that hold different palette colors; [] when the
    blob's strong pixels are (mostly) one color."""
    from scipy import ndimage

    strong = mask & (distance > HIGH_DISTANCE)
    if not strong.any():
        return []
    labels = np.argmin(palette_line_residuals(rgb[strong], background), axis=1)
    shares = np.bincount(labels, minlength=len(PALETTE_NAMES)) / len(labels)
    present = np.nonzero(shares >= SPLIT_SHARE)[0]
    if len(present) < 2:
        return []
    ys, xs = np.nonzero(mask)
    residuals = palette_line_residuals(rgb[ys, xs], background)[:, present]
    owner = np.full(mask.shape, -1)
    owner[ys, xs] = present[np.argmin(residuals, axis=1)]
    parts = []
    for color in present:
        pieces, count = ndimage.label(owner == color)
        parts.extend(pieces == k for k in range(1, count + 1))
    return parts


def coverage(rgb: np.ndarray, region: np.ndarray, color: np.ndarray, background: np.ndarray) -> np.ndarray:
    """Fraction of each pixel covered by an object of `color`, by projecting the pixel onto the
    background-to-color line; 0 outside `region`. rgb: (H, W, 3), region: (H, W) bool -> (H, W)."""
    direction = color - background
    norm = float(direction @ direction)
    if norm < 1e-6:
        return np.zeros(region.shape)
    alpha = np.clip(((rgb - background) @ direction) / norm, 0.0, 1.0)
    return np.where(region, alpha, 0.0)


def shape_features(alpha: np.ndarray) -> ShapeFeatures | None:
    """Moments of a coverage map (H, W); None when it is degenerate (no spread)."""
    ys, xs = np.nonzero(alpha)
    w = alpha[ys, xs]
    area = float(w.sum())
    if area <= 0:
        return None
    x, y = xs + 0.5, ys + 0.5
    cx, cy = float((w * x).sum() / area), float((w * y).sum() / area)
    dx, dy = x - cx, y - cy
    sx, sy = math.sqrt((w * dx**2).sum() / area), math.sqrt((w * dy**2).sum() / area)
    if sx < 1e-3 or sy < 1e-3:
        return None
    tx, ty = dx / sx, dy / sy

    def mean(values):
        return float((w * values).sum() / area)

    def kurtosis(values):
        return mean(values**4) / mean(values**2) ** 2

    u, v = (tx + ty) / math.sqrt(2), (tx - ty) / math.sqrt(2)
    gap = (kurtosis(tx) + kurtosis(ty)) / 2 - (kurtosis(u) + kurtosis(v)) / 2
    return ShapeFeatures(area, cx, cy, sx, sy, mean(tx * ty), mean(ty**3), gap)


def _distance_to_segment(point: np.ndarray, end: np.ndarray) -> float:
    """Distance from `point` to the segment [BLUR_SHRINK * end, end] (a point when end is 0)."""
    start = BLUR_SHRINK * end
    span = end - start
    length = float(span @ span)
    t = 0.0 if length == 0 else float(np.clip((point - start) @ span / length, 0.0, 1.0))
    return float(np.linalg.norm(point - (start + t * span)))


def classify(features: ShapeFeatures, image_area: float) -> tuple[str, float, dict[str, float]]:
    """(class, score in [0, 1], class probabilities) for one blob's features."""
    point = np.array([features.skew_y, features.kurtosis_gap])
    distances = {c: _distance_to_segment(point, np.array(PROTOTYPES[c])) for c in CLASSES}
    logits = np.array([-distances[c] ** 2 / (2 * TEMPERATURE**2) for c in CLASSES])
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    best = CLASSES[int(np.argmax(probs))]
    penalty = (distances[best] / FEATURE_TOLERANCE) ** 2
    penalty += (math.log(features.sx / features.sy / ASPECTS[best]) / ASPECT_TOLERANCE) ** 2
    penalty += (features.tilt / TILT_TOLERANCE) ** 2
    fill = features.fill / FILLS[best]
    outside = max(FILL_RANGE[0] - fill, fill - FILL_RANGE[1], 0.0)
    penalty += (outside / FILL_TOLERANCE) ** 2
    fraction = features.area / image_area
    size = np.clip((fraction - MIN_AREA_FRACTION) / (SMALL_AREA_FRACTION - MIN_AREA_FRACTION), 0.0, 1.0)
    size *= np.clip((LARGE_AREA_FRACTION[1] - fraction) / (LARGE_AREA_FRACTION[1] - LARGE_AREA_FRACTION[0]), 0.0, 1.0)
    score = float(probs.max() * math.exp(-penalty / 2) * size)
    return best, score, {c: float(p) for c, p in zip(CLASSES, probs)}


def box_from_features(cls: str, f: ShapeFeatures) -> tuple[float, float, float, float]:
    """The box (x0, y0, x1, y1) an unblurred shape of class `cls` with these moments fills."""
    if cls == "circle":  # a disc of diameter d has sigma d / 4
        hx, hy = 2 * f.sx, 2 * f.sy
    elif cls == "square":  # uniform over side s: sigma s / sqrt(12)
        hx, hy = math.sqrt(3) * f.sx, math.sqrt(3) * f.sy
    elif cls == "diamond":  # triangular profile over s: sigma s / sqrt(24)
        hx, hy = math.sqrt(6) * f.sx, math.sqrt(6) * f.sy
    else:  # triangle: base sigma s / sqrt(24); height h has sigma h / sqrt(18), centroid 2h/3 below the apex
        hx = math.sqrt(6) * f.sx
        height = math.sqrt(18) * f.sy
        return (f.cx - hx, f.cy - 2 * height / 3, f.cx + hx, f.cy + height / 3)
    return (f.cx - hx, f.cy - hy, f.cx + hx, f.cy + hy)


class ShapesDetector:
    """Detects circles, squares, triangles and diamonds in the shapes world's eight colors."""

    name = "shapes"
    classes = CLASSES

    def detect(self, image) -> list[Detection]:
        """All blobs of a PIL image as Detections (score-sorted, highest first)."""
        rgb = np.asarray(image.convert("RGB"), dtype=np.float64)
        background = estimate_background(rgb)
        distance = np.linalg.norm(rgb - background, axis=-1)
        labels, count = find_blobs(distance)
        detections = []
        for index in range(1, count + 1):
            mask = labels == index
            whole = self._measure(rgb, distance, background, mask, labels == 0)
            parts = [self._measure(rgb, distance, background, part, labels == 0)
                     for part in split_by_color(rgb, distance, mask, background)]
            scores = [p.score for p in parts if p is not None]
            # touching shapes of different colors: every part is a shape of its own, or the parts
            # together explain the blob better than one shape does
            if len(scores) >= 2 and (whole is None or min(scores) >= PART_CONFIDENCE or np.mean(scores) > whole.score):
                detections.extend(p for p in parts if p is not None)
            elif whole is not None:
                detections.append(whole)
        return sorted(detections, key=lambda d: -d.score)

    @staticmethod
    def _measure(rgb: np.ndarray, distance: np.ndarray, background: np.ndarray, mask: np.ndarray,
                 free: np.ndarray) -> Detection | None:
        """One blob (mask (H, W) bool) as a Detection; None for noise. `free`: pixels of no blob."""
        from scipy import ndimage

        image_area = float(mask.size)
        if mask.sum() < MIN_AREA_FRACTION * image_area:
            return None
        color = interior_color(rgb, distance, mask)
        # faint blurred edges just outside the blob count too, but never another blob's pixels
        region = ndimage.binary_dilation(mask, iterations=2) & (free | mask)
        features = shape_features(coverage(rgb, region, color, background))
        if features is None:
            return None
        cls, score, _ = classify(features, image_area)
        return Detection(cls, score, box_from_features(cls, features), mask, nearest_palette_color(color))
