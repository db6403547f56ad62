"""Does a model read which side a relation names? Its flow loss with the stated relation and the mirrored one.

    python examples/nami-shapes/side_loss.py
    python examples/nami-shapes/side_loss.py --model runs/shapes/final --scenes 512

Renders relation scenes of the shapes world with their true captions ("a red circle left of a blue
square"), then scores each scene's training loss in every window at a few local ratios r, once with
the true caption and once with its mirror ("... right of ..."), on the same noise. A model that binds
the side to the right object has a lower loss with the true caption; one that reads only the classes,
colours and axis of a relation has none. The table gives, per window and r, the mean loss gap
(mirror - true) with its standard error and the fraction of scenes whose true caption scores lower.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from typing import Sequence

import torch

from nami_core.data.images import to_tensor
from nami_core.data.shapes import OPPOSITE, RELATIONS, SceneStyle, random_scene, render, scene_rng
from nami_core.errors import NamiError
from nami_core.flow.pyramid import down_to
from nami_core.train.batches import StageGroup
from nami_core.train.staged_loss import StagedObjective, stage_losses

_RELATION = re.compile(r"\b(" + "|".join(RELATIONS) + r")\b")


def mirror_relation(caption: str) -> str:
    """The caption with every relation turned to its opposite side."""
    return _RELATION.sub(lambda m: OPPOSITE[m.group(1)], caption)


@dataclass(frozen=True)
class SideGap:
    """Window `window` at local ratio `r`: mean losses and the per-scene gap (mirror - true)."""

    window: int
    r: float
    loss_true: float
    loss_mirror: float
    gap: float
    gap_se: float
    true_lower: float


def relation_scenes(n: int, seed: int, style: SceneStyle) -> tuple[torch.Tensor, list[str]]:
    """n relation scenes: images (n, 3, 64, 64) in [-1, 1] and their true captions."""
    scenes = [random_scene(scene_rng(seed, i), 64, {"relation": 1.0}, style) for i in range(n)]
    return to_tensor([render(s.shapes, 64) for s in scenes]), [s.caption for s in scenes]


@torch.no_grad()
def side_gaps(pipe, images: torch.Tensor, captions: Sequence[str], ratios: Sequence[float], seed: int = 0,
              batch: int = 64) -> list[SideGap]:
    """Loss gaps for images (N, 3, H, W) with captions vs their mirrors, per window of the model's plan.
    The losses are `nami train`'s per-sample losses, computed by its objective."""
    plan = pipe.plan()
    objective = StagedObjective(pipe.transformer, plan, pipe.codec.patch_size)
    true_text = pipe.encode_prompts(list(captions))
    mirror_text = pipe.encode_prompts([mirror_relation(c) for c in captions])
    latents = pipe.codec.encode(images.to(pipe.device))
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for window in plan:
        x = down_to(latents, window.resolution // pipe.codec.downsample)
        for r in ratios:
            noise = torch.randn(x.shape, generator=generator).to(x.device)
            losses = {"true": [], "mirror": []}
            for start in range(0, len(x), batch):
                part = slice(start, start + batch)
                rr = torch.full((len(x[part]),), float(r), device=x.device)
                for name, text in (("true", true_text), ("mirror", mirror_text)):
                    group = StageGroup(window.index, x[part], text.select(part), noise[part], rr)
                    losses[name].append(stage_losses(objective, [group], plan, pipe.transformer.config.prediction)[0])
            true, mirror = torch.cat(losses["true"]), torch.cat(losses["mirror"])
            gap = mirror - true
            rows.append(SideGap(window.index, float(r), float(true.mean()), float(mirror.mean()), float(gap.mean()),
                                float(gap.std() / len(gap) ** 0.5) if len(gap) > 1 else 0.0,
                                float((gap > 0).float().mean())))
    return rows


def table(rows: Sequence[SideGap]) -> str:
    lines = ["| window | r | loss true | loss mirrored | gap (mirrored - true) | true lower |",
             "|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        lines.append(f"| {row.window} | {row.r:.2f} | {row.loss_true:.5f} | {row.loss_mirror:.5f} "
                     f"| {row.gap:+.6f} ± {row.gap_se:.6f} | {row.true_lower:.2f} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model directory (default: the bundled nami-shapes)")
    parser.add_argument("--scenes", type=int, default=256, help="relation scenes scored")
    parser.add_argument("--ratios", default="0.9,0.6,0.3", help="local ratios r scored in every window")
    parser.add_argument("--seed", type=int, default=123, help="scene seed (noise uses --seed + 1)")
    parser.add_argument("--usual-color", type=float, default=0.8, help="shapes-world --usual-color of the scenes")
    parser.add_argument("--gap", type=float, default=6.0, help="shapes-world --gap of the scenes")
    args = parser.parse_args(argv)
    try:
        if args.scenes < 2:
            raise NamiError(f"--scenes must be at least 2, got {args.scenes}")
        try:
            ratios = [float(v) for v in args.ratios.split(",")]
        except ValueError:
            raise NamiError(f"--ratios must be comma-separated numbers, got {args.ratios!r}") from None
        if not all(0.0 < r <= 1.0 for r in ratios):
            raise NamiError(f"--ratios must lie in (0, 1], got {args.ratios}")
        from nami_core.modeldir import load_pipeline

        style = SceneStyle(usual_color=args.usual_color, gap=args.gap)
        images, captions = relation_scenes(args.scenes, args.seed, style)
        pipe = load_pipeline(args.model, torch.device("cpu"), torch.float32)
    except NamiError as exc:
        sys.exit(f"error: {exc}")
    print(table(side_gaps(pipe, images, captions, ratios, seed=args.seed + 1)))


if __name__ == "__main__":
    main()
