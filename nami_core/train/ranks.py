"""Decisions every process of a run must share: a rank that raises alone leaves the others waiting
in their next collective forever."""

from __future__ import annotations

import torch


def on_any_rank(flag: bool, accelerator) -> bool:
    """Whether `flag` holds on any process (an all-reduce that every rank must call together);
    `flag` itself in a one-process run."""
    if accelerator.num_processes == 1:
        return flag
    value = torch.tensor(float(flag), device=accelerator.device)
    return bool(accelerator.reduce(value, reduction="max") > 0)
