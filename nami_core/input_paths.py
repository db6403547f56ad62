"""What a command reads: every input path exists and is of its kind, checked before any work.

A request or config dataclass declares each input field with `reads(kind)`; `check_reads(obj)`
checks them all, each error one line naming the option. Commands call it after the value checks
(a bad `--batch-size` is named before a missing `--data`) and before anything loads. A kind is:

* `FOLDER`, `FILE` or `PATH`: an existing folder, regular file, or either (`.` is the current
  folder, a folder like any other; a named pipe or a device is no file to read);
* `MODEL`: a model directory (`--model DIR`, or `default` for the bundled model): a folder with a
  nami model (`model_index.json`), a public NAMI-T2I release or a converted FLUX transformer;
* a function `kind(path, flag)` that checks the path itself (a CLIP or VQA model folder:
  `eval.weights`);
* a nami artefact `output_targets.Kind` (prepared data, a checkpoint, an adapter, a release),
  recognised by its own files.

The empty path is refused in every kind: on the command line it would read as the current folder.
A repeatable option naming one path twice (however spelled) is refused: it would be read twice.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any, Callable

from .config import option_of
from .errors import NamiError
from .model_paths import resolve_model_dir
from .output_targets import FLUX_INIT, MODEL as MODEL_DIRECTORY, RELEASE, Kind, recognise, special_kind

FOLDER, FILE, PATH, MODEL = "folder", "file", "path", "model"
MODEL_KINDS = (MODEL_DIRECTORY, RELEASE, FLUX_INIT)  # what `--model` may name


def reads(kind: str | Kind, option: str | None = None) -> dict[str, Any]:
    """Field metadata: the field is a path the command reads, of `kind` (see the module doc)."""
    return {"reads": kind, **({"option": option} if option else {})}


def check_input(path: str | Path, flag: str, kind: str | Kind | Callable[[Path, str], Any],
                hint: str | None = None) -> Path:
    """`path` as an input of `kind`; NamiError naming `flag` unless it exists as one (`hint`: what to
    give instead, added to the error). A callable kind checks the path itself: `kind(path, flag)`."""
    def refuse(problem: str) -> NamiError:
        return NamiError(f"{flag} {path} {problem}" + (f"; {hint}" if hint else ""))

    if not str(path).strip():
        raise NamiError(f"{flag} is empty; give the path to read")
    if callable(kind):
        kind(Path(path), flag)
        return Path(path)
    if kind == MODEL:
        return _model(path, flag)
    path = Path(path)
    if not path.exists():
        raise refuse("does not exist")
    if kind == PATH:
        return path
    if kind == FILE:
        if path.is_dir():
            raise refuse("is a folder; give a file")
        if not path.is_file():  # a named pipe or a device: reading it would block or never end
            raise refuse(f"is a special file ({special_kind(path)}); give a regular file")
        return path
    if not path.is_dir():
        raise refuse("is a file; give a folder")
    if isinstance(kind, Kind) and not kind.recognises(path):
        raise refuse(f"is not a {kind.name} (it has no {' or '.join(kind.signature)})")
    return path


def _model(value: str | Path, flag: str) -> Path:
    try:
        path = resolve_model_dir(value)
    except NamiError as exc:
        raise NamiError(f"{flag}: {exc}") from None
    if recognise(path) not in MODEL_KINDS and not (path / "transformer").is_dir():
        raise NamiError(f"{flag} {value} is not a model directory (no model_index.json or transformer/); give a "
                        "folder written by nami (train, convert), or a public NAMI-T2I folder")
    return path


def check_reads(obj: Any) -> None:
    """`check_input` for every field of the dataclass `obj` declared with `reads` (None: not given;
    a list: each path)."""
    for f in fields(obj):
        value = getattr(obj, f.name)
        if value is None or "reads" not in f.metadata:
            continue
        items = value if isinstance(value, (list, tuple)) else (value,)
        for item in items:
            check_input(item, option_of(f), f.metadata["reads"])
        check_distinct(items, option_of(f))


def check_distinct(paths, flag: str) -> None:
    """NamiError when two of `paths` (one repeatable option) are the same file or folder, however
    spelled (`a.txt`, `./a.txt`, a link to it): it would be read, and counted, twice."""
    seen: dict[Path, Any] = {}
    for path in paths:
        real = Path(path).resolve()
        if real in seen:
            raise NamiError(f"{flag} names {seen[real]} twice (also as {path}); give each once")
        seen[real] = path
