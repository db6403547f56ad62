"""Batches drawn ahead in a background thread while the device trains on the current one.

A step's batch is a pure function of its step number (`BatchDrawer`), so drawing ahead changes
nothing in what is trained, and a resumed run draws the same batches from its first step on.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable

from .batches import HostGroup


class Prefetcher:
    """`get(step)` returns the host groups of `step`, drawn by `draw(step)` up to `depth` steps ahead
    (and pinned when `pin`, for non-blocking copies to a GPU). Steps must be asked in order."""

    def __init__(self, draw: Callable[[int], list[HostGroup]], first: int, stop: int, depth: int = 2,
                 pin: bool = False) -> None:
        self.draw = draw
        self.pin = pin
        self.depth = depth
        self.stop = stop
        self.next = first
        self.pending: deque[tuple[int, Future]] = deque()
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nami-batches")

    def _job(self, step: int) -> list[HostGroup]:
        groups = self.draw(step)
        return [g.pinned() for g in groups] if self.pin else groups

    def _fill(self) -> None:
        while len(self.pending) < self.depth and self.next < self.stop:
            self.pending.append((self.next, self.pool.submit(self._job, self.next)))
            self.next += 1

    def get(self, step: int) -> list[HostGroup]:
        self._fill()
        if not self.pending or self.pending[0][0] != step:
            raise RuntimeError(f"batches are drawn in step order; asked for step {step}")
        _, future = self.pending.popleft()
        groups = future.result()
        self._fill()
        return groups

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
