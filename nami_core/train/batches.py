"""Algorithm 1 batches: every sample trains one stage, drawn by the stage mix in force.

A step's batch is a pure function of (seed, step, rank), so resuming at a step restores the
data position exactly, and batches can be drawn ahead in a background thread (`prefetch`). The
stage of each sample comes from a generator shared by all ranks (so every rank runs the same
block prefixes, which DDP and FSDP need); the images come from a rank-specific generator, so
ranks see different data. Latents and text stay float16, as stored, until they are on the device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from ..data.store import LatentStore
from ..errors import NamiError
from ..flow.objective import sample_ratios
from ..flow.pyramid import down_to
from ..flow.plan import FlowPlan
from ..text.embeddings import TextEmbeddings


def split_batch(batch: int, ratios: Sequence[float]) -> list[int]:
    """Samples per stage for a batch mixed by `ratios`: proportional counts, rounded by largest
    remainder so they sum to `batch`. split_batch(7, (4, 2, 1)) == [4, 2, 1]."""
    total = float(sum(ratios))
    if total <= 0 or any(w < 0 for w in ratios):
        raise NamiError(f"--ratio must be non-negative with a positive sum, got {':'.join(map(str, ratios))}")
    exact = [batch * w / total for w in ratios]
    counts = [int(x) for x in exact]
    order = sorted(range(len(ratios)), key=lambda k: (counts[k] - exact[k], k))
    for k in order[: batch - sum(counts)]:
        counts[k] += 1
    return counts


def step_generator(seed: int, step: int, stream: int) -> torch.Generator:
    """A generator for one (step, stream); stream 0 is shared by all ranks, 1 + rank is per rank."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 10_007 + stream)


@dataclass
class StageGroup:
    """The samples of one stage window in a step: clean latents (b, C, h, w) at the window's
    resolution, their (possibly dropped) text, unit noise (b, C, h, w) and ratios r (b,)."""

    window: int
    latents: torch.Tensor
    text: TextEmbeddings
    noise: torch.Tensor
    r: torch.Tensor


@dataclass
class HostGroup:
    """One stage window's samples of a step as drawn on the host: latent chunks as stored (float16;
    one per stored resolution, (b_i, C, H_i, W_i), brought down to the window's grid `side` on the
    device), the text (float16), unit noise (b, C, side, w) float32 and ratios r (b,)."""

    window: int
    side: int
    chunks: list[torch.Tensor]
    text: TextEmbeddings
    noise: torch.Tensor
    r: torch.Tensor

    def pinned(self) -> "HostGroup":
        """The same group in pinned host memory, so its copies to a GPU need not wait."""
        text = self.text
        return HostGroup(self.window, self.side, [c.pin_memory() for c in self.chunks],
                         TextEmbeddings(text.sequence.pin_memory(), text.mask.pin_memory(), text.pooled.pin_memory(),
                                        text.lengths),
                         self.noise.pin_memory(), self.r.pin_memory())

    def to_device(self, device) -> StageGroup:
        """Copy (non-blocking) to `device`, convert to float32 there and bring the latents to the
        window's grid: a `StageGroup` with latents (b, C, side, side)."""
        move = lambda t: t.to(device, non_blocking=True)  # noqa: E731
        latents = torch.cat([down_to(move(c).float(), self.side) for c in self.chunks])
        text = self.text
        text = TextEmbeddings(move(text.sequence).float(), move(text.mask), move(text.pooled).float(), text.lengths)
        return StageGroup(self.window, latents, text, move(self.noise), move(self.r))


class BatchDrawer:

    """Draws the groups of a step from a `LatentStore` for a `FlowPlan`."""

    def __init__(self, store: LatentStore, plan: FlowPlan, downsample: int, batch_size: int, seed: int,
                 rank: int = 0, ratio_sampling: str = "logit-normal", cfg_dropout: float = 0.1,
                 split: bool = False) -> None:
        self.store = store
        self.plan = plan
        self.downsample = downsample
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.ratio_sampling = ratio_sampling
        self.cfg_dropout = cfg_dropout
        self.split = split
        # items usable by window k: those stored at a resolution >= the window's
        self.pools = []
        for window in plan:
            pool = [(res, store.count(res)) for res in store.resolutions() if res >= window.resolution]
            self.pools.append(pool)

    def usable(self) -> list[int]:
        return [sum(n for _, n in pool) for pool in self.pools]

    def draw_stages(self, step: int, mix) -> torch.Tensor:
        """Window index of each sample, shape (batch_size,), identical on every rank; `mix` weights
        the flow's stages (low to high resolution) and maps onto the plan's windows."""
        if self.split:  # exactly the mix's share of every step (benchmarks)
            counts = split_batch(self.batch_size, self.plan.stage_mix(mix))
            return torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
        weights = torch.tensor(self.plan.stage_mix(mix), dtype=torch.float64)
        return torch.multinomial(weights, self.batch_size, replacement=True, generator=step_generator(self.seed, step, 0))

    def draw(self, step: int, mix) -> list[StageGroup]:
        """The step's groups on the CPU, float32."""
        return [group.to_device("cpu") for group in self.draw_host(step, mix)]

    def draw_host(self, step: int, mix) -> list[HostGroup]:
        """The step's groups as drawn on the host, latents and text still as stored."""
        stages = self.draw_stages(step, mix)
        g = step_generator(self.seed, step, 1 + self.rank)
        groups = []
        for k in range(len(self.plan)):
            n = int((stages == k).sum())
            if n == 0:
                continue
            window = self.plan[k]
            pool = self.pools[k]
            total = sum(c for _, c in pool)
            picks = torch.randint(0, total, (n,), generator=g).tolist()
            side = window.resolution // self.downsample
            chunks, texts = [], []
            for res, count in pool:
                local = [p for p in picks if 0 <= p < count]
                picks = [p - count for p in picks]
                if local:
                    batch = self.store.fetch_raw(res, local)
                    chunks.append(batch.latents)
                    texts.append(batch.text)
            text = TextEmbeddings.cat(texts)
            keep = torch.rand(n, generator=g) >= self.cfg_dropout
            if not bool(keep.all()):
                text = text.where(keep, self.store.null_text_raw.select([0] * n))
            _, channels, height, width = chunks[0].shape
            noise = torch.randn((n, channels, side, side * width // height), generator=g)
            r = sample_ratios(n, window, self.ratio_sampling, g)
            groups.append(HostGroup(k, side, chunks, text, noise, r))
        return groups
