"""Fréchet Inception Distance between two image folders, with local Inception weights.

Feature extractor: the TorchScript Inception-v3 `inception-2015-12-05.pt` (the TensorFlow FID
network ported by NVIDIA, used by StyleGAN2-ADA and clean-fid), loaded with `torch.jit.load`, so
no torchvision is needed. It returns the 2048-d pool features for images given as float pixel
values in [0, 255].

Resize, chosen to match published numbers: every image is converted to RGB and resized to
299 x 299 by bilinear interpolation with align_corners=False and **no antialiasing**, on float
pixel values without re-quantisation -- the resize of pytorch-fid, of clean-fid's
"legacy_pytorch" mode and of the StyleGAN2-ADA metrics, which reproduce the TensorFlow FID within
noise. clean-fid's "clean" mode (PIL bicubic with antialiasing) gives different, non-comparable
numbers.

FID = |mu_r - mu_f|^2 + tr(S_r + S_f - 2 (S_r S_f)^(1/2)), with mu / S the mean and the unbiased
(N - 1) covariance of each folder's features; the matrix square root is scipy's `sqrtm`, with
1e-6 added to the diagonals when the product is singular (as pytorch-fid does).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..config import field_default
from ..errors import NamiError, first_line
from .io import list_images, read_rgb
from .metric_requests import FidRequest
from .weights import INCEPTION_HINT, inception_file

INCEPTION_SIZE = 299
BATCH = field_default(FidRequest, "batch_size")  # images per Inception call


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6) -> float:
    """FID between Gaussians N(mu1, sigma1) and N(mu2, sigma2); mu: (D,), sigma: (D, D)."""
    from scipy import linalg

    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    sigma1, sigma2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError("the two feature sets have different dimensions")
    diff = mu1 - mu2
    with warnings.catch_warnings():  # a singular product is handled below, as pytorch-fid does
        warnings.simplefilter("ignore")
        covmean = linalg.sqrtm(sigma1 @ sigma2)
        if not np.isfinite(covmean).all():
            offset = np.eye(sigma1.shape[0]) * eps
            covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    covmean = np.real(covmean)
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, D) features -> mean (D,) and unbiased covariance (D, D); N >= 2."""
    features = np.asarray(features, dtype=np.float64)
    if features.shape[0] < 2:
        raise NamiError(f"FID needs at least 2 images per folder, got {features.shape[0]}")
    return features.mean(axis=0), np.cov(features, rowvar=False, ddof=1).reshape(features.shape[1], -1)


def inception_input(image) -> torch.Tensor:
    """PIL image -> (3, 299, 299) float pixel values in [0, 255] (bilinear, no antialias, no rounding)."""
    rgb = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32)).permute(2, 0, 1)[None]
    if tuple(rgb.shape[-2:]) != (INCEPTION_SIZE, INCEPTION_SIZE):
        rgb = F.interpolate(rgb, size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear", align_corners=False,
                            antialias=False)
    return rgb[0]


class InceptionFeatures:
    """The TorchScript FID Inception: (B, 3, 299, 299) pixel values -> (B, D) features."""

    def __init__(self, path: str | Path | None, device: torch.device | str = "cpu") -> None:
        path = inception_file(path)
        self.device = torch.device(device)
        try:
            self.model = torch.jit.load(str(path), map_location=self.device).eval()
        except Exception as exc:  # a corrupt or non-TorchScript file raises RuntimeError, ValueError, ...
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise NamiError(f"--inception: cannot load {path} as TorchScript ({first}); {INCEPTION_HINT}") from None

    @torch.no_grad()
    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, 299, 299) -> (B, D) features; NamiError when the network fails on them or returns
        anything but B finite feature rows (a damaged or foreign TorchScript file)."""
        try:
            features = self.model(pixels.to(self.device), return_features=True)
        except Exception as exc:  # noqa: BLE001 - TorchScript raises its own errors from the file's code
            raise NamiError(f"--inception: the network fails on a batch ({first_line(exc)}); {INCEPTION_HINT}") from None
        if not isinstance(features, torch.Tensor) or features.dim() == 0 or features.shape[0] != pixels.shape[0]:
            shape = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
            raise NamiError(f"--inception: the network returns {shape} for {pixels.shape[0]} images, not one feature "
                            f"row per image; {INCEPTION_HINT}")
        features = features.reshape(pixels.shape[0], -1).float().cpu()
        if not torch.isfinite(features).all():
            raise NamiError(f"--inception: the network returns non-finite features; {INCEPTION_HINT}")
        return features


def folder_features(folder: str | Path, extractor: Callable[[torch.Tensor], torch.Tensor], batch_size: int = BATCH,
                    on_batch: Callable[[int, int], None] | None = None) -> np.ndarray:
    """(N, D) features of every image under `folder` (recursively, name order)."""
    paths = list_images(folder)
    if len(paths) < 2:
        raise NamiError(f"{folder} holds {len(paths)} image(s); FID needs at least 2")
    chunks = []
    for first in range(0, len(paths), batch_size):
        batch = torch.stack([inception_input(read_rgb(p)) for p in paths[first:first + batch_size]])
        chunks.append(extractor(batch))
        if on_batch is not None:
            on_batch(min(first + batch_size, len(paths)), len(paths))
    return torch.cat(chunks).numpy()


def folder_fid(real: str | Path, fake: str | Path, extractor: Callable[[torch.Tensor], torch.Tensor],
               batch_size: int = BATCH) -> dict:
    """{"fid", "real_images", "fake_images"} between the two folders."""
    real_features = folder_features(real, extractor, batch_size)
    fake_features = folder_features(fake, extractor, batch_size)
    fid = frechet_distance(*feature_statistics(real_features), *feature_statistics(fake_features))
    return {"fid": fid, "real_images": len(real_features), "fake_images": len(fake_features)}
