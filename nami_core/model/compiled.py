"""torch.compile of a `NamiTransformer` that never falls back to eager without saying so.

The compiled unit is a block (`unit="block"`, regional compilation: the blocks of one kind share
their graphs, one per shape) or a stage's whole step (`unit="stage"`: embedders, the block prefix
and the output head in one graph per stage shape). docs/benchmarks.md ("Compiled sampling") has
the measurement behind the default of each use.

A unit gets only tensors (the stage's `StageInputs` are built before it runs), so it compiles once
per shape. The shapes a process sees: per stage its image tokens, the batch (1 row, or 2 with
guidance) and the text length, which sampling pads to a few `text_bucket`s (`static_text`);
training lets dynamo make sizes symbolic once they vary (`dynamic=None`). The recompile limit of
each compiled region is `RECOMPILE_LIMIT` (dynamo's default, 8, is shared by every block of a
class and a second prompt length used to exceed it), and compiling another model resets dynamo's
caches, which live on the code objects and would otherwise outlive the model.

What happened is counted in `CompileStats` (per model): graphs compiled, recompiles, recompile
limits hit, graph breaks, calls of a unit that ran no compiled graph (`eager_calls`), and the CUDA
graphs captured by `static_step`. A limit hit is also kept out of the log (dynamo prints a
multi-line warning); `CompileStats.fallback` is the one line a command prints instead.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import weakref
from dataclasses import asdict, dataclass
from typing import Callable

import torch

COMPILE_UNITS = ("block", "stage")
SAMPLING_UNIT = "block"  # measured: docs/benchmarks.md, "Compiled sampling"
BACKEND_VARIABLE = "NAMI_COMPILE_BACKEND"  # inductor (default); aot_eager or eager compile graphs without code generation
RECOMPILE_LIMIT = 64
LIMIT_MESSAGE = "torch._dynamo hit config."  # the start of dynamo's warning when a limit is hit
REPORTED = ("graphs", "recompiles", "recompile_limit_hits", "graph_breaks", "eager_calls")


@dataclass
class CompileStats:
    """What compiling one model did so far (see module doc); `calls` counts unit calls."""

    graphs: int = 0
    recompiles: int = 0
    recompile_limit_hits: int = 0
    graph_breaks: int = 0
    eager_calls: int = 0
    calls: int = 0
    cuda_graphs: int = 0
    cuda_graph_failures: int = 0
    graph_runs: int = 0

    def report(self) -> dict:
        """The JSON of `nami bench ... --compile`: the `REPORTED` counts, unit calls and CUDA graphs."""
        data = asdict(self)
        data.pop("graph_runs")
        return data

    def fallback(self) -> str | None:
        """One line when anything ran eagerly (a unit call, part of one after a graph break, or a
        step whose CUDA graph could not be captured), else None."""
        if not (self.eager_calls or self.graph_breaks or self.recompile_limit_hits or self.cuda_graph_failures):
            return None
        parts = [f"{self.eager_calls} of {self.calls} compiled calls ran eagerly"]
        if self.recompile_limit_hits:
            parts.append(f"recompile limit hit {self.recompile_limit_hits} time(s)")
        if self.graph_breaks:
            parts.append(f"{self.graph_breaks} graph break(s)")
        if self.cuda_graph_failures:
            parts.append(f"{self.cuda_graph_failures} CUDA graph capture(s) failed")
        return "--compile: " + "; ".join(parts) + " (TORCH_LOGS=recompiles,graph_breaks shows why)"


_ACTIVE: list[CompileStats] = []  # the stats of the unit call running now (innermost last)


class _LimitHits(logging.Filter):
    """Counts dynamo's recompile-limit warnings into the running unit's stats, and drops them."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _ACTIVE and str(record.msg).startswith(LIMIT_MESSAGE):
            _ACTIVE[-1].recompile_limit_hits += 1
            return False
        return True


_FILTER = _LimitHits()


def _graph_breaks() -> int:
    from torch._dynamo.utils import counters

    return sum(counters["graph_break"].values())


class CountingBackend:
    """A dynamo backend (`name`: inductor, aot_eager, eager) whose graphs count their runs. One
    object per model: dynamo reuses a graph for another block only under the same backend."""

    def __init__(self, name: str, stats: CompileStats) -> None:
        self.name = name
        self.stats = stats

    def __call__(self, graph_module, example_inputs):
        from torch._dynamo import lookup_backend

        stats = self.stats
        stats.graphs += 1
        compiled = lookup_backend(self.name)(graph_module, example_inputs)

        def run(*args):
            stats.graph_runs += 1
            return compiled(*args)

        return run


def _limit_kwargs() -> dict:
    """`recompile_limit` for torch.compile where it takes one (torch >= 2.13); else dynamo's
    process-wide per-code limit raised to at least `RECOMPILE_LIMIT`."""
    if "recompile_limit" in inspect.signature(torch.compile).parameters:
        return {"recompile_limit": RECOMPILE_LIMIT}
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    setattr(config, name, max(getattr(config, name), RECOMPILE_LIMIT))
    return {}


class CompiledUnit:
    """`fn` compiled with the model's backend; every call counted into the model's stats."""

    def __init__(self, compilation: "Compilation", fn: Callable, kind: str) -> None:
        self.compilation = compilation
        self.kind = kind
        self.fn = torch.compile(fn, backend=compilation.backend, dynamic=compilation.dynamic, **_limit_kwargs())

    def __call__(self, *args, **kwargs):
        stats, compilation = self.compilation.stats, self.compilation
        runs, graphs, breaks = stats.graph_runs, stats.graphs, _graph_breaks()
        _ACTIVE.append(stats)
        try:
            out = self.fn(*args, **kwargs)
        finally:
            _ACTIVE.pop()
        stats.calls += 1
        if stats.graphs > graphs:
            stats.recompiles += self.kind in compilation.compiled_kinds
            compilation.compiled_kinds.add(self.kind)
        stats.graph_breaks += _graph_breaks() - breaks
        if stats.graph_runs == runs:
            stats.eager_calls += 1
        return out


_LAST_MODEL: list = [None]  # weakref to the model compiled last


class Compilation:
    """How one model is compiled (backend, unit, dynamic shapes, text buckets) and its counts.

    `static_text`: text padded to `text_bucket` lengths and always masked, so a stage has one
    text shape per bucket. `static_steps`: a `StepGraphs` of the sampler's steps (CUDA graphs on a
    GPU, the same static buffers run eagerly elsewhere), or None."""

    def __init__(self, model, backend: str = "inductor", unit: str = "block", dynamic: bool | None = False,
                 static_text: bool = True, static_steps: bool = False) -> None:
        if unit not in COMPILE_UNITS:
            raise ValueError(f"compile unit must be one of {', '.join(COMPILE_UNITS)}, got {unit!r}")
        previous = _LAST_MODEL[0]() if _LAST_MODEL[0] is not None else None
        if _LAST_MODEL[0] is not None and previous is not model:
            torch._dynamo.reset()  # the caches of the model compiled before are keyed by code, not by model
        _LAST_MODEL[0] = weakref.ref(model)
        dynamo_log = logging.getLogger("torch._dynamo.convert_frame")
        if _FILTER not in dynamo_log.filters:
            dynamo_log.addFilter(_FILTER)
        self.stats = CompileStats()
        self.backend = CountingBackend(backend, self.stats)
        self.unit = unit
        self.dynamic = dynamic
        self.static_text = static_text
        self.compiled_kinds: set[str] = set()
        self.step_graphs = None
        if static_steps:
            from .static_step import StepGraphs

            self.step_graphs = StepGraphs(self.stats)

    def unit_for(self, fn: Callable, kind: str) -> CompiledUnit:
        return CompiledUnit(self, fn, kind)


@contextlib.contextmanager
def failing_on_limit_hits():
    """Within the block, hitting a recompile limit raises instead of running eagerly (tests, the GPU check)."""
    config = torch._dynamo.config
    names = [n for n in ("fail_on_recompile_limit_hit", "fail_on_cache_limit_hit") if hasattr(config, n)]
    saved = {n: getattr(config, n) for n in names}
    for n in names:
        setattr(config, n, True)
    try:
        yield
    finally:
        for n, value in saved.items():
            setattr(config, n, value)


def default_backend() -> str:
    """The dynamo backend: `NAMI_COMPILE_BACKEND`, else inductor; NamiError naming the variable
    when it names no backend torch knows (torch would fail at the first compiled call)."""
    name = os.environ.get(BACKEND_VARIABLE) or "inductor"
    from torch._dynamo import list_backends

    known = list_backends(exclude_tags=())
    if name not in known:
        from ..errors import NamiError

        raise NamiError(f"{BACKEND_VARIABLE}={name} names no torch.compile backend; known: {', '.join(sorted(known))}")
    return name


def compile_for_sampling(transformer, device: torch.device) -> CompileStats:
    """Sampling: static shapes per stage, batch and text bucket; the steps replayed as CUDA graphs on a GPU."""
    return transformer.compile_blocks(dynamic=False, unit=SAMPLING_UNIT, static_steps=torch.device(device).type == "cuda")


def compile_for_training(transformer) -> CompileStats:
    """Training: each block, sizes made symbolic once they vary (the samples of a stage and the
    caption lengths change every step)."""
    return transformer.compile_blocks(dynamic=None, unit="block", static_text=False)
