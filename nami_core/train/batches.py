"""Algorithm 1 batches: every sample trains one stage, drawn by the stage mix in force.

A step's batch is a pure function of (seed, step, rank), so resuming at a step restores the
data position exactly. The stage of each sample comes from a generator shared by all ranks
(so every rank runs the same block prefixes, which DDP and FSDP need); the images come from a
rank-specific generator, so ranks see different data.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data.store import LatentStore
from ..flow.objective import sample_ratios
from ..flow.pyramid import down_to
from ..flow.plan import FlowPlan
from ..text.embeddings import TextEmbeddings


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


class BatchDrawer:
    """Draws the groups of a step from a `LatentStore` for a `FlowPlan`."""

    def __init__(self, store: LatentStore, plan: FlowPlan, downsample: int, batch_size: int, seed: int,
                 rank: int = 0, ratio_sampling: str = "logit-normal", cfg_dropout: float = 0.1) -> None:
        self.store = store
        self.plan = plan
        self.downsample = downsample
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.ratio_sampling = ratio_sampling
        self.cfg_dropout = cfg_dropout
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
        weights = torch.tensor(self.plan.stage_mix(mix), dtype=torch.float64)
        return torch.multinomial(weights, self.batch_size, replacement=True, generator=step_generator(self.seed, step, 0))

    def draw(self, step: int, mix) -> list[StageGroup]:
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
            latents, texts = [], []
            for res, count in pool:
                local = [p for p in picks if 0 <= p < count]
                picks = [p - count for p in picks]
                if local:
                    batch = self.store.fetch(res, local)
                    latents.append(down_to(batch.latents, side))
                    texts.append(batch.text)
            x = torch.cat(latents)
            text = TextEmbeddings.cat(texts)
            keep = torch.rand(n, generator=g) >= self.cfg_dropout
            if not bool(keep.all()):
                null = self.store.null_text
                text = text.where(keep, null.select([0] * n))
            noise = torch.randn(x.shape, generator=g)
            r = sample_ratios(n, window, self.ratio_sampling, g)
            groups.append(StageGroup(k, x, text, noise, r))
        return groups
