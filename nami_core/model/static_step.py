"""A sampler step replayed from static buffers: one CUDA graph per stage shape on a GPU.

A stage's Euler steps run the same network on tensors of the same shapes; only the state z, the
ratio r and the timestep tau change from step to step, and the stage inputs (`StageInputs`: text,
pooled text, rotary tables, key mask) from prompt to prompt. `StaticStep` owns one buffer for each,
copies the new values in (device to device, no host sync) and runs the step on the buffers: on
CUDA it replays a graph captured on them (one launch instead of hundreds, which the launch-bound
early stages need), elsewhere it calls the step function on them, so the CPU runs (and the tests
check) the same buffer logic. `StepGraphs` keeps one `StaticStep` per key (stage window, grid,
batch, text bucket) for the life of the compiled model, with one CUDA memory pool for all of them.
"""

from __future__ import annotations

from typing import Callable

import torch

from ..errors import first_line
from .compiled import CompileStats

WARMUP_RUNS = 2  # before a capture: the first compiles, the second runs as every later step will

# step(z (B, C, h, w), r (B,), tau (B,), inputs: StageInputs) -> velocity (B, C, h, w)
StepFn = Callable[..., torch.Tensor]


class StaticStep:
    """One stage shape's step on static buffers (module doc). The velocity it returns is its own
    output buffer on CUDA: valid until the next call."""

    def __init__(self, step: StepFn, z: torch.Tensor, r: torch.Tensor, tau: torch.Tensor, inputs,
                 stats: CompileStats, pool=None) -> None:
        self.step = step
        self.args = [z.clone(), r.clone(), tau.clone()]
        self.inputs = inputs.static_copy()
        self.loaded = inputs
        self.stats = stats
        self.graph = None
        self.out = None
        self.failure: str | None = None  # why the capture failed
        if z.device.type == "cuda":
            self._capture(pool)

    def _capture(self, pool) -> None:
        side = torch.cuda.Stream(self.args[0].device)
        side.wait_stream(torch.cuda.current_stream(self.args[0].device))
        try:
            with torch.cuda.stream(side):
                for _ in range(WARMUP_RUNS):
                    self.step(*self.args, self.inputs)
            torch.cuda.current_stream(self.args[0].device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self.out = self.step(*self.args, self.inputs)
        except Exception as exc:  # noqa: BLE001 - whatever breaks a capture, the step still runs uncaptured
            self.stats.cuda_graph_failures += 1
            self.failure = first_line(exc)
            torch.cuda.synchronize(self.args[0].device)
            return
        self.graph = graph
        self.stats.cuda_graphs += 1

    def __call__(self, z: torch.Tensor, r: torch.Tensor, tau: torch.Tensor, inputs) -> torch.Tensor:
        if inputs is not self.loaded:
            inputs.load_into(self.inputs)
            self.loaded = inputs
        for buffer, value in zip(self.args, (z, r, tau)):
            buffer.copy_(value)
        if self.graph is None:
            return self.step(*self.args, self.inputs)
        self.graph.replay()
        return self.out


class StepGraphs:
    """The `StaticStep`s of one compiled model, by key; one CUDA memory pool for all of them (the
    steps of a sampler run one after another, never at once)."""

    def __init__(self, stats: CompileStats) -> None:
        self.stats = stats
        self.steps: dict[tuple, StaticStep] = {}
        self.pool = None

    def run(self, key: tuple, step: StepFn, z: torch.Tensor, r: torch.Tensor, tau: torch.Tensor,
            inputs) -> torch.Tensor:
        """`step(z, r, tau, inputs)` through the `StaticStep` of `key`, made on first use. `key`
        must fix everything `step` bakes in (window, patch, prediction) beside the shapes, which
        are added here."""
        key = (key, tuple(z.shape), z.dtype, str(z.device), tuple(r.shape), inputs.signature())
        static = self.steps.get(key)
        if static is None:
            if z.device.type == "cuda" and self.pool is None:
                self.pool = torch.cuda.graph_pool_handle()
            static = self.steps[key] = StaticStep(step, z, r, tau, inputs, self.stats, self.pool)
        return static(z, r, tau, inputs)
