"""A gallery of one model's samples: one row per prompt, N seeds per row, upscaled for viewing.

    python examples/nami-shapes/gallery.py default docs/nami-shapes-gallery.png
    python examples/nami-shapes/gallery.py runs/nami-shapes/final gallery.png --n 6 --scale 3

Image j of row i uses seed j, as `nami sample --seed 0 --n N` would.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from nami_core.modeldir import load_pipeline, resolve_model_dir

PROMPTS = (
    "a photo of a red circle left of a blue square",
    "a photo of three purple triangles",
    "a photo of a yellow diamond",
    "a photo of a green square and a white circle",
    "a photo of two black diamonds",
    "a photo of an orange triangle above a blue circle",
)
LABEL_WIDTH = 300


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="model directory, or 'default' for the bundled model")
    parser.add_argument("out", type=Path, help="PNG to write")
    parser.add_argument("--n", type=int, default=4, help="seeds per prompt")
    parser.add_argument("--scale", type=int, default=2, help="nearest-neighbour upscaling of each sample")
    parser.add_argument("--steps", default=None, help="Euler steps per stage (default: the model's)")
    parser.add_argument("--cfg", default=None, help="guidance scale, or one per window such as 8,3,3 (default: the model's)")
    args = parser.parse_args()

    pipe = load_pipeline(resolve_model_dir(args.model), torch.device("cpu"), torch.float32)
    rows = [pipe(prompt, num_images_per_prompt=args.n, seed=0, steps=args.steps, cfg=args.cfg).images for prompt in PROMPTS]
    side = rows[0][0].width * args.scale
    sheet = Image.new("RGB", (LABEL_WIDTH + args.n * (side + 4), len(rows) * (side + 4)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (prompt, images) in enumerate(zip(PROMPTS, rows)):
        y = i * (side + 4)
        draw.text((4, y + side // 2 - 6), prompt.removeprefix("a photo of "), fill="black")
        for j, image in enumerate(images):
            sheet.paste(image.resize((side, side), Image.Resampling.NEAREST), (LABEL_WIDTH + j * (side + 4), y))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
