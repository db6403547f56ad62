"""Refuse a `nami train` whose step cannot fit in memory before it starts, instead of being killed.

The estimate is `memory.estimate` (what `nami info --train-memory` prints) for the run's own
plan, batch size, process count and stage mixes, with the text tokens its data really has (the
longest caption, when the model cuts padding). `nami train` draws every sample's stage at random,
so the step checked is the worst split of the batch those draws can make (`memory.worst_draw`),
not the average mix; the refusal names that split. It is compared with the memory free for this
process: the GPU's free memory plus what PyTorch's allocator holds free in this process on CUDA,
the host's available memory (and the container's limit, when there is one) on the CPU, shared by
the processes of this host. Only an estimate above that is refused, so small runs never are.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import NamiError
from ..flow.plan import FlowPlan
from .ranks import launch_number
from .memory import GIB, WindowShape, estimate, window_samples, worst_draw

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


def available_bytes(device: torch.device) -> tuple[int, int] | None:
    """(memory this process may still take on `device`, of which PyTorch's allocator already holds
    free in this process); None when unknown."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        cached = max(torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device), 0)
        return int(free) + cached, cached
    known = [b for b in (_host_available(), _container_available()) if b is not None]
    if not known:
        return None
    return min(known) // launch_number("LOCAL_WORLD_SIZE"), 0


def train_device() -> torch.device:
    """The device `nami train` will run this process on (accelerate's choice, known in advance)."""
    if torch.cuda.is_available():
        return torch.device("cuda", launch_number("LOCAL_RANK"))
    return torch.device("cpu")


def data_text_tokens(folder: Path, manifest: dict, text_padding: str) -> int:
    """Text tokens a step of this data runs: the longest real caption (or the null prompt) when the
    model cuts padded text (`text_padding` "mask"), else the whole slot. Each shard's longest caption
    is in the manifest (`text_tokens`); data prepared before that is read for its masks."""
    slot = int(manifest["text_encoder"].get("max_tokens", 256))
    if text_padding != "mask":
        return slot
    from safetensors import safe_open

    shards = manifest.get("shards", [])
    recorded = [s.get("text_tokens") for s in shards]
    if all(isinstance(n, int) for n in recorded):  # written by prepare-data since it records them
        shards, longest = [], max(recorded, default=0)
    else:
        longest = 0
    files = [s["file"] for s in shards] + [manifest.get("null_text")]
    for name in filter(None, files):
        try:
            with safe_open(str(Path(folder) / name), "pt") as f:
                longest = max(longest, int(f.get_tensor("mask").bool().sum(1).max()))
        except Exception:  # noqa: BLE001 - the store names a damaged shard itself; count it whole
            return slot
    return max(min(longest, slot), 1)


@dataclass
class StepNeed:
    """The costliest step a run can take: its samples per window, bytes, and how it was chosen."""

    samples: list[int]
    peak: int
    how: str


def costliest_step(settings, model_cfg, plan: FlowPlan, mixes, text_tokens: int, backend: str) -> StepNeed:
    """Over the stage mixes the run's schedule goes through: with random stage draws (`nami
    train`), the worst split of the batch over the windows they draw; with `stage_draw` "split"
    (`nami bench train`), each mix's exact split."""
    shapes = [WindowShape(w.resolution, w.tokens(plan.pixels_per_token), w.blocks) for w in plan]
    world = launch_number("WORLD_SIZE")
    trainable = None
    if getattr(settings, "lora", None):
        from .adapters import lora_parameter_count

        trainable = lora_parameter_count(model_cfg, settings.lora, settings.lora_targets)
    options = dict(dtype=settings.dtype, text_tokens=text_tokens, grad_checkpointing=settings.grad_checkpointing,
                   fsdp=settings.fsdp, gpus=world, ema=settings.ema_decay > 0, backend=backend, trainable=trainable)
    if settings.stage_draw == "split":
        splits = [window_samples(settings.batch_size, plan.stage_mix(mix)) for mix in mixes]
        memories = [(samples, estimate(model_cfg, shapes, samples, **options)) for samples in splits]
        samples, memory = max(memories, key=lambda item: item[1].peak)
        return StepNeed(samples, memory.peak, "the mix's exact split")
    worst = []
    for mix in mixes:  # each phase draws from its own windows
        drawn = [k for k, share in enumerate(plan.stage_mix(mix)) if share > 0]
        worst.append(worst_draw(model_cfg, shapes, settings.batch_size, drawn, **options))
    samples, memory = max(worst, key=lambda item: item[1].peak)
    return StepNeed(samples, memory.peak, "the worst random draw of stages")


def describe_split(samples: list[int], plan: FlowPlan) -> str:
    return ", ".join(f"{n} at {plan[k].resolution}px" for k, n in enumerate(samples) if n)


def check_fits(settings, model_cfg, plan: FlowPlan, mixes, text_tokens: int) -> None:
    """Raise one line with the estimate, what is available and how to lower it, if a step cannot fit."""
    device = train_device()
    available = available_bytes(device)
    if available is None:
        return
    free, cached = available
    need = costliest_step(settings, model_cfg, plan, mixes, text_tokens, "cuda" if device.type == "cuda" else "cpu")
    if need.peak <= free:
        return
    hints = ["a lower --batch-size"]
    if settings.grad_checkpointing != "full":
        hints.append("--grad-checkpointing " + ("full" if settings.grad_checkpointing == "auto" else "auto"))
    if settings.dtype == "fp32":
        hints.append("--dtype bf16")
    tries = hints[0] if len(hints) == 1 else f"{', '.join(hints[:-1])} or {hints[-1]}"
    held = f", {cached / GIB:,.1f} GiB of it held free by PyTorch's allocator" if cached else ""
    raise NamiError(f"--batch-size {settings.batch_size} needs about {need.peak / GIB:,.1f} GiB per process for its "
                    f"costliest step ({need.how}: {describe_split(need.samples, plan)}; {text_tokens} text tokens; "
                    f"estimated peak, as `nami info --train-memory`) but {device} has {free / GIB:,.1f} GiB "
                    f"available{held}; try {tries}")
