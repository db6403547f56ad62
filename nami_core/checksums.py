"""The integrity record of every folder nami writes, and its verification.

A model directory, a LoRA adapter, a converted FLUX transformer and a training checkpoint carry
`checksums.json`: the size and sha256 of every file in the folder (subfolders included; symlinks,
which point outside it, and temporary `.tmp-` names left out), written just before the folder is
renamed into place (`publish_artefact`). Reading one back, `record_problem` says, in a few words
naming the file, what is missing, truncated or altered. Prepared shards carry the same size and
sha256 in their data's manifest.

Hashing a large model or data set on every run would cost minutes, so a file whose sha256 was
verified once is remembered in a cache keyed by its path, size, modification time and inode
(`NAMI_CACHE_DIR`, by default `~/.cache/nami`, file `verified-files.json`): it is hashed again
only when one of them changed. A cache that cannot be read or written is ignored.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

from .errors import NamiError
from .files import TEMP_PREFIX, fresh_temp_dir, publish_dir, write_json_atomic, writing

MANIFEST = "checksums.json"
CHUNK = 8 << 20
CACHE_FILE = "verified-files.json"
CACHE_LIMIT = 200_000  # entries kept; the oldest are dropped beyond it


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def folder_files(folder: Path) -> list[str]:
    """Every regular file under `folder` as a relative POSIX path, sorted: symlinks, the record
    itself and temporary names left out."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith(TEMP_PREFIX) and not os.path.islink(os.path.join(root, d)))
        for name in files:
            path = Path(root, name)
            if name.startswith(TEMP_PREFIX) or path.is_symlink():
                continue
            relative = path.relative_to(folder).as_posix()
            if relative != MANIFEST:
                found.append(relative)
    return sorted(found)


def write_record(folder: str | Path) -> dict:
    """Write `folder`/checksums.json (size and sha256 of every file); returns its entries."""
    folder = Path(folder)
    entries = {name: {"bytes": (folder / name).stat().st_size, "sha256": file_sha256(folder / name)}
               for name in folder_files(folder)}
    write_json_atomic(folder / MANIFEST, {"algorithm": "sha256", "files": entries})
    return entries


def publish_artefact(tmp: str | Path, final: str | Path) -> Path:
    """Write the integrity record of the finished folder `tmp`, then put it at `final` (`publish_dir`)."""
    write_record(tmp)
    return publish_dir(tmp, final)


@contextmanager
def new_artefact(out: str | Path) -> Iterator[Path]:
    """A fresh temporary folder beside `out` to write an artefact into. On leaving, its record is
    written and it is swapped in (`publish_artefact`); a failed write (a full disk: one line naming
    `out`, `files.writing`) leaves neither the temporary folder nor a partial `out`."""
    tmp = fresh_temp_dir(out)
    try:
        with writing(out):
            yield tmp
            publish_artefact(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def read_record(folder: str | Path) -> dict[str, dict] | None:
    """The entries of `folder`/checksums.json; None when the folder has none (written before
    records existed); NamiError naming the file when it is unreadable."""
    from .user_files import parse_json

    path = Path(folder) / MANIFEST
    if not path.is_file():
        return None
    try:
        data = parse_json(path.read_text(encoding="utf-8"), str(path))
    except (OSError, UnicodeDecodeError):
        raise NamiError(f"{path} is unreadable (damaged?)") from None
    entries = data.get("files") if isinstance(data, dict) else None
    if not isinstance(entries, dict) or not entries or not all(isinstance(e, dict) for e in entries.values()):
        raise NamiError(f"{path} lists no files (damaged?)")
    return entries


def verify_artefact(folder: str | Path, what: str, prefix: str = "") -> bool:
    """Raise NamiError (`WHAT FOLDER is damaged: NAME does not match its checksum ...`) unless the
    files `folder`/checksums.json lists are as written; only those under `prefix` (a subfolder,
    "ema/") when given. False when the folder has no record (written before records existed)."""
    entries = read_record(folder)
    if entries is None:
        return False
    names = [name for name in entries if name.startswith(prefix)]
    problem = record_problem(folder, entries, names)
    if problem is not None:
        raise NamiError(f"{what} {folder} is damaged: {problem}; write it again (or restore it)")
    return True


def record_problem(folder: str | Path, entries: dict[str, dict], names: Iterable[str] | None = None,
                   cache: bool = True) -> str | None:
    """What is wrong with the files of `folder` that `entries` (name -> bytes, sha256) list, in a
    few words naming the first bad one, or None when all match. `names`: check only these."""
    folder = Path(folder)
    verified = VerifiedFiles.load() if cache else None
    try:
        for name in entries if names is None else names:
            problem = file_problem(folder / name, entries[name], verified)
            if problem is not None:
                return f"{name} {problem}"
    finally:
        if verified is not None:
            verified.save()
    return None


def file_problem(path: Path, entry: dict, verified: "VerifiedFiles | None" = None) -> str | None:
    """`is missing`, `has N bytes, M were written (truncated?)`, `does not match its checksum
    (altered after it was written)`, or None when the file is as written."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return "is missing"
    if stat.st_size != entry.get("bytes"):
        return f"has {stat.st_size} bytes, {entry.get('bytes')} were written (truncated?)"
    sha = entry.get("sha256")
    if verified is not None and verified.knows(path, stat, sha):
        return None
    if file_sha256(path) != sha:
        return "does not match its checksum (altered after it was written)"
    if verified is not None:
        verified.add(path, stat, sha)
    return None


class VerifiedFiles:
    """The cache of files whose sha256 matched: absolute path -> (bytes, mtime_ns, inode, sha256)."""

    def __init__(self, path: Path | None, entries: dict[str, list]) -> None:
        self.path = path
        self.entries = entries
        self.changed = False

    @staticmethod
    def location() -> Path:
        root = os.environ.get("NAMI_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "nami")
        return Path(root) / CACHE_FILE

    @classmethod
    def load(cls) -> "VerifiedFiles":
        path = cls.location()
        try:
            entries = json.loads(path.read_text(encoding="utf-8")).get("files", {})
        except (OSError, ValueError, AttributeError):
            entries = {}
        return cls(path, entries if isinstance(entries, dict) else {})

    @staticmethod
    def _key(path: Path) -> str:
        return str(Path(path).resolve())

    def knows(self, path: Path, stat: os.stat_result, sha: str | None) -> bool:
        return self.entries.get(self._key(path)) == [stat.st_size, stat.st_mtime_ns, stat.st_ino, sha]

    def add(self, path: Path, stat: os.stat_result, sha: str) -> None:
        key = self._key(path)
        self.entries.pop(key, None)  # re-inserted last: the newest entries survive the limit
        self.entries[key] = [stat.st_size, stat.st_mtime_ns, stat.st_ino, sha]
        self.changed = True

    def save(self) -> None:
        if not self.changed or self.path is None:
            return
        entries = dict(list(self.entries.items())[-CACHE_LIMIT:])
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.path, {"version": 1, "files": entries})
        except (OSError, NamiError):
            pass  # a cache only: the next run hashes again
        self.changed = False
