"""Whether a training checkpoint is intact: a sha256 manifest, or a structural check without one.

The main rank writes `checksums.json` (`nami_core.checksums`, the record every nami artefact
carries) into a checkpoint's temporary folder just before it is renamed into place: the size and
sha256 of every file in the folder, sharded subfolders included. `verify_checkpoint` reads every
file back against it. Checkpoints written before the
manifest existed are checked for structure instead: the trainer state's keys, every safetensors
header against its file's size, every torch file's zip directory, the model and optimizer files
present. Either way a damaged checkpoint raises `DamagedCheckpoint`, whose message names the file.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from ..checksums import MANIFEST, read_record, record_problem
from ..data.shard_check import read_safetensors_header
from ..errors import NamiError
from ..user_files import parse_json

TRAINER_STATE = "trainer_state.json"
TRAINER_STATE_KEYS = ("step", "nan_skipped", "nan_streak", "weights")
TORCH_SUFFIXES = (".bin", ".pt", ".pkl")
MODEL_FILES = ("model.safetensors", "pytorch_model_fsdp_0/.metadata")
OPTIMIZER_FILES = ("optimizer.bin", "optimizer_0/.metadata")


class DamagedCheckpoint(NamiError):
    """A checkpoint whose files are missing, truncated or altered; `reason` names the file."""

    def __init__(self, checkpoint: Path, reason: str) -> None:
        super().__init__(f"checkpoint {checkpoint} is damaged: {reason}")
        self.checkpoint = Path(checkpoint)
        self.reason = reason


def verify_checkpoint(folder: Path) -> None:
    """Raise `DamagedCheckpoint` unless `folder` is intact (by its manifest, or by structure)."""
    folder = Path(folder)
    if (folder / MANIFEST).is_file():
        _verify_manifest(folder)
    else:
        _check_structure(folder)
    check_trainer_state(folder, read_json(folder, TRAINER_STATE))


def _verify_manifest(folder: Path) -> None:
    try:
        entries = read_record(folder)
    except NamiError:
        raise DamagedCheckpoint(folder, f"{MANIFEST} is unreadable or lists no files") from None
    problem = record_problem(folder, entries or {})
    if problem is not None:
        raise DamagedCheckpoint(folder, problem)


def _check_structure(folder: Path) -> None:
    """A checkpoint without a manifest (older versions): the files it needs are there and readable."""
    for names, what in ((MODEL_FILES, "model"), (OPTIMIZER_FILES, "optimizer")):
        if not any((folder / n).is_file() for n in names):
            raise DamagedCheckpoint(folder, f"{names[0]} is missing (no {what} state)")
    for path in sorted(folder.iterdir()):
        if path.suffix == ".safetensors":
            _check_safetensors(folder, path)
        elif path.suffix in TORCH_SUFFIXES and not zipfile.is_zipfile(path):
            raise DamagedCheckpoint(folder, f"{path.name} is not a readable torch file (truncated or corrupt)")


def _check_safetensors(folder: Path, path: Path) -> None:
    """The header parses and the tensors it lists end where the file ends."""
    size = path.stat().st_size
    try:
        _, implied = read_safetensors_header(path, size)
    except (ValueError, KeyError, TypeError, IndexError):  # UnicodeDecodeError is a ValueError
        raise DamagedCheckpoint(folder, f"{path.name} has no readable safetensors header (truncated or corrupt)") from None
    if implied != size:
        raise DamagedCheckpoint(folder, f"{path.name} has {size} bytes, its header needs {implied} (truncated?)")


def read_json(folder: Path, name: str) -> dict:
    """A JSON object file of the checkpoint `folder`, or `DamagedCheckpoint` naming it."""
    path = Path(folder) / name
    if not path.is_file():
        raise DamagedCheckpoint(folder, f"{name} is missing")
    try:
        data = parse_json(path.read_text(encoding="utf-8"), name)
    except (NamiError, UnicodeDecodeError):
        raise DamagedCheckpoint(folder, f"{name} is not valid JSON") from None
    if not isinstance(data, dict):
        raise DamagedCheckpoint(folder, f"{name} does not hold a JSON object")
    return data


def check_trainer_state(folder: Path, state: dict) -> dict:
    """`state` (trainer_state.json) has the keys a resume reads, with whole-number counters."""
    missing = [k for k in TRAINER_STATE_KEYS if k not in state]
    if missing:
        raise DamagedCheckpoint(folder, f"{TRAINER_STATE} lacks {', '.join(missing)}")
    for key in TRAINER_STATE_KEYS[:3]:
        value = state[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise DamagedCheckpoint(folder, f"{TRAINER_STATE} has {key}={value!r}, not a count")
    if not isinstance(state["weights"], dict):
        raise DamagedCheckpoint(folder, f"{TRAINER_STATE} has no loss-weight state")
    return state
