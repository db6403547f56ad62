"""Generate with the Python API instead of the CLI.

    python examples/python_api.py runs/my-model/final "a photo of a red circle"
"""

import sys

import torch

from nami_core.modeldir import load_pipeline


def main() -> None:
    model_dir, prompt = sys.argv[1], sys.argv[2]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    pipe = load_pipeline(model_dir, device, torch.float32)
    out = pipe(prompt, num_images_per_prompt=4, seed=0)
    for i, image in enumerate(out.images):
        image.save(f"sample-{i}.png")
    print("seconds per stage:", [round(s, 3) for s in out.stage_seconds])


if __name__ == "__main__":
    main()
