"""Training checkpoints: written into a temporary folder and renamed, rotated, found again.

```
RUN/checkpoints/step-00001000/   accelerate state (model, optimizer, RNG) + EMA + trainer state
                                 + checksums.json (sha256 of every file, `integrity.py`)
RUN/checkpoints/.tmp-step-...    an unfinished write (ignored, removed on the next save)
```

`--resume latest` takes the newest intact checkpoint: a damaged one (a file missing, truncated or
altered) is skipped with one line saying why. An explicit `--resume PATH` to a damaged
checkpoint is an error naming the file.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

from ..checksums import publish_artefact
from ..errors import DiskFullError, NamiError
from ..files import TEMP_PREFIX, disk_full, temp_sibling, write_failure, write_json_atomic
from .integrity import TRAINER_STATE, DamagedCheckpoint, check_trainer_state, read_json, verify_checkpoint

PREFIX = "step-"
Note = Callable[[str], None]


def checkpoint_dir(run: Path, step: int) -> Path:
    return run / "checkpoints" / f"{PREFIX}{step:08d}"


def _step_folders(run: Path) -> list[Path]:
    """Every `step-NNNNNNNN` folder of RUN/checkpoints, oldest first (complete or not)."""
    folder = run / "checkpoints"
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and p.name[len(PREFIX):].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def list_checkpoints(run: Path) -> list[Path]:
    """The complete checkpoints of RUN (those with a trainer state), oldest first."""
    return [p for p in _step_folders(run) if (p / TRAINER_STATE).is_file()]


def newest_intact(run: Path, note: Note | None = None) -> Path | None:
    """The newest checkpoint of RUN that passes `verify_checkpoint`; each newer damaged one is
    reported through `note` (one line). None if RUN has none; an error if all are damaged."""
    damaged: list[DamagedCheckpoint] = []
    for folder in reversed(_step_folders(run)):
        try:
            verify_checkpoint(folder)
        except DamagedCheckpoint as exc:
            damaged.append(exc)
            continue
        if note is not None and damaged:
            skipped = "; ".join(f"{d.checkpoint.name} ({d.reason})" for d in damaged)
            note(f"skipped damaged checkpoint {skipped}; resuming from {folder}")
        return folder
    if damaged:
        raise NamiError(f"--resume latest: no intact checkpoint in {run / 'checkpoints'}; the newest, "
                        f"{damaged[0].checkpoint.name}, is damaged: {damaged[0].reason}")
    return None


def resolve_resume(run: Path, resume: str | None, note: Note | None = None) -> Path | None:
    """`latest` -> the newest intact checkpoint of RUN (None, with a note, if there is none yet);
    a path -> itself, if it exists and is intact."""
    if resume is None:
        return None
    if resume == "latest":
        found = newest_intact(run, note)
        if found is None and note is not None:
            note(f"--resume latest: {run} has no checkpoint yet; starting at step 0")
        return found
    path = Path(resume)
    if not path.exists():
        raise NamiError(f"--resume {resume} does not exist (give a checkpoint folder RUN/checkpoints/step-N, "
                        "or latest)")
    if not (path / TRAINER_STATE).is_file():
        raise NamiError(f"--resume {resume}: not a complete checkpoint (no trainer_state.json)")
    try:
        verify_checkpoint(path)
    except DamagedCheckpoint as exc:
        raise NamiError(f"--resume {resume}: {exc}") from None
    return path


def refuse_unasked_restart(run: Path, resume: str | None) -> None:
    """Without --resume, a folder that already holds a run (checkpoints, a final model or metrics)
    is refused: starting at step 0 would rotate its checkpoints away and cut its metrics."""
    if resume is not None:
        return
    found = list_checkpoints(run)
    if found:
        held = f"checkpoints up to step {int(found[-1].name[len(PREFIX):])}"
    elif (run / "final").exists() or (run / "metrics.jsonl").exists():
        held = "a final model" if (run / "final").exists() else "metrics"
    else:
        return
    raise NamiError(f"{run} already holds a training run ({held}); pass --resume latest to continue it, "
                    "or choose another --out to start anew (nothing was changed)")


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _space_needed(run: Path, fallback: int | None) -> int | None:
    """What a checkpoint takes: the newest one's size, else `fallback` (an estimate, or None)."""
    found = list_checkpoints(run)
    return folder_bytes(found[-1]) if found else fallback


def save_checkpoint(accelerator, run: Path, step: int, trainer_state: dict, keep: int,
                    extra: Callable[[Path], None] | None = None, expected_bytes: int | None = None) -> Path:
    """Save atomically and keep the newest `keep` checkpoints (0 = keep all).

    `extra(folder)` runs on every rank to add files (e.g. EMA state) before the folder is
    renamed into place, so a checkpoint is either complete or absent. The main rank then writes
    the trainer state and the checksums. A failed write (a full disk) leaves no temporary folder
    and the checkpoints before intact; `expected_bytes` (an estimate of a checkpoint's size) goes
    into the disk-full message when there is no earlier checkpoint to measure.
    """
    final = checkpoint_dir(run, step)
    tmp = temp_sibling(final, shared=True)  # every rank writes into it
    if accelerator.is_main_process:
        for stale in final.parent.glob(f"{TEMP_PREFIX}*") if final.parent.is_dir() else []:
            shutil.rmtree(stale, ignore_errors=True)
    try:
        _write_checkpoint(accelerator, tmp, final, trainer_state, extra)
    except Exception as exc:
        # safetensors, torch.save and json fail each in their own way; classified before the
        # temporary folder goes, while the disk is still as full as the write found it
        error = write_failure(final, exc)
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(error, DiskFullError):
            raise disk_full(final, _space_needed(run, expected_bytes)) from None
        if error is not None and error is not exc:
            raise error from None
        raise
    except BaseException:
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    if accelerator.is_main_process and keep > 0:
        for old in list_checkpoints(run)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def _write_checkpoint(accelerator, tmp: Path, final: Path, trainer_state: dict,
                      extra: Callable[[Path], None] | None) -> None:
    if accelerator.is_main_process:
        tmp.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    if extra is not None:
        extra(tmp)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_json_atomic(tmp / TRAINER_STATE, trainer_state)
        publish_artefact(tmp, final)


def read_trainer_state(path: Path) -> dict:
    """trainer_state.json of a checkpoint, checked for the keys a resume reads."""
    return check_trainer_state(path, read_json(path, TRAINER_STATE))


def load_checkpoint_file(path: Path):
    """torch.load with a one-line error for a truncated or corrupt file."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except (EOFError, RuntimeError, OSError, ValueError) as exc:
        raise NamiError(f"checkpoint file {path} is corrupt or incomplete ({type(exc).__name__})") from None

