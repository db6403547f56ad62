"""Attention backend selection through diffusers' dispatcher, checked by running it.

A backend's package being importable says little on a GPU machine: xformers built for another
torch, or a flash-attn older than diffusers needs, imports and then fails inside the first
attention call, mid-run. So a backend other than native SDPA is used only after `backend_problem`
has found nothing wrong: its package, version, device and dtype, and then one forward and
backward of its kernel on a small ragged batch on the run's device (`probe`, once per process for
each backend, device and dtype).

* `auto`: xformers on CUDA when it passes, else native SDPA, with one note saying why xformers
  was passed over when it is installed.
* an explicit `xformers` or `flash` that cannot work is one error line (`NamiError`) before any
  work, naming the reason (e.g. flash-attn in float32, which its kernels do not take).
"""

from __future__ import annotations

import functools
import importlib.metadata
import logging
from typing import Callable

import torch

from ..config import ATTENTION_BACKENDS as BACKENDS
from ..errors import NamiError, first_line
from ..packages import installed as _installed

PACKAGES = {"xformers": ("xformers", "xformers", "pip install 'nami[xformers]'"),
            "flash": ("flash_attn", "flash-attn", "pip install flash-attn")}  # backend -> module, dist, install
KERNEL_DTYPES = {"flash": (torch.float16, torch.bfloat16)}  # backends whose kernels take only these
KERNEL_DEVICE_TYPES = ("cuda",)  # where the xformers and flash kernels run

Note = Callable[[str], None]
_NOTED: set[str] = set()


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def required_versions() -> dict[str, str]:
    """The oldest xformers and flash-attn diffusers' attention dispatcher runs with."""
    from diffusers.models import attention_dispatch as dispatch

    return {"xformers": dispatch._REQUIRED_XFORMERS_VERSION, "flash": dispatch._REQUIRED_FLASH_VERSION}


def _older(version: str, required: str) -> bool:
    from packaging.version import InvalidVersion, Version

    try:
        return Version(version) < Version(required)
    except InvalidVersion:
        return False


def _as_device(device) -> torch.device:
    device = torch.device(device)
    if device.type == "cuda" and device.index is None and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return device


def requirement_problem(name: str, device: torch.device, dtype: torch.dtype) -> str | None:
    """What rules `name` out before running it: package, version, device type, dtype; None if nothing."""
    module, dist, install = PACKAGES[name]
    if not _installed(module):
        return f"needs the {dist} package ({install})"
    version = _version(dist)
    required = required_versions()[name]
    if version is not None and _older(version, required):
        return f"{dist} {version} is older than the {required} diffusers needs"
    if device.type not in KERNEL_DEVICE_TYPES:
        return "needs a CUDA device; use --attention native on the CPU"
    allowed = KERNEL_DTYPES.get(name)
    if allowed is not None and dtype not in allowed:
        return f"runs in bf16 or fp16 only, not {str(dtype).removeprefix('torch.')} (use --dtype bf16 or --attention native)"
    return None


@functools.lru_cache(maxsize=None)
def probe(name: str, device: torch.device, dtype: torch.dtype) -> str | None:
    """Run `name` once, forward and backward, on a small ragged batch (2 rows, 3 and 1 real text
    tokens, 8 image tokens, 2 heads of 64) on `device` in `dtype`, as `RaggedAttnProcessor`
    calls it: packed when rows are ragged, plain when not. The first line of what it raised, or
    None when it ran and gave finite values."""
    from .ragged_attention import RaggedText, ragged_attention

    try:
        generator = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(2, 3 + 8, 2, 64, generator=generator).to(device, dtype).requires_grad_()
                   for _ in range(3))
        for layout in (RaggedText((3, 1), 3).layout(8, device, name), None):
            out = ragged_attention(q, k, v, layout, name)
            out.float().square().sum().backward()
            if not (bool(torch.isfinite(out).all()) and all(bool(torch.isfinite(t.grad).all()) for t in (q, k, v))):
                return "gave non-finite values on a small test batch"
    except Exception as exc:  # noqa: BLE001 - whatever a broken build raises is the reason
        return f"fails on a small test batch: {type(exc).__name__}: {first_line(exc)[:300]}"
    return None


def backend_problem(name: str, device, dtype: torch.dtype = torch.float32) -> str | None:
    """Why backend `name` cannot run attention on `device` in compute `dtype`, or None when it can."""
    if name == "native":
        return None
    device = _as_device(device)
    return requirement_problem(name, device, dtype) or probe(name, device, dtype)


def _log_note(text: str) -> None:
    logging.getLogger("nami").warning("note: %s", text)


def resolve_backend(name: str, device, dtype: torch.dtype = torch.float32, note: Note | None = None) -> str:
    """The dispatcher backend for `--attention name` on `device` (a torch.device or "cpu"/"cuda")
    in compute `dtype`: auto = xformers on CUDA when it runs, else native SDPA (with a `note` when
    xformers is installed but cannot run); an explicit backend that cannot run raises `NamiError`."""
    if name not in BACKENDS:
        raise NamiError(f"attention must be one of {', '.join(BACKENDS)}, got {name!r}")
    if name == "auto":
        device = _as_device(device)
        if device.type not in KERNEL_DEVICE_TYPES or not _installed("xformers"):
            return "native"
        problem = backend_problem("xformers", device, dtype)
        if problem is None:
            return "xformers"
        text = f"attention auto: xformers is installed but {problem}; using native PyTorch SDPA"
        if text not in _NOTED:  # one note per process for each reason
            _NOTED.add(text)
            (note or _log_note)(text)
        return "native"
    problem = backend_problem(name, device, dtype)
    if problem is not None:
        raise NamiError(f"attention {name!r} {problem}")
    return name


def apply_backend(transformer, name: str, dtype: torch.dtype | None = None, note: Note | None = None,
                  device=None) -> str:
    """Resolve `name` for `device` and compute `dtype` (default: those of the transformer's
    parameters) and set it on every attention module; returns the backend used."""
    first = next(transformer.parameters())
    backend = resolve_backend(name, first.device if device is None else device, dtype or first.dtype, note)
    from diffusers.utils import logging as dlogging

    level = dlogging.get_verbosity()
    dlogging.set_verbosity_error()  # the dispatcher logs an "experimental" warning on every call
    try:
        transformer.set_attention_backend(backend)
    finally:
        dlogging.set_verbosity(level)
    return backend
