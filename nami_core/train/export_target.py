"""What `nami convert checkpoint` checks before it reads any weights (no torch): the checkpoint is
one, its run's `train_config.json` is readable, and `--out` may receive the model directory (or
the adapter folder of a `--lora` run) by the output policy (`output_targets`)."""

from __future__ import annotations

from pathlib import Path

from ..errors import NamiError


def export_target(checkpoint: Path, out: Path, overwrite: bool = False) -> dict:
    """The run config of `checkpoint` (RUN/checkpoints/step-N), after checking that `out` may
    receive its export: not the checkpoint, its run's data or base model, nor around them; an
    existing model directory (adapter) replaced only with `overwrite`."""
    from ..output_targets import ADAPTER, MODEL, check_out_folder

    checkpoint = Path(checkpoint)
    if not checkpoint.is_dir():
        raise NamiError(f"{checkpoint} does not exist (give a checkpoint folder RUN/checkpoints/step-N)"
                        if not checkpoint.exists() else f"{checkpoint} is a file, not a checkpoint folder")
    if not (checkpoint / "trainer_state.json").is_file():
        raise NamiError(f"{checkpoint} is not a complete nami training checkpoint (missing trainer_state.json)")
    config_path = checkpoint.parent.parent / "train_config.json"
    run_config = read_run_config(config_path, checkpoint)
    train = run_config["train"]
    inputs = {"checkpoint": checkpoint, "run": checkpoint.parent.parent, "--data of the run": train.get("data"),
              "--model of the run": train.get("init")}
    check_out_folder(out, ADAPTER if train.get("lora") else MODEL, inputs, overwrite)
    return run_config


def read_run_config(config_path: Path, checkpoint: Path) -> dict:
    """RUN/train_config.json, checked for the sections an export reads."""
    from ..user_files import parse_json

    if not config_path.is_file():
        raise NamiError(f"{checkpoint} is not a complete nami training checkpoint (missing {config_path.name})")
    try:
        run_config = parse_json(config_path.read_text(encoding="utf-8"), str(config_path))
    except (NamiError, UnicodeDecodeError):
        run_config = None
    if (not isinstance(run_config, dict) or not {"train", "model", "flow", "patch_size"} <= run_config.keys()
            or not isinstance(run_config["train"], dict)):
        raise NamiError(f"{config_path} is damaged (not the JSON `nami train` writes)")
    return run_config


def stored_path(config_path: Path, option: str, value) -> Path:
    """A path the run recorded (its `option`), which must exist; the error says where it came from.
    Runs trained before paths were recorded absolute hold them relative to the folder they ran in."""
    if not isinstance(value, str) or not value:
        raise NamiError(f"{config_path} records no {option} (damaged?)")
    path = Path(value)
    if not path.exists():
        relative = "" if path.is_absolute() else (", relative to the folder training ran in: run this command "
                                                   "from there, or give the path absolute in that file")
        raise NamiError(f"{path} does not exist: it is the {option} recorded in {config_path}{relative}")
    return path
