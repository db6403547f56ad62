"""Device and dtype selection with user-facing errors."""

from __future__ import annotations

import torch

from .config import DEVICES, DTYPE_NAMES
from .errors import NamiError

DTYPES = dict(zip(DTYPE_NAMES, (torch.float32, torch.bfloat16, torch.float16)))


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


def dtype_name(name: str, device: torch.device) -> str:
    """"auto" -> "bf16" on CUDA, "fp32" elsewhere; any other name as given (checked)."""
    if name == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    resolve_dtype(name)
    return name


def resolve_dtype(name: str, device: torch.device | None = None) -> torch.dtype:
    """The torch dtype of "fp32" | "bf16" | "fp16", or of "auto" on `device`."""
    if name == "auto" and device is not None:
        name = dtype_name(name, device)
    try:
        return DTYPES[name]
    except KeyError:
        choices = ", ".join(("auto", *DTYPES)) if device is not None else ", ".join(DTYPES)
        raise NamiError(f"dtype must be one of {choices}, got {name!r}") from None


def host_to_device(tensor: torch.Tensor, device) -> torch.Tensor:
    """A CPU tensor on `device` without the host waiting: pinned and copied asynchronously on
    CUDA (PyTorch's pinned-memory allocator keeps the buffer until the copy is done)."""
    device = torch.device(device)
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def use_fast_matmul(device: torch.device) -> None:
    """On CUDA, let float32 matmuls and convolutions use TF32 tensor cores (as diffusers users expect)."""
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")
        torch.backends.cudnn.allow_tf32 = True


def non_finite(tensors: dict[str, torch.Tensor]) -> list[str]:
    """The names of the floating tensors of `tensors` that hold a NaN or an infinity, read back from
    the device once (one flag per tensor, stacked per device: a single host sync on one device)."""
    floating = [(name, t) for name, t in tensors.items() if t.is_floating_point() and t.numel()]
    by_device: dict[torch.device, list[tuple[str, torch.Tensor]]] = {}
    for name, t in floating:
        by_device.setdefault(t.device, []).append((name, t))
    bad = []
    for items in by_device.values():
        flags = torch.stack([torch.isfinite(t).all() for _, t in items]).tolist()
        bad += [name for (name, _), ok in zip(items, flags) if not ok]
    return bad
