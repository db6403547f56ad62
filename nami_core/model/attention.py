"""Attention backend selection through diffusers' dispatcher."""

from __future__ import annotations

import importlib.util

from ..config import ATTENTION_BACKENDS as BACKENDS
from ..errors import NamiError


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def resolve_backend(name: str, device_type: str) -> str:
    """Pick the dispatcher backend: auto = xformers on CUDA when importable, else native SDPA."""
    if name not in BACKENDS:
        raise NamiError(f"attention must be one of {', '.join(BACKENDS)}, got {name!r}")
    if name == "auto":
        return "xformers" if device_type == "cuda" and _installed("xformers") else "native"
    if name == "xformers":
        if not _installed("xformers"):
            raise NamiError("attention 'xformers' needs xformers: pip install 'nami[xformers]'")
        if device_type != "cuda":
            raise NamiError("attention 'xformers' needs a CUDA device; use --attention native on CPU")
    if name == "flash":
        if not _installed("flash_attn"):
            raise NamiError("attention 'flash' needs the flash-attn package: pip install flash-attn")
        if device_type != "cuda":
            raise NamiError("attention 'flash' needs a CUDA device; use --attention native on CPU")
    return name


def apply_backend(transformer, name: str, device_type: str) -> str:
    """Resolve `name` and set it on every attention module of `transformer`; returns the backend used."""
    backend = resolve_backend(name, device_type)
    from diffusers.utils import logging as dlogging

    level = dlogging.get_verbosity()
    dlogging.set_verbosity_error()  # the dispatcher logs an "experimental" warning on every call
    try:
        transformer.set_attention_backend(backend)
    finally:
        dlogging.set_verbosity(level)
    return backend
