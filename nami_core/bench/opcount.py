"""How many operations a sampler step dispatches: CUDA kernel launches on a GPU (from the
profiler; a CUDA graph replay counts as one), ATen operators reaching the dispatcher on the CPU
(a `TorchDispatchMode`). The low-resolution stages of a progressive sampler are bound by these,
not by FLOPs."""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Callable

import torch

KERNEL_LAUNCHES = ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernelEx", "cudaGraphLaunch")


def counter_name(device: torch.device) -> str:
    return "kernel launches" if device.type == "cuda" else "aten ops"


@contextlib.contextmanager
def _quiet_stderr():
    """The profiler's C++ side writes start/stop lines to file descriptor 2; hide them."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _kernel_launches(run: Callable[[], None], device: torch.device) -> int:
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        run()
        torch.cuda.synchronize(device)
    return sum(1 for e in prof.events() if e.name in KERNEL_LAUNCHES)


def _aten_ops(run: Callable[[], None]) -> int:
    from torch.utils._python_dispatch import TorchDispatchMode

    class Counting(TorchDispatchMode):
        count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Counting.count += 1
            return func(*args, **(kwargs or {}))

    with Counting():
        run()
    return Counting.count


def count_dispatches(run: Callable[[], None], device: torch.device) -> int:
    """Kernel launches (CUDA) or ATen operator calls (CPU) made while `run()` runs."""
    return _kernel_launches(run, device) if device.type == "cuda" else _aten_ops(run)


def dispatches_per_step(run_steps: Callable[[int], None], device: torch.device) -> float:
    """Per Euler step, without the once-per-stage setup: after one warm-up run (which prepares what
    the stage caches), (count of 3 steps - count of 1) / 2."""
    run_steps(1)
    return (count_dispatches(lambda: run_steps(3), device) - count_dispatches(lambda: run_steps(1), device)) / 2
