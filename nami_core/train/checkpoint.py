"""Training checkpoints: written into a temporary folder and renamed, rotated, found again.

```
RUN/checkpoints/step-00001000/   accelerate state (model, optimizer, RNG) + EMA + trainer state
RUN/checkpoints/.tmp-step-...    an unfinished write (ignored, removed on the next save)
```
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable

from ..errors import NamiError
from ..files import TEMP_PREFIX, publish_dir, temp_sibling, write_json_atomic

PREFIX = "step-"


def checkpoint_dir(run: Path, step: int) -> Path:
    return run / "checkpoints" / f"{PREFIX}{step:08d}"


def list_checkpoints(run: Path) -> list[Path]:
    folder = run / "checkpoints"
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and (p / "trainer_state.json").is_file()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def resolve_resume(run: Path, resume: str | None) -> Path | None:
    """`latest` -> the newest complete checkpoint of RUN (None if there is none yet); a path -> itself."""
    if resume is None:
        return None
    if resume == "latest":
        found = list_checkpoints(run)
        return found[-1] if found else None
    path = Path(resume)
    if not (path / "trainer_state.json").is_file():
        raise NamiError(f"--resume {resume}: not a complete checkpoint (no trainer_state.json)")
    return path


def save_checkpoint(accelerator, run: Path, step: int, trainer_state: dict, keep: int,
                    extra: Callable[[Path], None] | None = None) -> Path:
    """Save atomically and keep the newest `keep` checkpoints (0 = keep all).

    `extra(folder)` runs on every rank to add files (e.g. EMA state) before the folder is
    renamed into place, so a checkpoint is either complete or absent.
    """
    final = checkpoint_dir(run, step)
    tmp = temp_sibling(final, shared=True)  # every rank writes into it
    if accelerator.is_main_process:
        for stale in final.parent.glob(f"{TEMP_PREFIX}*") if final.parent.is_dir() else []:
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    if extra is not None:
        extra(tmp)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_json_atomic(tmp / "trainer_state.json", trainer_state)
        publish_dir(tmp, final)
        if keep > 0:
            for old in list_checkpoints(run)[:-keep]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def read_trainer_state(path: Path) -> dict:
    try:
        return json.loads((path / "trainer_state.json").read_text())
    except json.JSONDecodeError:
        raise NamiError(f"checkpoint {path} is corrupt (trainer_state.json is not valid JSON)") from None


def load_checkpoint_file(path: Path):
    """torch.load with a one-line error for a truncated or corrupt file."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except (EOFError, RuntimeError, OSError, ValueError) as exc:
        raise NamiError(f"checkpoint file {path} is corrupt or incomplete ({type(exc).__name__})") from None
