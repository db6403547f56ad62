"""Files and folders written so that a crash or a kill never leaves a partial one.

Everything is written under a temporary sibling name, `.tmp-NAME` (folders that several
processes fill, such as a DDP checkpoint) or `.tmp-NAME.PID` (files and folders one process
writes), and renamed into place. Readers ignore names starting with `.tmp-`.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from .errors import DiskFullError, NamiError

TEMP_PREFIX = ".tmp-"


def free_bytes(path: str | Path) -> int | None:
    """Free space on the file system of `path` (its nearest existing parent), None if unknown."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def human_size(nbytes: int) -> str:
    """1536 -> "1.5 KiB"; MiB from 1 MiB up, GiB from 1 GiB up."""
    for unit, power in (("GiB", 30), ("MiB", 20)):
        if nbytes >= 2**power:
            return f"{nbytes / 2**power:,.1f} {unit}"
    return f"{nbytes / 2**10:,.1f} KiB"


def disk_full(path: str | Path, needed: int | None = None) -> DiskFullError:
    """The one-line error for a write to `path` that ran out of space (`needed`: bytes, if known)."""
    free = free_bytes(path)
    parts = [f"no space left on device writing {path}"]
    if needed is not None:
        parts.append(f"it needs {human_size(needed)}")
    if free is not None:
        parts.append(f"{human_size(free)} free")
    return DiskFullError("; ".join(parts) + " (files written before are intact)")


FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
IO_ERRNOS = (errno.EIO, errno.EROFS, errno.EACCES, errno.EPERM)
# What writers that do not raise OSError say on a failed write: safetensors (`SafetensorError: ... I/O
# error: No space left on device (os error 28)`) and torch.save (`RuntimeError: [enforce fail at
# inline_container.cc] unexpected pos`, `PytorchStreamWriter failed writing file`, `iostream error`).
_OS_ERROR = re.compile(r"os error (\d+)")
_WRITER_FAILURE = re.compile(r"inline_container|PytorchStreamWriter|iostream error|unexpected pos|file write failed")
NEARLY_FULL = 1 << 20  # bytes: a writer's failure with less free than this is a full disk


def is_disk_full(exc: BaseException) -> bool:
    """Whether `exc`, raised by any writer (open/write, PIL, json, safetensors), says the disk is full."""
    if isinstance(exc, OSError):
        return exc.errno in FULL_ERRNOS
    found = _OS_ERROR.search(str(exc))
    return (found is not None and int(found.group(1)) in FULL_ERRNOS) or "No space left on device" in str(exc)


def write_failure(path: str | Path, exc: BaseException, needed: int | None = None) -> NamiError | None:
    """The one-line error for a writer's failure on `path`: a full disk (`disk_full`), another I/O
    error (`cannot write PATH: why`), or None when `exc` is not a failed write. torch.save says
    nothing of the cause, so its failures count as a full disk when less than 1 MiB is left."""
    if isinstance(exc, NamiError):
        return exc
    if is_disk_full(exc):
        return disk_full(path, needed)
    if isinstance(exc, OSError) and exc.errno in IO_ERRNOS:
        return NamiError(f"cannot write {path}: {exc.strerror} (files written before are intact)")
    found = _OS_ERROR.search(str(exc))
    if found is not None:  # safetensors: "I/O error: Input/output error (os error 5)"
        return NamiError(f"cannot write {path}: {os.strerror(int(found.group(1)))} (files written before are intact)")
    if isinstance(exc, RuntimeError) and _WRITER_FAILURE.search(str(exc)):
        free = free_bytes(path)
        if free is not None and free < NEARLY_FULL:
            return disk_full(path, needed)
        return NamiError(f"cannot write {path}: the write failed ({str(exc).splitlines()[0][:120]})")
    return None


@contextmanager
def writing(path: str | Path, needed: int | None = None) -> Iterator[None]:
    """Turn the failure of any writer inside (diffusers' save_pretrained, safetensors, torch.save,
    PIL, json) on a full disk or an I/O error into the one-line error naming `path`."""
    try:
        yield
    except Exception as exc:
        error = write_failure(path, exc, needed)
        if error is None or error is exc:
            raise
        raise error from None


def temp_sibling(path: str | Path, shared: bool = False) -> Path:
    """The temporary name `path` is written under: `.tmp-NAME`, plus `.PID` unless `shared`."""
    path = Path(path)
    suffix = "" if shared else f".{os.getpid()}"
    return path.with_name(f"{TEMP_PREFIX}{path.name}{suffix}")


def write_atomic(path: str | Path, write: Callable[[Path], None], needed: int | None = None) -> None:
    """Call `write(tmp)` to write the file, then rename it to `path`; `tmp` never outlives the call.
    A failed write is one error line naming `path` (`writing`; `needed`: bytes, if known)."""
    path = Path(path)
    if path.name in ("", ".", "..") or path.is_dir():
        raise NamiError(f"{path} is a folder; a file was to be written there (give a file name)")
    tmp = temp_sibling(path)
    try:
        with writing(path, needed):
            write(tmp)
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_same_or_new(path: str | Path, data: bytes, flag: str) -> None:
    """Write `data` to `path` (atomically) unless the file holds it already; NamiError naming
    `flag` when it holds anything else: a folder filled in place (`--images-dir`) is written again
    by a re-run with the same settings, never over files another command or setting wrote."""
    path = Path(path)
    if path.is_file() and path.read_bytes() == data:
        return
    if path.exists() or path.is_symlink():
        raise NamiError(f"{flag} {path.parent}: {path.name} exists and differs from what this run writes there "
                        "(written with other settings, or not by nami); choose a new folder (nothing was replaced)")
    write_bytes_atomic(path, data)


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    write_atomic(path, lambda tmp: tmp.write_bytes(data))


def write_text_atomic(path: str | Path, text: str) -> None:
    write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def json_text(obj: Any, **options) -> str:
    """`obj` as standard JSON: a float that is NaN or infinite (an agreement with one annotator, a
    mean of nothing) is written as null, which every JSON reader reads (json.dumps would write the
    non-standard NaN that strict readers, nami's own included, refuse); non-ASCII text kept, except
    text that is not Unicode (a file name's bytes that are not UTF-8, held as surrogates): then
    escaped, so the file stays UTF-8 and reads back to the same names."""
    obj = finite_or_null(obj)
    text = json.dumps(obj, ensure_ascii=False, allow_nan=False, **options)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(obj, ensure_ascii=True, allow_nan=False, **options)
    return text


def finite_or_null(obj: Any) -> Any:
    """`obj` with every non-finite float (in dicts, lists, tuples) replaced by None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {key: finite_or_null(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_null(value) for value in obj]
    return obj


def write_json_atomic(path: str | Path, obj: Any, sort_keys: bool = False) -> None:
    """`obj` as indented JSON (UTF-8, non-ASCII kept: `json_text`) and a final newline."""
    write_text_atomic(path, json_text(obj, indent=2, sort_keys=sort_keys) + "\n")


def write_jsonl_atomic(path: str | Path, records: Iterable[dict]) -> None:
    """One JSON object per line."""
    write_text_atomic(path, "".join(json_text(r) + "\n" for r in records))


def publish_dir(tmp: str | Path, final: str | Path) -> Path:
    """Move the finished folder `tmp` to `final`, replacing a previous `final` with no moment in
    which neither exists complete (the old one is set aside as `.tmp-old-NAME` first)."""
    tmp, final = Path(tmp), Path(final)
    _apply_umask(tmp)
    if final.exists() and not final.is_dir():
        shutil.rmtree(tmp, ignore_errors=True)
        raise NamiError(f"{final} is a file; a folder was to be written there (choose another path)")
    if final.exists():
        old = final.with_name(f"{TEMP_PREFIX}old-{final.name}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    return final


def _apply_umask(folder: Path) -> None:
    """Give every file under `folder` the usual mode (0666 less the umask): some writers
    (safetensors' `save_file`) create owner-only files, which would keep a shared model private."""
    mask = os.umask(0)
    os.umask(mask)
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            os.chmod(path, 0o666 & ~mask)


def fresh_temp_dir(final: str | Path, shared: bool = False) -> Path:
    """An empty temporary sibling folder for `final` (a stale one from a killed run is removed)."""
    tmp = temp_sibling(final, shared)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp
