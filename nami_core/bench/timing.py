"""Timestamps for benchmarks: CUDA events on a GPU (no host sync inside the timed region),
`time.perf_counter` on the CPU; and the summary statistics reported per figure."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Sequence

import torch


class Clock:
    """`mark()` returns a timestamp; `elapsed_ms(a, b)` reads the time between two marks
    (on CUDA only after `finish()`, which waits for the queued work)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cuda = device.type == "cuda"

    def mark(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def finish(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def elapsed_ms(self, start, end) -> float:
        if self.cuda:
            return float(start.elapsed_time(end))
        return (end - start) * 1000.0

    def spans_ms(self, marks: Sequence) -> list[float]:
        """Milliseconds between consecutive marks: len(marks) - 1 spans."""
        return [self.elapsed_ms(a, b) for a, b in zip(marks, marks[1:])]


@dataclass(frozen=True)
class Summary:
    """Median, min and max of repeated measurements."""

    median: float
    min: float
    max: float

    @classmethod
    def of(cls, values: Sequence[float]) -> "Summary":
        if not values:
            raise ValueError("no measurements to summarise")
        return cls(float(statistics.median(values)), float(min(values)), float(max(values)))


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_bytes(device: torch.device) -> int | None:
    """Peak allocated GPU memory since the last reset; None on the CPU."""
    if device.type != "cuda":
        return None
    return int(torch.cuda.max_memory_allocated(device))
