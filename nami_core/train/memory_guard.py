"""Refuse a `nami train` whose step cannot fit in memory before it starts, instead of being killed.

The estimate is `memory.estimate` (what `nami info --train-memory` prints) for the run's own
plan, batch size and stage mixes (the costliest phase of its schedule). It is compared with the
memory free for this process: the GPU's free memory on CUDA, the host's available memory (and
the container's limit, when there is one) on the CPU, shared by the processes of this host. Only
an estimate above that is refused, so small runs never are.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..errors import NamiError
from ..flow.plan import FlowPlan
from .memory import GIB, WindowShape, estimate, window_samples

MEMINFO = Path("/proc/meminfo")
CGROUP_FILES = (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),  # cgroup v2
                ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"))


def _read_int(path: str | Path) -> int | None:
    try:
        return int(Path(path).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _host_available() -> int | None:
    """MemAvailable (Linux), else free pages; None if neither can be read."""
    try:
        for line in MEMINFO.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _container_available() -> int | None:
    """What the memory cgroup still allows, if it sets a limit."""
    for limit_file, usage_file in CGROUP_FILES:
        limit, usage = _read_int(limit_file), _read_int(usage_file)
        if limit is not None and usage is not None and limit < 1 << 60:
            return max(limit - usage, 0)
    return None


def available_bytes(device: torch.device) -> int | None:
    """Memory this process may still take on `device`; None when unknown."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    known = [b for b in (_host_available(), _container_available()) if b is not None]
    if not known:
        return None
    return min(known) // max(int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1), 1)


def train_device() -> torch.device:
    """The device `nami train` will run this process on (accelerate's choice, known in advance)."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0") or 0))
    return torch.device("cpu")


def estimated_peak(settings, model_cfg, plan: FlowPlan, mixes, text_tokens: int, backend: str) -> int:
    """Peak bytes per process of one step, over the stage mixes the run's schedule goes through."""
    shapes = [WindowShape(w.resolution, w.tokens(plan.pixels_per_token), w.blocks) for w in plan]
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    trainable = None
    if getattr(settings, "lora", None):
        from .adapters import lora_parameter_count

        trainable = lora_parameter_count(model_cfg, settings.lora, settings.lora_targets)
    peaks = []
    for mix in mixes:
        samples = window_samples(settings.batch_size, plan.stage_mix(mix))
        memory = estimate(model_cfg, shapes, samples, dtype=settings.dtype, text_tokens=text_tokens,
                          grad_checkpointing=settings.grad_checkpointing, fsdp=settings.fsdp, gpus=world,
                          ema=settings.ema_decay > 0, backend=backend, trainable=trainable)
        peaks.append(memory.peak)
    return max(peaks)


def check_fits(settings, model_cfg, plan: FlowPlan, mixes, text_tokens: int) -> None:
    """Raise one line with the estimate, what is available and how to lower it, if a step cannot fit."""
    device = train_device()
    free = available_bytes(device)
    if free is None:
        return
    peak = estimated_peak(settings, model_cfg, plan, mixes, text_tokens, "cuda" if device.type == "cuda" else "cpu")
    if peak <= free:
        return
    hints = ["a lower --batch-size"]
    if settings.grad_checkpointing != "full":
        hints.append("--grad-checkpointing " + ("full" if settings.grad_checkpointing == "auto" else "auto"))
    if settings.dtype == "fp32":
        hints.append("--dtype bf16")
    tries = hints[0] if len(hints) == 1 else f"{', '.join(hints[:-1])} or {hints[-1]}"
    raise NamiError(f"--batch-size {settings.batch_size} needs about {peak / GIB:,.1f} GiB per process for one step "
                    f"(estimated peak, as `nami info --train-memory`) but {device} has {free / GIB:,.1f} GiB available; "
                    f"try {tries}")
