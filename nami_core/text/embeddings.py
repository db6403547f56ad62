"""Encoded prompts as the transformer takes them, and the bookkeeping of their padding."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch


@dataclass
class TextEmbeddings:
    """Encoded prompts: `sequence` (B, T, C), `mask` (B, T) bool, True on real tokens (padding at
    the end), `pooled` (B, P). `lengths` holds each row's real token count on the host when it is
    known without reading the mask back from a device (tokenizers and stored data know it)."""

    sequence: torch.Tensor
    mask: torch.Tensor
    pooled: torch.Tensor
    lengths: tuple[int, ...] | None = None

    def __len__(self) -> int:
        return self.sequence.shape[0]

    @classmethod
    def from_host_mask(cls, sequence: torch.Tensor, mask: torch.Tensor, pooled: torch.Tensor) -> "TextEmbeddings":
        """Embeddings whose `mask` (B, T) is still on the CPU: `lengths` is read off it now."""
        return cls(sequence, mask, pooled, tuple(int(n) for n in mask.sum(1).tolist()))

    def host_lengths(self) -> tuple[int, ...]:
        """Real tokens per row; reads the mask back (a device sync) only when `lengths` is unknown."""
        if self.lengths is None:
            self.lengths = tuple(int(n) for n in self.mask.sum(1).tolist())
        return self.lengths

    def to(self, device=None, dtype=None) -> "TextEmbeddings":
        return TextEmbeddings(
            self.sequence.to(device=device, dtype=dtype),
            self.mask.to(device=device),
            self.pooled.to(device=device, dtype=dtype),
            self.lengths,
        )

    def select(self, rows: Sequence[int] | slice) -> "TextEmbeddings":
        """Rows `rows` (a slice, or host indices with repeats allowed, in that order)."""
        if isinstance(rows, slice):
            lengths = self.lengths[rows] if self.lengths is not None else None
            return TextEmbeddings(self.sequence[rows], self.mask[rows], self.pooled[rows], lengths)
        index = torch.tensor(list(rows), dtype=torch.long, device=self.sequence.device)
        lengths = tuple(self.lengths[i] for i in rows) if self.lengths is not None else None
        return TextEmbeddings(self.sequence[index], self.mask[index], self.pooled[index], lengths)

    @staticmethod
    def cat(items: Sequence["TextEmbeddings"]) -> "TextEmbeddings":
        known = all(e.lengths is not None for e in items)
        return TextEmbeddings(
            torch.cat([e.sequence for e in items]),
            torch.cat([e.mask for e in items]),
            torch.cat([e.pooled for e in items]),
            tuple(n for e in items for n in e.lengths) if known else None,  # type: ignore[union-attr]
        )

    def where(self, keep: torch.Tensor, other: "TextEmbeddings") -> "TextEmbeddings":
        """Per item: self where keep (B,) is True, else other (for prompt dropout). `keep` on the
        CPU keeps the lengths known."""
        k3, k2 = keep[:, None, None], keep[:, None]
        lengths = None
        if self.lengths is not None and other.lengths is not None and keep.device.type == "cpu":
            lengths = tuple(a if k else b for a, b, k in zip(self.lengths, other.lengths, keep.tolist()))
        return TextEmbeddings(
            torch.where(k3, self.sequence, other.sequence),
            torch.where(k2, self.mask, other.mask),
            torch.where(k2, self.pooled, other.pooled),
            lengths,
        )
