"""Subcommands whose implementation has not landed yet: they say so and exit 2."""

from __future__ import annotations

from nami_core.errors import NamiError


def _not_yet(name: str) -> None:
    raise NamiError(f"`nami {name}` is not yet available in this version")


def prepare_data() -> None:
    """Turn images and captions into multi-resolution latents and text embeddings (not yet available)."""
    _not_yet("prepare-data")


def train() -> None:
    """Train a NAMI model with the multi-resolution objective (not yet available)."""
    _not_yet("train")


def bench() -> None:
    """Latency and training-throughput benchmarks (not yet available)."""
    _not_yet("bench")


def evaluate() -> None:
    """GenEval, DPG-Bench and NAMI-1K evaluation (not yet available)."""
    _not_yet("eval")
