"""Is a prepared shard whole? A cheap check of its safetensors header against its size and rows.

A `.safetensors` file is an 8-byte little-endian header length, a JSON header giving each
tensor's dtype, shape and byte range, then the tensor bytes. A whole shard is exactly as long as
its header says, holds the tensors `store.write_shard` writes, as many rows as its unit recorded
and, when its unit recorded one, the same number of bytes as when it was written. The check reads
the header alone, never the tensors, so a re-run of `nami prepare-data` can afford it for every
finished unit.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from ..errors import NamiError, first_line

SHARD_TENSORS = ("latents", "text", "mask", "pooled")
MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit on the JSON header


def read_safetensors_header(path: Path, size: int) -> tuple[dict, int]:
    """The parsed JSON header and the file length it implies; ValueError when it cannot be parsed."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError("truncated header")
        length = int.from_bytes(head, "little")
        if length > min(size - 8, MAX_HEADER_BYTES):
            raise ValueError("truncated header")
        header = json.loads(f.read(length))
    if not isinstance(header, dict):
        raise ValueError("unreadable header")
    ends = [int(t["data_offsets"][1]) for name, t in header.items() if name != "__metadata__"]
    return header, 8 + length + max(ends, default=0)


def shard_problem(path: Path, rows: int | None = None, size: int | None = None) -> str | None:
    """What is wrong with the shard at `path`, in a few words ("missing", "truncated: 10 of 20
    bytes", other rows or size than recorded), or None when it looks whole. `rows` and `size` are what its unit
    recorded when it was written, if known."""
    try:
        actual = path.stat().st_size
    except FileNotFoundError:
        return "missing"
    except OSError as exc:
        return f"unreadable: {exc.strerror}"
    if size is not None and actual != size:
        return f"{actual:,} bytes, {size:,} when written"
    try:
        header, implied = read_safetensors_header(path, actual)
    except OSError as exc:
        return f"unreadable: {exc.strerror}"
    except (ValueError, KeyError, TypeError, IndexError) as exc:  # JSONDecodeError is a ValueError
        return str(exc) if str(exc) in ("truncated header", "unreadable header") else "unreadable header"
    if implied != actual:
        return f"truncated: {actual:,} of {implied:,} bytes" if actual < implied else "longer than its header says"
    missing = [name for name in SHARD_TENSORS if name not in header]
    if missing:
        return f"no {missing[0]} tensor"
    if rows is not None:
        stored = header["latents"].get("shape", [None])[0]
        if stored != rows:
            return f"{stored} rows, not {rows}"
    return None


def data_folder(path: Path) -> Path:
    """The prepared folder a shard belongs to (`DATA/shards/x.safetensors` or `DATA/null_text...`)."""
    return path.parent.parent if path.parent.name == "shards" else path.parent


def shard_state(name: str | Path, problem: str) -> str:
    """`NAME is missing` or `NAME is damaged (PROBLEM)`."""
    return f"{name} is missing" if problem == "missing" else f"{name} is damaged ({problem})"


def damaged_shard(path: Path, problem: str) -> NamiError:
    """The one-line error for a shard that cannot be read, with the way to repair it."""
    folder = data_folder(Path(path))
    return NamiError(f"data {shard_state(f'shard {path}', problem)}; re-run `nami prepare-data` with the same "
                     f"source and --out {folder} to redo it")


def read_failure(exc: BaseException) -> str:
    """A safetensors reading error in a few words: `Error while deserializing header: X` -> `X`."""
    return re.sub(r"^Error while deserializing header:\s*", "", first_line(exc))
