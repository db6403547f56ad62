"""Algorithm 1 batches: every sample trains one stage, drawn by the stage mix in force.

A step's batch is a pure function of (seed, step, rank), so resuming at a step restores the
data position exactly, and batches can be drawn ahead in a background thread (`prefetch`). The
stage of each sample comes from a generator shared by all ranks (so every rank runs the same
block prefixes, which DDP and FSDP need); the images come from a rank-specific generator, so
ranks see different data. Latents and text stay float16, as stored, until they are on the device.

Data prepared with `--buckets` holds several aspect ratios. A step then draws one bucket, from the
shared generator after the stages, weighted by the bucket's images usable by the step's deepest
window: every group of the step, on every rank, has that bucket's shape at its stage (static
shapes per step, the same block inputs on all ranks), and each rank draws its images inside it.
Square data draws no bucket, so its batches are exactly as before.

Gradient accumulation (`micro_batches` N > 1) splits a step, never redraws it: the step draws its
N x batch_size samples by the rule above, exactly as one batch of that size (the stages from the
shared generator, one bucket, then images, prompt dropout, noise and ratios from the rank's), and
micro-batch m takes the samples at positions m x batch_size to (m + 1) x batch_size - 1 of the
step's stage draws. A window's samples are drawn in the order of their positions, so each window's
group splits into contiguous rows, one run per micro-batch (`HostGroup.micro`). N micro-batches of
B thus train on exactly the samples of one batch of N x B, and with the loss of each divided by
N x B (`staged_loss.weighted_loss`) their summed gradients are that batch's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from ..data.buckets import Bucket
from ..data.store import LatentStore
from ..errors import NamiError
from ..flow.objective import sample_ratios
from ..flow.pyramid import down_to
from ..flow.plan import FlowPlan
from ..text.embeddings import TextEmbeddings
from .phases import split_batch


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
    micro: tuple[int, ...] | None = None  # rows per micro-batch, in order (None: one micro-batch)

    def rows(self, start: int, stop: int) -> "StageGroup":
        """Rows [start, stop) of the group (views; no copy)."""
        return StageGroup(self.window, self.latents[start:stop], self.text.select(slice(start, stop)),
                          self.noise[start:stop], self.r[start:stop])


def micro_batches(groups: list[StageGroup], count: int) -> list[list[StageGroup]]:
    """The step's `count` micro-batches: for each, the rows of every group that belong to it (a
    group with none left out). One micro-batch is `groups` itself."""
    if count == 1:
        return [groups]
    split: list[list[StageGroup]] = [[] for _ in range(count)]
    for group in groups:
        start = 0
        for m, n in enumerate(group.micro):
            if n:
                split[m].append(group.rows(start, start + n))
            start += n
    return split


@dataclass
class HostGroup:
    """One stage window's samples of a step as drawn on the host: latent chunks as stored (float16;
    one per stored resolution, (b_i, C, H_i, W_i), all of one aspect ratio, brought down to the
    window's grid height `side` on the device), the text (float16), unit noise (b, C, side, w)
    float32 (w = side * W_i / H_i) and ratios r (b,)."""

    window: int
    side: int
    chunks: list[torch.Tensor]
    text: TextEmbeddings
    noise: torch.Tensor
    r: torch.Tensor
    micro: tuple[int, ...] | None = None  # rows per micro-batch (module doc); None: one micro-batch

    def pinned(self) -> "HostGroup":
        """The same group in pinned host memory, so its copies to a GPU need not wait."""
        text = self.text
        return HostGroup(self.window, self.side, [c.pin_memory() for c in self.chunks],
                         TextEmbeddings(text.sequence.pin_memory(), text.mask.pin_memory(), text.pooled.pin_memory(),
                                        text.lengths),
                         self.noise.pin_memory(), self.r.pin_memory(), self.micro)

    def to_device(self, device) -> StageGroup:
        """Copy (non-blocking) to `device`, convert to float32 there and bring the latents to the
        window's grid: a `StageGroup` with latents (b, C, side, w), the noise's shape."""
        move = lambda t: t.to(device, non_blocking=True)  # noqa: E731
        latents = torch.cat([down_to(move(c).float(), self.side) for c in self.chunks])
        text = self.text
        text = TextEmbeddings(move(text.sequence).float(), move(text.mask), move(text.pooled).float(), text.lengths)
        return StageGroup(self.window, latents, text, move(self.noise), move(self.r), self.micro)


class BatchDrawer:

    """Draws the groups of a step from a `LatentStore` for a `FlowPlan`."""

    def __init__(self, store: LatentStore, plan: FlowPlan, downsample: int, batch_size: int, seed: int,
                 rank: int = 0, ratio_sampling: str = "logit-normal", cfg_dropout: float = 0.1,
                 split: bool = False, micro_batches: int = 1) -> None:
        self.store = store
        self.plan = plan
        self.downsample = downsample
        self.micro_size = batch_size  # samples of one micro-batch
        self.micro_batches = micro_batches
        self.batch_size = batch_size * micro_batches  # samples of one step
        self.seed = seed
        self.rank = rank
        self.ratio_sampling = ratio_sampling
        self.cfg_dropout = cfg_dropout
        self.split = split
        self.buckets: list[Bucket] | None = store.buckets
        self.by_name = {b.name: b for b in self.buckets or []}
        if self.buckets is not None:
            _check_bucket_tokens(self.buckets, plan)
        # items usable by window k (per bucket; one bucket None for square data): those stored at
        # a resolution >= the window's
        names = [b.name for b in self.buckets] if self.buckets is not None else [None]
        self.pools: list[dict[str | None, list[tuple[int, int]]]] = []
        for window in plan:
            self.pools.append({name: [(res, store.count(res, name)) for res in store.resolutions()
                                      if res >= window.resolution and store.count(res, name) > 0]
                               for name in names})

    def usable(self) -> list[int]:
        """Items usable by each window, over all buckets."""
        return [sum(n for pool in pools.values() for _, n in pool) for pools in self.pools]

    def draw_stages(self, step: int, mix, generator: torch.Generator | None = None) -> torch.Tensor:
        """Window index of each sample, shape (batch_size,), identical on every rank; `mix` weights
        the flow's stages (low to high resolution) and maps onto the plan's windows. `generator`:
        the step's shared one (default: a fresh one)."""
        if self.split:  # exactly the mix's share of every step (benchmarks)
            counts = split_batch(self.batch_size, self.plan.stage_mix(mix))
            return torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
        weights = torch.tensor(self.plan.stage_mix(mix), dtype=torch.float64)
        g = generator if generator is not None else step_generator(self.seed, step, 0)
        return torch.multinomial(weights, self.batch_size, replacement=True, generator=g)

    def draw_bucket(self, stages: torch.Tensor, generator: torch.Generator) -> str | None:
        """The step's bucket, identical on every rank: drawn from the shared `generator`, weighted by
        the bucket's items usable by the deepest window of `stages` (batch_size,); None for square
        data (nothing drawn)."""
        if self.buckets is None:
            return None
        pools = self.pools[int(stages.max())]
        names = list(pools)
        weights = torch.tensor([float(sum(n for _, n in pools[name])) for name in names], dtype=torch.float64)
        if not bool(weights.sum() > 0):
            raise NamiError(f"no prepared images at {self.plan[int(stages.max())].resolution}px or more in any bucket")
        return names[int(torch.multinomial(weights, 1, generator=generator))]

    def draw(self, step: int, mix) -> list[StageGroup]:
        """The step's groups on the CPU, float32."""
        return [group.to_device("cpu") for group in self.draw_host(step, mix)]

    def draw_host(self, step: int, mix) -> list[HostGroup]:
        """The step's groups as drawn on the host, latents and text still as stored; with several
        micro-batches, each group says how its rows split among them (`HostGroup.micro`)."""
        shared = step_generator(self.seed, step, 0)
        stages = self.draw_stages(step, mix, shared)
        bucket = self.draw_bucket(stages, shared)
        g = step_generator(self.seed, step, 1 + self.rank)
        groups = []
        for k in range(len(self.plan)):
            n = int((stages == k).sum())
            if n == 0:
                continue
            group = self._group(k, n, bucket, g)
            if self.micro_batches > 1:
                per_micro = (stages == k).reshape(self.micro_batches, self.micro_size).sum(1)
                group.micro = tuple(int(c) for c in per_micro)
            groups.append(group)
        return groups

    def _side(self, k: int, bucket: str | None) -> int:
        """The latent grid height of window k (in `bucket`)."""
        window = self.plan[k]
        if bucket is None:
            return window.resolution // self.downsample
        return self.by_name[bucket].size(window.level)[0] // self.downsample

    def _group(self, k: int, n: int, bucket: str | None, g: torch.Generator) -> HostGroup:
        """`n` samples of window k from `bucket`, images, dropout, noise and ratios drawn from the rank's `g`."""
        window = self.plan[k]
        pool = self.pools[k][bucket]
        total = sum(c for _, c in pool)
        picks = torch.randint(0, total, (n,), generator=g).tolist()
        side = self._side(k, bucket)
        chunks, texts = [], []
        for res, count in pool:
            local = [p for p in picks if 0 <= p < count]
            picks = [p - count for p in picks]
            if local:
                batch = self.store.fetch_raw(res, local, bucket)
                chunks.append(batch.latents)
                texts.append(batch.text)
        text = TextEmbeddings.cat(texts)
        keep = torch.rand(n, generator=g) >= self.cfg_dropout
        if not bool(keep.all()):
            text = text.where(keep, self.store.null_text_raw.select([0] * n))
        _, channels, height, width = chunks[0].shape
        noise = torch.randn((n, channels, side, side * width // height), generator=g)
        r = sample_ratios(n, window, self.ratio_sampling, g)
        return HostGroup(k, side, chunks, text, noise, r)


def _check_bucket_tokens(buckets: Sequence[Bucket], plan: FlowPlan) -> None:
    """Refuse buckets whose size at some window is not whole tokens of the plan (a pixel codec
    trained with another --patch-size than the data was prepared for)."""
    p = plan.pixels_per_token
    for window in plan:
        for bucket in buckets:
            height, width = bucket.size(window.level)
            if height % p or width % p:
                raise NamiError(
                    f"bucket {bucket.name} is {width}x{height}px at stage {window.level + 1}, not whole "
                    f"{p}px tokens; train with the patch size the data was prepared for"
                )
