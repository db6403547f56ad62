"""Decisions every process of a run must share: a rank that raises alone leaves the others waiting
in their next collective forever; and where a process stands in its launch (`launch_number`)."""

from __future__ import annotations

import os

import torch

from ..errors import NamiError

# What `torchrun` / `accelerate launch` set for each process, and their values without a launcher.
LAUNCH_VARIABLES = {"RANK": 0, "LOCAL_RANK": 0, "WORLD_SIZE": 1, "LOCAL_WORLD_SIZE": 1}


def launch_number(name: str) -> int:
    """The launcher's variable `name` (one of `LAUNCH_VARIABLES`) as an integer, its default when
    unset or empty; NamiError naming it when it holds anything else (a rank below 0, a world
    below 1, text): read by hand, such a value fails far from its cause."""
    default = LAUNCH_VARIABLES[name]
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < default:
        raise NamiError(f"the environment variable {name}={os.environ[name]!r} must be an integer of at least "
                        f"{default} (torchrun and accelerate launch set it); unset it to run one process")
    return value


def on_any_rank(flag: bool, accelerator) -> bool:
    """Whether `flag` holds on any process (an all-reduce that every rank must call together);
    `flag` itself in a one-process run."""
    if accelerator.num_processes == 1:
        return flag
    value = torch.tensor(float(flag), device=accelerator.device)
    return bool(accelerator.reduce(value, reduction="max") > 0)
