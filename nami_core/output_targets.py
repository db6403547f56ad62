"""The output policy: where a command may write, checked before it starts work.

Every command that writes a folder or a file calls `check_out_folder` or `check_out_file` in the
core function that writes it, so Python callers get the same rules as the CLI:

* an empty path is refused, and so is the current folder (`.`) as a folder to write;
* a folder is not written where a file is meant (`--json .`) nor a file where a folder is meant
  (`--out x.jpg` for a folder, `--plot x.txt` for a PNG): each file output names its suffixes;
* an output that is one of the command's inputs (checkpoint, run, model, adapter, data, prompts),
  or holds one, or lies inside an input folder, is refused: writing it could replace the input;
* an existing folder is written to only when it is empty or a nami artefact of the same kind,
  recognised by its own files (`KINDS`). A kind that is written whole (a model directory, an
  adapter, a converted FLUX transformer) replaces an existing one only with `overwrite`, by
  writing beside it and swapping (`files.publish_dir`), and never when the old folder holds an
  entry nami does not write there. Kinds filled in place (a run, prepared data, benchmark folders)
  keep their own rules for what they add. Images of `nami sample` go into any folder that is not
  another nami artefact: they never replace a file.

A file output replaces an existing file of its name (atomically), as `--json FILE` means. A
symbolic link to nothing, a loop of links, a special file (a named pipe, a device such as
/dev/null, a socket: replacing it would destroy it, writing to it could block), and a place nami
cannot write to (a read-only file system, a folder without write permission) are refused before
any work, not when the first file is written.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from .errors import NamiError

# Names that say "this is a file": a folder output with one of them is a mistake.
FILE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".pdf", ".svg", ".json",
                 ".jsonl", ".txt", ".csv", ".html", ".htm", ".md", ".safetensors", ".bin", ".pt", ".pth", ".ckpt",
                 ".tar", ".gz", ".zip", ".parquet", ".yaml", ".yml", ".py", ".sh")
IGNORED = (".lock", ".DS_Store")  # entries that do not make a folder non-empty (besides `.tmp-` names)


@dataclass(frozen=True)
class Kind:
    """A kind of folder nami writes. `signature`: glob patterns, any of which found in a folder
    makes it one; `entries`: the top-level names it may hold (kinds written whole); `whole`: written
    in a temporary folder and swapped in; `foreign_ok`: may go into a folder holding other files."""

    name: str
    signature: tuple[str, ...]
    entries: tuple[str, ...] | None = None
    whole: bool = False
    foreign_ok: bool = False

    def recognises(self, folder: Path) -> bool:
        return any(next(folder.glob(pattern), None) is not None for pattern in self.signature)


MODEL = Kind("nami model directory", ("model_index.json",), whole=True, entries=(
    "model_index.json", "transformer", "scheduler", "codec", "text_encoder", "bridge", "vocabulary.json", "mt5",
    "mclip", "checksums.json"))
ADAPTER = Kind("LoRA adapter", ("pytorch_lora_weights.safetensors",), whole=True, entries=(
    "pytorch_lora_weights.safetensors", "adapter_config.json", "nami_lora.json", "vocabulary.json", "ema",
    "checksums.json"))
FLUX_INIT = Kind("converted FLUX transformer", ("convert_report.json",), whole=True, entries=(
    "transformer", "convert_report.json", "checksums.json"))
CHECKPOINT = Kind("training checkpoint", ("trainer_state.json",))
RUN = Kind("training run", ("train_config.json", "metrics.jsonl", "checkpoints/step-*"))
DATA = Kind("prepared data folder", ("prepare.json", "null_text.safetensors", "shards/unit-*"))
RELEASE = Kind("NAMI-T2I release", ("bridge_flow.bin",))
GENEVAL = Kind("GenEval folder", ("[0-9]*/metadata.jsonl", "results.jsonl", "summary.json"))
DPG = Kind("DPG-Bench folder", ("dpg_results.jsonl", "dpg_summary.json"))
NAMI1K_IMAGES = Kind("NAMI-1K image folder", ("manifest.jsonl",))
SAMPLES = Kind("folder of images", (), foreign_ok=True)
SCENES = Kind("folder of rendered shapes scenes", ("[0-9]" * 7 + ".png",))  # prepare-data shapes --images-dir
# Recognised in this order: a checkpoint before the run folder it sits in.
KINDS = (CHECKPOINT, MODEL, ADAPTER, FLUX_INIT, RUN, DATA, RELEASE, GENEVAL, DPG, NAMI1K_IMAGES, SCENES)

Inputs = Mapping[str, "str | Path | list[str | Path] | None"]  # option -> path(s), None when not given


def recognise(folder: str | Path) -> Kind | None:
    """The kind of nami artefact `folder` is, or None (not a folder, or not one of `KINDS`)."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    return next((kind for kind in KINDS if kind.recognises(folder)), None)


def entries_of(folder: Path) -> list[str]:
    """The names in `folder` that count: temporary `.tmp-` names, `IGNORED` ones and empty folders
    (which hold nothing to lose) left out."""
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith(".tmp-") and p.name not in IGNORED
                  and not (p.is_dir() and next(p.iterdir(), None) is None))


def file_in_the_way(path: str | Path) -> Path | None:
    """The nearest existing parent of `path` when it is a file (so nothing can be created below it)."""
    parent = Path(path).parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    return parent if parent.exists() and not parent.is_dir() else None


def _resolved(path: str | Path) -> Path:
    try:
        return Path(os.path.abspath(path)).resolve()
    except RuntimeError:  # Python 3.11 raises it for a loop of symbolic links
        raise NamiError(f"{path} is a loop of symbolic links") from None


def _refuse_empty(path: str | Path, flag: str, what: str) -> Path:
    if not str(path).strip():
        raise NamiError(f"{flag} is empty; give {what}")
    return Path(path)


def check_inputs(path: Path, inputs: Inputs, flag: str, file: bool = False) -> None:
    """Refuse `path` when it is an input, holds one, or lies inside an input folder (for a file
    output: inside an input that is a nami artefact, whose folder would then hold a stranger)."""
    target = _resolved(path)
    given = [(name, value) for name, values in inputs.items()
             for value in (values if isinstance(values, (list, tuple)) else [values])]
    for name, value in given:
        if value is None or not str(value).strip():
            continue
        source = _resolved(value)
        if target == source:
            raise NamiError(f"{flag} {path} is the {name} {value}; writing it would replace the input")
        if target in source.parents:
            raise NamiError(f"{flag} {path} holds the {name} {value}; writing it would replace the input")
        if source in target.parents and (not file or recognise(source) is not None):
            raise NamiError(f"{flag} {path} lies inside the {name} {value}; choose a folder outside it")


def check_out_folder(path: str | Path, kind: Kind, inputs: Inputs | None = None, overwrite: bool = False,
                     flag: str = "--out") -> Path:
    """NamiError unless `path` may be written as a folder of `kind` (see the module's rules)."""
    path = _refuse_empty(path, flag, f"the folder to write the {kind.name} to")
    check_link(path, flag)
    if _resolved(path) == _resolved("."):
        raise NamiError(f"{flag} {path} is the current folder; name a folder for the {kind.name}")
    check_folder_target(path, flag)
    if not path.exists() and path.suffix.lower() in FILE_SUFFIXES:
        raise NamiError(f"{flag} {path} names a {path.suffix} file; the {kind.name} is a folder (give a folder name)")
    check_inputs(path, inputs or {}, flag)
    if path.is_dir() and entries_of(path):
        _check_existing(path, kind, overwrite, flag)
    return path


def _check_existing(path: Path, kind: Kind, overwrite: bool, flag: str) -> None:
    found = recognise(path)
    if found is None:
        if kind.foreign_ok:
            return
        raise NamiError(f"{flag} {path} holds files that are not a {kind.name} (e.g. {entries_of(path)[0]}); "
                        "choose a new or empty folder")
    if found is not kind:
        raise NamiError(f"{flag} {path} is a {found.name}, not a {kind.name}; choose another folder")
    if not kind.whole:
        return
    if not overwrite:
        raise NamiError(f"{flag} {path} already holds a {kind.name}; pass --overwrite to replace it, "
                        "or choose another folder")
    strangers = [name for name in entries_of(path) if name not in (kind.entries or ())]
    if strangers:
        raise NamiError(f"{flag} {path} holds {strangers[0]}, which nami does not write in a {kind.name}; "
                        "move it away or choose another folder (nothing was replaced)")


def check_out_file(path: str | Path, suffixes: tuple[str, ...], what: str, inputs: Inputs | None = None,
                   flag: str = "--out", make_folder: bool = False) -> Path:
    """NamiError unless `path` names a `what` file (one of `suffixes`) that can be written:
    not a folder, not an input, its folder existing (or creatable, with `make_folder`)."""
    path = _refuse_empty(path, flag, f"the {what} file to write")
    if path.is_dir():
        raise NamiError(f"{flag} {path} is a folder; give the path of the file to write")
    if path.suffix.lower() not in suffixes:
        raise NamiError(f"{flag} {path}: the {what} is written as {' or '.join(suffixes)}; "
                        f"give a name ending in {suffixes[0]}")
    check_file_target(path, flag, make_folder)
    check_inputs(path, inputs or {}, flag, file=True)
    return path


def check_folder_target(path: str | Path, flag: str) -> None:
    """NamiError unless `path` is a folder or can be created as one (the place alone: no kind, no inputs)."""
    path = Path(path)
    check_link(path, flag)
    if path.exists() and not path.is_dir():
        raise NamiError(f"{flag} {path} is a file, expected a folder")
    blocker = file_in_the_way(path)
    if blocker is not None:
        raise NamiError(f"{flag} {path}: {blocker} is a file, not a folder")
    check_writable(path, flag)


def check_file_target(path: str | Path, flag: str, make_folder: bool = False) -> None:
    """NamiError unless `path` names a file that can be written in an existing folder (or one that
    can be created, with `make_folder`); the place alone: any suffix, no inputs."""
    path = Path(path)
    check_link(path, flag)
    if path.is_dir():
        raise NamiError(f"{flag} {path} is a folder; give the path of the file to write")
    blocker = file_in_the_way(path)
    if blocker is not None:
        raise NamiError(f"{flag} {path}: {blocker} is a file, not a folder")
    if not make_folder and not path.parent.is_dir():
        raise NamiError(f"the folder of {flag} {path} does not exist")
    check_writable(path.parent, flag, path)


def check_link(path: Path, flag: str) -> None:
    """NamiError when `path` is a symbolic link to nothing (writing through it would fail late), or
    names a special file (a named pipe, a device, a socket): writing would replace it or block."""
    if path.is_symlink() and not path.exists():
        raise NamiError(f"{flag} {path} is a symbolic link to {os.readlink(path)}, which does not exist (or loops)")
    if path.exists() and not path.is_dir() and not path.is_file():
        raise NamiError(f"{flag} {path} is a special file ({special_kind(path)}), not a file nami may write; "
                        "give the path of a regular file")


def special_kind(path: Path) -> str:
    """What a path that is neither a folder nor a regular file is, in words."""
    import stat

    mode = path.stat().st_mode
    kinds = ((stat.S_ISFIFO, "a named pipe"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
             (stat.S_ISSOCK, "a socket"))
    return next((words for test, words in kinds if test(mode)), "not a regular file")


def check_writable(path: Path, flag: str, named: Path | None = None) -> None:
    """NamiError unless the folder `path`, or its nearest existing parent, can be written to: a
    read-only file system or a folder without write permission is refused before any work."""
    folder = Path(path)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir() or os.access(folder, os.W_OK | os.X_OK):
        return
    read_only = bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    reason = "a read-only file system" if read_only else "no permission to write there"
    raise NamiError(f"{flag} {named or path}: cannot write in {folder} ({reason})")
