"""Where a command will write, checked before it starts work: a wrong `--out` or `--json` is one
error line up front, not an OSError naming a temporary file after minutes of sampling or scoring."""

from __future__ import annotations

from pathlib import Path

from .errors import NamiError


def file_in_the_way(path: str | Path) -> Path | None:
    """The nearest existing parent of `path` when it is a file (so nothing can be created below it)."""
    parent = Path(path).parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    return parent if parent.exists() and not parent.is_dir() else None


def check_folder_target(path: str | Path, flag: str) -> None:
    """NamiError unless `path` is a folder or can be created as one."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NamiError(f"{flag} {path} is a file, expected a folder")
    blocker = file_in_the_way(path)
    if blocker is not None:
        raise NamiError(f"{flag} {path}: {blocker} is a file, not a folder")


def check_file_target(path: str | Path, flag: str) -> None:
    """NamiError unless `path` names a file that can be written in an existing folder."""
    path = Path(path)
    if path.is_dir():
        raise NamiError(f"{flag} {path} is a folder; give the path of the file to write")
    blocker = file_in_the_way(path)
    if blocker is not None:
        raise NamiError(f"{flag} {path}: {blocker} is a file, not a folder")
    if not path.parent.is_dir():
        raise NamiError(f"the folder of {flag} {path} does not exist")
