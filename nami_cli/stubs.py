"""Subcommands whose implementation has not landed yet: they say so and exit 2."""

from __future__ import annotations

from nami_core.errors import NamiError


def _not_yet(name: str) -> None:
    raise NamiError(f"`nami {name}` is not yet available in this version")


def bench() -> None:
    """Latency and training-throughput benchmarks (not yet available)."""
    _not_yet("bench")
