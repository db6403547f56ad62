"""Device and dtype selection with user-facing errors."""

from __future__ import annotations

import torch

from .errors import NamiError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DEVICES = ("auto", "cpu", "cuda")


def resolve_device(name: str) -> torch.device:
    """auto = the first CUDA GPU when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise NamiError(f"device {name!r} was requested but no CUDA GPU is available (use --device cpu)")
        return torch.device(name)
    raise NamiError(f"device must be one of {', '.join(DEVICES)}, got {name!r}")


def resolve_dtype(name: str) -> torch.dtype:
    try:
        return DTYPES[name]
    except KeyError:
        raise NamiError(f"dtype must be one of {', '.join(DTYPES)}, got {name!r}") from None
