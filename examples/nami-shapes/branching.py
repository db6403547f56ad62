"""Which window settles a prompt's outcome: the sampler branched at each jump between windows.

    python examples/nami-shapes/branching.py --tag two_object --prompts 20
    python examples/nami-shapes/branching.py --model runs/shapes/final --tag counting --branches 6

After the initial noise, the jumps' renoise is the sampler's only randomness. For each prompt and
seed the script runs the windows once up to a jump, then finishes the image from that state in
--branches ways, each with its own jump noise from there on. Branch 0 keeps the seed's own
generator, so it is the image `nami sample --seed S` makes. Each finished image is scored by the
shapes detector and the GenEval rules. A group (prompt, seed, jump) is "settled" when all its
branches show the same detected classes: what the image holds was fixed before that jump.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from nami_core.denoiser import Denoiser
from nami_core.errors import NamiError
from nami_core.eval.detectors import get_detector
from nami_core.eval.geneval import evaluate_image, read_metadata
from nami_core.flow.sampler import ProgressiveSampler, initial_noise
from nami_core.modeldir import bundled_model_dir
from nami_core.pipeline import NamiPipeline

SUITE = bundled_model_dir().parents[0] / "geneval" / "shapes_suite.jsonl"


@dataclass(frozen=True)
class Outcome:
    """One finished image: its detected classes (sorted) and whether the GenEval rules pass it."""

    classes: tuple[str, ...]
    correct: bool


def _clone(generator: torch.Generator) -> torch.Generator:
    copy = torch.Generator(generator.device)
    copy.set_state(generator.get_state())
    return copy


def branch_seed(seed: int, jump: int, branch: int) -> int:
    """Seed of branch `branch` > 0 at `jump`: distinct for every (seed, jump, branch) with jump and branch < 1000."""
    return 1_000_003 * (seed + 1) + 1000 * jump + branch


def branch_latents(pipe: NamiPipeline, prompt: str, seed: int, branches: int,
                   steps=None, cfg: str | float | None = None) -> list[torch.Tensor]:
    """Final latents of every branch, per jump: entry j is (branches, C, H, W), branched after window j.

    Branch 0 continues the seed's generator (the plain sample); branch b > 0 draws its jump noise
    from a generator seeded with `branch_seed(seed, j, b)`.
    """
    plan = pipe.plan()
    stage_steps = plan.stage_steps(steps if steps is not None else tuple(pipe.scheduler.config.default_steps))
    guidance = plan.stage_guidance(pipe.scheduler.config.default_cfg if cfg is None else cfg)
    sampler = ProgressiveSampler(Denoiser(pipe.transformer, pipe.codec.patch_size), plan, pipe.jump_for(plan))

    def texts(n: int):
        cond = pipe.encode_prompts([prompt] * n)
        return cond, (pipe.encode_prompts([""] * n) if any(w != 1.0 for w in guidance) else None)

    trunk_generator = torch.Generator("cpu").manual_seed(seed)
    side = plan.flow.resolutions[-1] // pipe.codec.downsample
    z = initial_noise(1, pipe.codec.channels, (side, side), plan, [trunk_generator], pipe.device)
    cond, uncond = texts(1)
    branch_cond, branch_uncond = texts(branches)
    finished = []
    for j in range(len(plan) - 1):
        z = sampler.run_window(z, j, stage_steps[j], cond, uncond, guidance[j])
        generators = [_clone(trunk_generator)] + [
            torch.Generator("cpu").manual_seed(branch_seed(seed, j, b)) for b in range(1, branches)]
        zb = z.repeat(branches, 1, 1, 1)
        for k in range(j + 1, len(plan)):
            zb = sampler.run_window(sampler.jump(zb, k - 1, generators), k, stage_steps[k],
                                    branch_cond, branch_uncond, guidance[k])
        finished.append(zb)
        z = sampler.jump(z, j, [trunk_generator])
    return finished


def outcomes(pipe: NamiPipeline, latents: torch.Tensor, metadata: dict, detector) -> list[Outcome]:
    """Decode latents (B, C, H, W) and score each image against one metadata line."""
    images = pipe.numpy_to_pil(((pipe.codec.decode(latents).float() + 1) / 2).clamp(0, 1)
                               .permute(0, 2, 3, 1).cpu().numpy())
    scored = []
    for image in images:
        detections = detector.detect(image)
        scored.append(Outcome(tuple(sorted(d.cls for d in detections)), evaluate_image(detections, metadata)[0]))
    return scored


def is_settled(group: list[Outcome]) -> bool:
    """All branches of a group drew the same classes."""
    return len({o.classes for o in group}) == 1


def summarize(groups_per_jump: list[list[list[Outcome]]]) -> list[dict]:
    """Per jump: groups, settled groups, images and the share of them the rules pass."""
    rows = []
    for j, groups in enumerate(groups_per_jump):
        images = [o for g in groups for o in g]
        rows.append({"jump": j, "groups": len(groups), "settled": sum(is_settled(g) for g in groups),
                     "images": len(images), "correct": sum(o.correct for o in images)})
    return rows


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model directory (default: the bundled model)")
    parser.add_argument("--metadata", default=str(SUITE), help="GenEval-schema prompts (default: the shapes suite)")
    parser.add_argument("--tag", default="two_object")
    parser.add_argument("--prompts", type=int, default=20, help="first N prompts of the tag")
    parser.add_argument("--seeds", type=int, default=2, help="seeds 0..N-1 per prompt")
    parser.add_argument("--branches", type=int, default=4)
    parser.add_argument("--cfg", default=None, help="guidance scale, or one per window (default: the model's)")
    args = parser.parse_args(argv)
    if args.branches < 2:
        parser.error("--branches must be at least 2")

    try:
        lines = [m for m in read_metadata(args.metadata) if m["tag"] == args.tag][: args.prompts]
    except NamiError as error:
        parser.error(str(error))
    if not lines:
        parser.error(f"no prompts with tag {args.tag!r} in {args.metadata}")
    model = Path(args.model) if args.model else bundled_model_dir()
    if not (model / "model_index.json").is_file():
        parser.error(f"{model} is not a model directory (no model_index.json)")
    pipe = NamiPipeline.from_pretrained(str(model))
    pipe.set_progress_bar_config(disable=True)
    detector = get_detector("shapes")
    per_jump: list[list[list[Outcome]]] | None = None
    with torch.no_grad():
        for index, meta in enumerate(lines):
            for seed in range(args.seeds):
                finished = branch_latents(pipe, meta["prompt"], 1000 * index + seed, args.branches, cfg=args.cfg)
                groups = [outcomes(pipe, z, meta, detector) for z in finished]
                per_jump = per_jump or [[] for _ in groups]
                for j, group in enumerate(groups):
                    per_jump[j].append(group)
            print(f"{index + 1}/{len(lines)} {meta['prompt']}", file=sys.stderr, flush=True)
    sides = pipe.plan().flow.resolutions
    for row in summarize(per_jump):
        print(f"branched after the {sides[row['jump']]} px window: classes settled in "
              f"{row['settled']}/{row['groups']} groups; {row['correct']}/{row['images']} images correct")
    print(json.dumps(summarize(per_jump)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
