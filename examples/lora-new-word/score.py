"""Score how well a nami-shapes model draws a colour word, with the project's `shapes` detector.

    python examples/lora-new-word/score.py --word dax --color purple --known purple \
        --variant before=nami_core/assets/nami-shapes \
        --variant after=nami_core/assets/nami-shapes+RUN/final/ema \
        --variant merged=MERGED_MODEL_DIR --out scores.json

Each --variant is NAME=MODEL or NAME=MODEL+ADAPTER[:SCALE] (a LoRA adapter folder, as `nami sample
--lora` takes it). Every variant draws the same prompt sets (model default steps and guidance; image j
of prompt i has seed SEED + i*N + j, the rule of `nami eval`, so the variants see the same noise):

* taught:      "a photo of a WORD C" for the 4 classes C           (--per-prompt images each)
* known:       "a photo of a KNOWN C", the word the model knows    (--per-prompt)
* taught_pair: "a photo of a WORD C and an orange C2", 4 prompts   (--pair-per-prompt)
* known_pair:  the same with KNOWN                                 (--pair-per-prompt)
* others:      "a photo of a K C" for the 7 other colours K         (--others-per-prompt): nothing forgotten

An image is correct by GenEval's rules as `nami eval` applies them (nami_core/eval/geneval.py), tag
"colors" (one object) or "color_attr" (two): the best detection of each asked class scores above 0.3
and has the asked colour (WORD and KNOWN both ask for --color). The JSON (stdout, and --out) gives per
variant and set the score (fraction correct), the colours the detector saw on the first-named object
of the asked colour, and the seconds spent.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections import Counter
from pathlib import Path

import torch

from nami_core.data.shapes import CLASSES, COLORS, noun_phrase
from nami_core.eval.detectors.shapes import ShapesDetector
from nami_core.eval.generation import Generator
from nami_core.eval.geneval import evaluate_image, keep_detections


def _single(word: str, cls: str, color: str) -> tuple[str, dict]:
    return (f"a photo of {noun_phrase(cls, word)}",
            {"tag": "colors", "include": [{"class": cls, "count": 1, "color": color}]})


def _pair(word: str, cls: str, color: str, other_cls: str, other_color: str, first: bool) -> tuple[str, dict]:
    a, b = noun_phrase(cls, word), noun_phrase(other_cls, other_color)
    include = [{"class": cls, "count": 1, "color": color}, {"class": other_cls, "count": 1, "color": other_color}]
    return f"a photo of {a} and {b}" if first else f"a photo of {b} and {a}", {"tag": "color_attr", "include": include}


def prompt_sets(word: str, color: str, known: str) -> dict[str, list[tuple[str, dict]]]:
    """set name -> [(prompt, GenEval metadata)]; the first include entry is the object in `color`."""
    others = [k for k in COLORS if k != color]
    pairs = [(c, CLASSES[(i + 1) % len(CLASSES)], others[(3 * i + 1) % len(others)], i % 2 == 0)
             for i, c in enumerate(CLASSES)]
    return {
        "taught": [_single(word, c, color) for c in CLASSES],
        "known": [_single(known, c, color) for c in CLASSES],
        "taught_pair": [_pair(word, c, color, c2, k, first) for c, c2, k, first in pairs],
        "known_pair": [_pair(known, c, color, c2, k, first) for c, c2, k, first in pairs],
        "others": [_single(k, c, k) for k in others for c in CLASSES],
    }


SETS = ("taught", "known", "taught_pair", "known_pair", "others")


def score_set(gen: Generator, items: list[tuple[str, dict]], per_prompt: int, seed: int, save: Path | None) -> dict:
    detector = ShapesDetector()
    prompts = [p for p, _ in items]
    correct, seen = 0, Counter()
    for g in gen.images(prompts, per_prompt, seed, batch_size=32):
        meta = items[g.index][1]
        detections = detector.detect(g.image)
        ok, _, _ = evaluate_image(detections, meta)
        correct += ok
        cls = meta["include"][0]["class"]  # the colour the detector saw on the asked-for object
        kept = keep_detections(detections, meta["tag"]).get(cls)
        seen[kept[0].color if kept else f"no {cls}"] += 1
        if save is not None:
            save.mkdir(parents=True, exist_ok=True)
            g.image.save(save / f"{prompts[g.index].replace(' ', '-')}-s{g.seed}{'' if ok else '-x'}.png")
    total = len(prompts) * per_prompt
    return {"score": round(correct / total, 4), "correct": correct, "images": total, "seen": dict(seen.most_common())}


def machine() -> str:
    """CPU model, cores this process may use, torch version."""
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{name}, {cores} cores, torch {torch.__version__}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variant", action="append", required=True, metavar="NAME=MODEL[+ADAPTER[:SCALE]]")
    ap.add_argument("--word", required=True, help="the taught word, e.g. dax")
    ap.add_argument("--color", required=True, choices=list(COLORS), help="the palette colour it means")
    ap.add_argument("--known", default=None, help="the word the model knows for that colour (default: --color)")
    ap.add_argument("--per-prompt", type=int, default=16, help="images per taught/known prompt (default 16)")
    ap.add_argument("--pair-per-prompt", type=int, default=8, help="images per two-object prompt (default 8)")
    ap.add_argument("--others-per-prompt", type=int, default=4, help="images per other-colour prompt (default 4)")
    ap.add_argument("--sets", default=",".join(SETS), help=f"sets to draw (default: {','.join(SETS)})")
    ap.add_argument("--seed", type=int, default=1000, help="first seed (default 1000)")
    ap.add_argument("--out", type=Path, help="also write the JSON here")
    ap.add_argument("--save-images", type=Path, help="write every image under DIR/VARIANT/SET/ (-x: wrong)")
    args = ap.parse_args()
    wanted = [name.strip() for name in args.sets.split(",") if name.strip()]
    unknown = [name for name in wanted if name not in SETS]
    if unknown or not wanted:
        ap.error(f"--sets: {', '.join(unknown) or 'none given'}; choose from {', '.join(SETS)}")
    per_prompt = {"taught": args.per_prompt, "known": args.per_prompt, "taught_pair": args.pair_per_prompt,
                  "known_pair": args.pair_per_prompt, "others": args.others_per_prompt}

    known = args.known or args.color
    sets = {name: items for name, items in prompt_sets(args.word, args.color, known).items() if name in wanted}
    report = {"word": args.word, "color": args.color, "known": known, "seed": args.seed,
              "images_per_prompt": {name: per_prompt[name] for name in sets},
              "prompts": {name: [p for p, _ in items] for name, items in sets.items()},
              "rule": "GenEval colors / color_attr: the best detection of each asked class scores > 0.3 "
                      "and has the asked colour",
              "machine": machine(),
              "variants": {}}
    for spec in args.variant:
        name, sep, source = spec.partition("=")
        if not sep or not source:
            ap.error(f"--variant {spec}: expected NAME=MODEL[+ADAPTER[:SCALE]]")
        model, _, adapter = source.partition("+")
        t0 = time.perf_counter()
        gen = Generator(model, device="cpu", loras=[adapter] if adapter else [])
        result = {"model": model, "lora": adapter or None}
        for set_name, items in sets.items():
            save = args.save_images / name / set_name if args.save_images else None
            r = result[set_name] = score_set(gen, items, per_prompt[set_name], args.seed, save)
            print(f"{name:>8} {set_name:>11}: {r['score']:.3f} ({r['correct']}/{r['images']})  seen {r['seen']}",
                  file=sys.stderr, flush=True)
        result["seconds"] = round(time.perf_counter() - t0, 1)
        report["variants"][name] = result
    text = json.dumps(report, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
