"""Text-encoder specs as given on the command line (`minilm`, `t5:PATH`, `mt5:PATH,mclip:PATH`, a
bare `PATH`), split into their parts without loading anything (`encoder.py` says what each part is)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..config import list_items
from ..errors import NamiError

SEQUENCE_KINDS = ("minilm", "t5", "mt5", "auto")
POOLED_KINDS = ("clip", "mclip", "bert")


@dataclass(frozen=True)
class SpecPart:
    kind: str
    path: str | None


def parse_spec(spec: str) -> tuple[SpecPart, SpecPart | None]:
    """Split a text-encoder spec into its (sequence, pooled) parts; errors name the bad part."""
    if not spec.strip():
        raise NamiError("text encoder spec is empty")
    parts = list_items(spec, "--text-encoder")
    sequence: SpecPart | None = None
    pooled: SpecPart | None = None
    for part in parts:
        kind, sep, path = part.partition(":")
        if part == "minilm":
            item = SpecPart("minilm", None)
        elif sep and kind in SEQUENCE_KINDS + POOLED_KINDS and kind != "minilm":
            if not path:
                raise NamiError(f"text encoder part {part!r} needs a path after the colon")
            item = SpecPart(kind, path)
        elif sep and len(kind) > 1 and kind.isalpha() and kind.islower():
            raise NamiError(
                f"unknown text encoder kind {kind!r} in {spec!r}; use minilm, t5:PATH, mt5:PATH, "
                "clip:PATH, mclip:PATH, bert:PATH or a bare PATH"
            )
        else:
            item = SpecPart("auto", part)
        if item.kind in POOLED_KINDS:
            if pooled is not None:
                raise NamiError(f"text encoder spec {spec!r} names two pooled encoders")
            pooled = item
        else:
            if sequence is not None:
                raise NamiError(f"text encoder spec {spec!r} names two sequence encoders")
            sequence = item
    if sequence is None:
        raise NamiError(f"text encoder spec {spec!r} needs a sequence encoder (t5:, mt5:, minilm or a PATH)")
    return sequence, pooled


def check_spec_paths(spec: str, option: str = "--text-encoder") -> None:
    """NamiError unless every part of `spec` that names a path names an existing folder."""
    for part in parse_spec(spec):
        if part is not None and part.path is not None and not Path(part.path).is_dir():
            missing = not Path(part.path).exists()
            raise NamiError(f"{option} {spec}: {part.path} {'does not exist' if missing else 'is not a folder'}")
