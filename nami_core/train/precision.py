"""The precision a training run computes in: `--dtype`, accelerate's mixed-precision setting, the device.

* `--dtype fp32 | bf16 | fp16`: that (autocast over fp32 weights for bf16/fp16).
* `--dtype auto` (the default): accelerate's mixed-precision setting when it names one (bf16 or
  fp16: `accelerate launch --mixed_precision bf16` exports it as ACCELERATE_MIXED_PRECISION, and
  `accelerate config` stores it in accelerate's default config file); else bf16 on CUDA and fp32
  on the CPU.
* an explicit `--dtype` that differs from accelerate's bf16 or fp16 is a contradiction: refused in
  one line. accelerate's "no" (its default) is no setting and never contradicts.

On CUDA, float32 matmuls may use TF32 (`runtime.use_fast_matmul`), as diffusers users expect.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..config import DTYPE_NAMES
from ..errors import ConfigError

ACCELERATE_ENV = "ACCELERATE_MIXED_PRECISION"
FROM_ACCELERATE = {"bf16": "bf16", "fp16": "fp16"}  # accelerate's names that choose a dtype


def _config_file_setting() -> tuple[str | None, str]:
    """mixed_precision of accelerate's default config file (`accelerate config`), if it has one."""
    try:
        from accelerate.commands.config import default_config_file
    except ImportError:
        return None, ""
    path = Path(default_config_file)
    if not path.is_file():
        return None, ""
    try:
        import yaml

        data = yaml.safe_load(path.read_text()) if path.suffix in (".yaml", ".yml") else None
        if data is None and path.suffix == ".json":
            import json

            data = json.loads(path.read_text())
    except Exception:  # noqa: BLE001 - an unreadable or odd file is no setting
        return None, ""
    value = data.get("mixed_precision") if isinstance(data, dict) else None
    return (str(value) if value is not None else None), f"`accelerate config` ({path})"


def accelerate_setting() -> tuple[str | None, str]:
    """(accelerate's mixed precision as a nami dtype, where it was read) or (None, "") when it names none."""
    value = os.environ.get(ACCELERATE_ENV)
    source = f"{ACCELERATE_ENV}={value} (accelerate launch --mixed_precision)"
    if not value:
        value, source = _config_file_setting()
    dtype = FROM_ACCELERATE.get((value or "").lower())
    return (dtype, source) if dtype is not None else (None, "")


def run_dtype(requested: str, device_type: str) -> str:
    """The dtype a run computes in (module doc) for `--dtype requested` on a `device_type` device."""
    if requested != "auto" and requested not in DTYPE_NAMES:
        raise ConfigError(f"--dtype must be one of auto, {', '.join(DTYPE_NAMES)}, got {requested!r}")
    chosen, source = accelerate_setting()
    if requested == "auto":
        return chosen or ("bf16" if device_type == "cuda" else "fp32")
    if chosen is not None and chosen != requested:
        raise ConfigError(f"--dtype {requested} contradicts accelerate's mixed precision {chosen} from {source}; "
                          f"give one of them (or --dtype auto to follow accelerate)")
    return requested
