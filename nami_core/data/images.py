"""Loading untrusted images: convert what can be converted, skip what cannot, say which and why."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from PIL import Image, ImageOps

# Images above this many pixels are skipped as "huge" before decoding (decompression-bomb guard).
MAX_PIXELS = 64_000_000


@dataclass
class LoadedImage:
    """An RGB image ready for cropping; `conversion` names what was done to it, if anything."""

    image: Image.Image
    conversion: str | None = None


class SkipImage(Exception):
    """The image cannot be used; the message is the reason recorded in the manifest."""


def _to_rgb(img: Image.Image) -> tuple[Image.Image, str | None]:
    mode = img.mode
    if mode == "RGB":
        return img, None
    if mode == "CMYK":
        return img.convert("RGB"), "cmyk->rgb"
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if arr.max() > 255 else 255.0
        arr8 = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(arr8, "L").convert("RGB"), "16-bit->8-bit rgb"
    if mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr8 = ((arr - lo) / max(hi - lo, 1e-12) * 255.0 + 0.5).astype(np.uint8)
        return Image.fromarray(arr8, "L").convert("RGB"), "float->8-bit rgb"
    if mode in ("RGBA", "LA", "PA", "P", "RGBa", "La") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        background.alpha_composite(rgba)
        return background.convert("RGB"), f"{mode.lower()}->rgb (alpha on white)"
    if mode in ("L", "1"):
        return img.convert("RGB"), "grayscale->rgb"
    if mode.startswith("I;16") or mode in ("RGB;16", "RGBA;16"):
        return img.convert("RGB"), "16-bit->8-bit rgb"
    return img.convert("RGB"), f"{mode.lower()}->rgb"


def load_image(source: str | bytes | io.BytesIO | Image.Image, max_pixels: int = MAX_PIXELS) -> LoadedImage:
    """Open and fully decode an image as RGB, applying EXIF orientation.

    Raises `SkipImage` for corrupt, truncated, unreadable or huge images.
    """
    try:
        if isinstance(source, Image.Image):
            img = source
        else:
            fp = io.BytesIO(source) if isinstance(source, bytes) else source
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                img = Image.open(fp)
                width, height = img.size
                if width * height > max_pixels:
                    raise SkipImage(f"huge image ({width}x{height} > {max_pixels} pixels)")
                img.load()
    except SkipImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise SkipImage("huge image (decompression bomb guard)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        text = str(exc).lower()
        if "truncated" in text:
            raise SkipImage("truncated image") from None
        if "cannot identify" in text:
            raise SkipImage("not an image or corrupt") from None
        raise SkipImage(f"unreadable image ({str(exc).splitlines()[0][:80]})") from None
    try:
        img = ImageOps.exif_transpose(img)
    except Exception:  # noqa: BLE001  (broken EXIF must not lose the image)
        pass
    rgb, conversion = _to_rgb(img)
    return LoadedImage(rgb, conversion)


def target_resolution(width: int, height: int, stages: Sequence[int]) -> int | None:
    """The largest stage resolution the image can fill (its short side), or None if it is too small."""
    short = min(width, height)
    fitting = [r for r in stages if r <= short]
    return max(fitting) if fitting else None


def center_crop_resize(img: Image.Image, side: int) -> Image.Image:
    """Centre square crop of the short side, resized to side x side (bicubic, antialiased)."""
    w, h = img.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    img = img.crop((left, top, left + s, top + s))
    if s != side:
        img = img.resize((side, side), Image.Resampling.BICUBIC, reducing_gap=None)
    return img


def cover_crop_resize(img: Image.Image, width: int, height: int) -> Image.Image:
    """Resize to cover width x height, cropping (centred) only the excess over that aspect ratio,
    then to exactly width x height (bicubic, antialiased). A square target is `center_crop_resize`."""
    w, h = img.size
    if w * height > h * width:  # wider than the target: keep the full height
        crop_w, crop_h = min(w, max(1, round(h * width / height))), h
    else:
        crop_w, crop_h = w, min(h, max(1, round(w * height / width)))
    left, top = (w - crop_w) // 2, (h - crop_h) // 2
    if (crop_w, crop_h) != (w, h):
        img = img.crop((left, top, left + crop_w, top + crop_h))
    if (crop_w, crop_h) != (width, height):
        img = img.resize((width, height), Image.Resampling.BICUBIC, reducing_gap=None)
    return img


def to_tensor(images: Sequence[Image.Image]):
    """PIL RGB images of one size -> float tensor (B, 3, H, W) in [-1, 1]."""
    import torch

    arr = np.stack([np.asarray(im, dtype=np.uint8) for im in images])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
