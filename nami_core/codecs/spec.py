"""Codec specs as given on the command line: `pixel`, `pixel:8` (patch 8) or `flux-vae:PATH`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import NamiError


def build_codec(spec: str):
    """A codec from its spec; the FLUX VAE loads from a local diffusers folder."""
    kind, _, arg = spec.partition(":")
    if kind == "pixel":
        from .pixel import PixelCodec

        try:
            patch = int(arg) if arg else 4
        except ValueError:
            raise NamiError(f"pixel codec patch size must be an integer, got {arg!r}") from None
        if patch < 1:
            raise NamiError(f"pixel codec patch size must be positive, got {patch}")
        return PixelCodec(patch_size=patch)
    if kind == "flux-vae":
        if not arg:
            raise NamiError("flux-vae needs a path: --codec flux-vae:PATH")
        from .flux_vae import FluxVAECodec

        return FluxVAECodec.from_vae_path(Path(arg)).eval()
    raise NamiError(f"unknown codec {spec!r}; use pixel, pixel:PATCH or flux-vae:PATH")


def codec_record(spec: str, codec) -> dict[str, Any]:
    """What the manifest stores about the codec (enough to rebuild it)."""
    return {
        "spec": spec,
        "class": type(codec).__name__,
        "channels": codec.channels,
        "downsample": codec.downsample,
        "patch_size": codec.patch_size,
    }


def codec_from_record(record: dict[str, Any], patch_size: int | None = None):
    """Rebuild the codec a dataset was prepared with (optionally with another pixel patch size)."""
    codec = build_codec(record["spec"])
    if patch_size is not None and patch_size != codec.patch_size:
        if record["class"] != "PixelCodec":
            raise NamiError("--patch-size can only change the pixel codec's patch size")
        from .pixel import PixelCodec

        codec = PixelCodec(patch_size=patch_size)
    return codec
