"""Codec specs as given on the command line: `pixel`, `pixel:8` (patch 8) or `flux-vae:PATH`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import NamiError


MAX_PATCH = 64  # pixels per side of a pixel codec's token


def parse_codec(spec: str, option: str = "--codec") -> tuple[str, int | Path]:
    """("pixel", patch) or ("flux-vae", folder) from a codec spec, without loading anything;
    NamiError naming `option` and the problem otherwise (the VAE folder must exist)."""
    kind, _, arg = spec.partition(":")
    if kind == "pixel":
        try:
            patch = int(arg) if arg else 4
        except ValueError:
            raise NamiError(f"{option} {spec}: the pixel codec's patch size must be an integer, got {arg!r}") from None
        if not 1 <= patch <= MAX_PATCH:
            raise NamiError(f"{option} {spec}: the pixel codec's patch size must be 1 to {MAX_PATCH}, got {patch}")
        return kind, patch
    if kind == "flux-vae":
        if not arg.strip():
            raise NamiError(f"{option} {spec}: flux-vae needs a path, flux-vae:PATH")
        if not Path(arg).is_dir():
            raise NamiError(f"{option} {spec}: {arg} {'is not a folder' if Path(arg).exists() else 'does not exist'}")
        return kind, Path(arg)
    raise NamiError(f"{option}: unknown codec {spec!r}; use pixel, pixel:PATCH or flux-vae:PATH")


def build_codec(spec: str):
    """A codec from its spec; the FLUX VAE loads from a local diffusers folder."""
    kind, arg = parse_codec(spec)
    if kind == "pixel":
        from .pixel import PixelCodec

        return PixelCodec(patch_size=arg)
    from .flux_vae import FluxVAECodec

    return FluxVAECodec.from_vae_path(arg).eval()


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
