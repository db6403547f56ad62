"""Which blocks of a FLUX-family transformer a converted model keeps.

Syntax of `--keep-blocks`: comma-separated items, `dI` for double-stream block I and `sJ`
for single-stream block J (0-based, as in `transformer_blocks.I` / `single_transformer_blocks.J`),
or inclusive ranges `dI-K` / `sJ-L`. Blocks are listed in source order: double blocks first,
indices increasing, each at most once. Example: `d0-3,d7,s0,s2-5`.

The kept blocks are renumbered from 0 in that order, so the new model's block list is the
kept double blocks followed by the kept single blocks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..config import list_items
from ..errors import NamiError

_ITEM = re.compile(r"^([ds])(\d+)(?:-(\d+))?$")
MAX_BLOCKS = 1024  # blocks of one stream of a source transformer (FLUX.1: 19 double, 38 single)


@dataclass(frozen=True)
class BlockSelection:
    """Kept source block indices: `double` (into transformer_blocks), `single` (into
    single_transformer_blocks), each increasing."""

    double: tuple[int, ...]
    single: tuple[int, ...]

    @classmethod
    def parse(cls, text: str) -> "BlockSelection":
        """`d0,d1,d5,s0,s3` or `d0-7,s0-13` (see module doc)."""
        kept: dict[str, list[int]] = {"d": [], "s": []}
        if not text.strip():
            raise NamiError("--keep-blocks is empty; list blocks like d0,d1,s0-3")
        for item in list_items(text, "--keep-blocks"):
            m = _ITEM.match(item)
            if not m:
                raise NamiError(f"--keep-blocks item {item!r} is not dI, sI or a range dI-J / sI-J")
            kind, first = m.group(1), int(m.group(2))
            last = int(m.group(3)) if m.group(3) is not None else first
            if last < first:
                raise NamiError(f"--keep-blocks range {item!r} runs backwards")
            if last >= MAX_BLOCKS:
                raise NamiError(f"--keep-blocks {item!r}: block indices go up to {MAX_BLOCKS - 1}")
            if kind == "d" and kept["s"]:
                raise NamiError(f"--keep-blocks lists {item} after single blocks; list double blocks first")
            for index in range(first, last + 1):
                if kept[kind] and index <= kept[kind][-1]:
                    raise NamiError(
                        f"--keep-blocks lists {kind}{index} after {kind}{kept[kind][-1]}; "
                        "list each block once, in increasing order"
                    )
                kept[kind].append(index)
        return cls(tuple(kept["d"]), tuple(kept["s"]))

    @classmethod
    def of(cls, keep_blocks: str | None = None, double: int | None = None,
           single: int | None = None) -> "BlockSelection | None":
        """The selection `--keep-blocks` or `--double`/`--single` give; None (every block) without them."""
        if keep_blocks is not None and (double is not None or single is not None):
            raise NamiError("give --keep-blocks or --double/--single, not both")
        if (double is None) != (single is None):
            raise NamiError("--double and --single go together")
        if keep_blocks is not None:
            return cls.parse(keep_blocks)
        return None if double is None else cls.first(double, single)  # type: ignore[arg-type]

    @classmethod
    def first(cls, double: int, single: int) -> "BlockSelection":
        """The first `double` double blocks and the first `single` single blocks."""
        if double < 0 or single < 0:
            raise NamiError(f"--double and --single must be 0 or more, got {double} and {single}")
        if double > MAX_BLOCKS or single > MAX_BLOCKS:
            raise NamiError(f"--double and --single must be at most {MAX_BLOCKS}, got {double} and {single}")
        return cls(tuple(range(double)), tuple(range(single)))

    @property
    def depth(self) -> int:
        return len(self.double) + len(self.single)

    def check(self, num_double: int, num_single: int) -> None:
        """Every kept index exists in a source with these block counts, and at least one block is kept."""
        for kind, kept, available in (("d", self.double, num_double), ("s", self.single, num_single)):
            if kept and kept[-1] >= available:
                raise NamiError(
                    f"block {kind}{kept[-1]} does not exist: the source has {available} "
                    f"{'double' if kind == 'd' else 'single'} blocks ({kind}0-{available - 1})"
                )
        if self.depth == 0:
            raise NamiError("no blocks kept; keep at least one")

    def names(self) -> list[str]:
        return [f"d{i}" for i in self.double] + [f"s{j}" for j in self.single]

    def rename(self, key: str) -> str | None:
        """The converted model's key for a source key: blocks renumbered, None if the block is dropped,
        other keys unchanged."""
        from .flux_state import DOUBLE_PREFIX, SINGLE_PREFIX

        for prefix, kept in ((DOUBLE_PREFIX, self.double), (SINGLE_PREFIX, self.single)):
            if key.startswith(prefix):
                index, rest = key[len(prefix):].split(".", 1)
                i = int(index)
                return f"{prefix}{kept.index(i)}.{rest}" if i in kept else None
        return key


def compact(names: list[str]) -> str:
    """`["d0", "d1", "d2", "s4"]` -> `"d0-2,s4"`: the `--keep-blocks` syntax, ranges folded."""
    parts: list[str] = []
    run: list[tuple[str, int]] = []

    def flush() -> None:
        if run:
            kind, a, b = run[0][0], run[0][1], run[-1][1]
            parts.append(f"{kind}{a}" if a == b else f"{kind}{a}-{b}")
            run.clear()

    for name in names:
        kind, index = name[0], int(name[1:])
        if run and (run[-1][0] != kind or run[-1][1] + 1 != index):
            flush()
        run.append((kind, index))
    flush()
    return ",".join(parts)
