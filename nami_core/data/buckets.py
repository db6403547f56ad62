"""Aspect-ratio buckets (Sana / PixArt style) for `nami prepare-data --buckets` and `nami train`.

A bucket is one aspect ratio with a size at every stage. At the lowest stage (side s_0) it is a
grid of `rows x cols` tokens of p pixels (p: the codec's pixels per token) holding about as many
tokens as the square stage, `rows * cols ~ (s_0 / p)^2`; at stage k it is that grid doubled k
times. So every side is a multiple of p x 2^k at stage k (p x 2^(K-1) at the last one), and each
stage halves into the one below in whole tokens.

The list is fixed by the stages and p: one bucket per ratio of `RATIOS` (width:height, 1:2 to 2:1),
`rows = round(n / sqrt(w/h))`, `cols = round(n * sqrt(w/h))` with `n = s_0 / p`, ratios that round
to the same grid merged, tall to wide. A bucket is named by its last stage's size, `WxH` pixels.

An image goes to the bucket nearest its aspect ratio (by |log(w/h) - log(cols/rows)|; a tie to the
squarer bucket), is stored at the largest stage whose bucket size it covers (never upscaled), and
is cropped (centred) only by the excess over the bucket's aspect ratio before it is resized.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from ..errors import NamiError

# width:height, tall to wide
RATIOS = ((1, 2), (9, 16), (2, 3), (3, 4), (1, 1), (4, 3), (3, 2), (16, 9), (2, 1))


@dataclass(frozen=True)
class Bucket:
    """One aspect ratio: `sizes[k]` is its (height, width) in pixels at stage k, low to high."""

    sizes: tuple[tuple[int, int], ...]

    @property
    def name(self) -> str:
        """`WxH` of the last stage, in pixels."""
        height, width = self.sizes[-1]
        return f"{width}x{height}"

    @property
    def aspect(self) -> float:
        """width / height."""
        height, width = self.sizes[0]
        return width / height

    def size(self, level: int) -> tuple[int, int]:
        """(height, width) in pixels at stage `level`."""
        return self.sizes[level]

    def record(self, counts: dict[int, int]) -> dict:
        """The manifest's record: name, sizes per stage ([height, width]) and the images stored
        at each stage resolution (`counts`, keyed by the stage's side) with their `total`."""
        return {"name": self.name, "sizes": [list(s) for s in self.sizes],
                "counts": {str(r): n for r, n in sorted(counts.items())}, "total": sum(counts.values())}

    @classmethod
    def from_record(cls, record: dict, stages: Sequence[int]) -> "Bucket":
        """The bucket of a manifest record; NamiError when it does not fit `stages`."""
        try:
            sizes = tuple((int(h), int(w)) for h, w in record["sizes"])
            name = str(record["name"])
        except (KeyError, TypeError, ValueError):
            raise NamiError(f"manifest bucket record {record!r} is malformed") from None
        bucket = cls(sizes)
        doubling = all(b == (2 * a[0], 2 * a[1]) for a, b in zip(sizes, sizes[1:]))
        if len(sizes) != len(stages) or not doubling or min(min(s) for s in sizes) < 1 or bucket.name != name:
            raise NamiError(f"manifest bucket {name} has sizes {sizes} that do not double over the stages "
                            f"{','.join(map(str, stages))}")
        return bucket


def _round(x: float) -> int:
    return max(1, int(math.floor(x + 0.5)))


def bucket_table(stages: Sequence[int], pixels_per_token: int) -> list[Bucket]:
    """The fixed bucket list for `stages` (square sides, doubling) and a codec of
    `pixels_per_token`, tall to wide (module docstring)."""
    p = int(pixels_per_token)
    if stages[0] % p:
        raise NamiError(f"the lowest stage ({stages[0]}px) is not a whole number of {p}px tokens")
    n = stages[0] // p
    grids: list[tuple[int, int]] = []
    for w, h in RATIOS:
        root = math.sqrt(w / h)
        grid = (_round(n / root), _round(n * root))
        if grid not in grids:
            grids.append(grid)
    grids.sort(key=lambda g: (g[1] / g[0], g[0]))
    return [Bucket(tuple((rows * p * 2**k, cols * p * 2**k) for k in range(len(stages)))) for rows, cols in grids]


def nearest_bucket(width: int, height: int, buckets: Sequence[Bucket]) -> Bucket:
    """The bucket nearest a width x height image's aspect ratio, in log scale; a tie goes to the
    squarer bucket."""
    target = math.log(width / height)
    return min(buckets, key=lambda b: (round(abs(math.log(b.aspect) - target), 12), abs(math.log(b.aspect))))


def covered_level(width: int, height: int, bucket: Bucket) -> int | None:
    """The largest stage whose `bucket` size a width x height image covers, or None."""
    fitting = [k for k, (h, w) in enumerate(bucket.sizes) if w <= width and h <= height]
    return max(fitting) if fitting else None


def buckets_by_name(buckets: Sequence[Bucket]) -> dict[str, Bucket]:
    return {b.name: b for b in buckets}
