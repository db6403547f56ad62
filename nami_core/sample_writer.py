"""Writing one `nami sample` image (PNG + sidecar `.json`) without ever replacing a file unasked.

The PNG is first written completely under a temporary name (`.tmp-NAME.PID`, ignored by readers),
then put in place:

* without `overwrite`, by a hard link, which the file system refuses when the name exists, so even
  two processes writing the same name at once cannot replace each other's picture. A taken name
  (by the PNG or its sidecar) is numbered `NAME-1.png`, `NAME-2.png`, ... when `renumber`, else
  refused with one error line. On a file system without hard links the name is checked, then
  renamed into place;
* with `overwrite`, the sidecar is written first and the PNG renamed over the old one.

A full disk is one error line naming the PNG and the bytes it needs; the image is then not written
at all (no temporary file, no PNG without its sidecar), and every file written before is intact.
"""

from __future__ import annotations

import errno
import io
import os
from pathlib import Path

from .errors import DiskFullError, NamiError
from .files import disk_full, is_disk_full, json_text, temp_sibling, write_json_atomic
from .output_names import is_taken, numbered, sidecar
from .png import save_png

# errno values of a file system that cannot make hard links
NO_HARD_LINKS = {errno.EPERM, errno.EXDEV, errno.EMLINK, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP}


def overwrite_refused(path: Path) -> NamiError:
    taken = path if path.exists() or path.is_symlink() else sidecar(path)
    return NamiError(f"{taken} already exists; pass --overwrite to replace it, or choose another --out")


def write_sample(image, path: str | Path, metadata: dict, overwrite: bool = False, renumber: bool = True) -> Path:
    """Write `image` to `path` (or, when taken and `renumber`, the first free numbered name) with
    `metadata` in its "nami" chunk and in the sidecar `.json`; returns the path written."""
    path = target = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staged = temp_sibling(path)
    try:
        save_png(image, staged, metadata)
        if overwrite:
            write_json_atomic(sidecar(path), metadata, sort_keys=True)
            os.replace(staged, path)
            return path
        target = claim_name(staged, path, renumber)
        try:
            write_json_atomic(sidecar(target), metadata, sort_keys=True)
        except BaseException:
            target.unlink()  # the PNG this call created: no picture is left without its sidecar
            raise
        return target
    except (DiskFullError, OSError) as exc:
        if isinstance(exc, DiskFullError) or is_disk_full(exc):
            raise disk_full(target, encoded_bytes(image, metadata)) from None
        raise
    finally:
        if staged.exists():
            staged.unlink()


def claim_name(staged: Path, path: Path, renumber: bool) -> Path:
    """Give the finished PNG `staged` the first free name from `path` on (only `path` itself
    unless `renumber`); returns that name."""
    copy = 0
    while True:
        target = numbered(path, copy)
        if not is_taken(target) and link_or_move(staged, target):
            return target
        if not renumber:
            raise overwrite_refused(path)
        copy += 1


def link_or_move(staged: Path, target: Path) -> bool:
    """Put `staged` at `target` unless `target` exists (False then)."""
    try:
        os.link(staged, target)
    except FileExistsError:
        return False
    except OSError as exc:
        if exc.errno not in NO_HARD_LINKS:
            raise
        if target.exists():
            return False
        os.replace(staged, target)
    return True


def encoded_bytes(image, metadata: dict) -> int | None:
    """About how many bytes the PNG and its sidecar take (None when the image cannot be encoded)."""
    try:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
    except Exception:
        return None
    text = json_text(metadata, sort_keys=True).encode("utf-8")
    return buffer.tell() + 2 * len(text) + len(str(metadata.get("prompt", "")).encode("utf-8"))
