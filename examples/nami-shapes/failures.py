"""What a `nami eval geneval` run's failed images got wrong, from its results.jsonl.

    python examples/nami-shapes/failures.py eval/shapes

Prints, per tag, how many images failed for each kind of reason (a class missing or short of its
count, a wrong colour, a wrong relation, a class present that must not be). For the position tag it
also tabulates, over the images where both classes were found, how the second object sits relative
to the first (by the larger of the horizontal and vertical centre offsets) against what the prompt
asked: the share on the asked axis, and on the asked side of it.
"""

from __future__ import annotations

import json
import re
import sys
from collections import Counter, defaultdict
from pathlib import Path

from nami_core.eval.geneval import read_results

REASON_KINDS = (  # (kind, pattern of one reason line, as nami_core.eval.geneval words it)
    ("wrong colour", re.compile(r"^expected \w+ \w+>=\d+, found")),
    ("class missing or short", re.compile(r"^expected \w+>=\d+, found")),
    ("wrong relation", re.compile(r"^(expected \w+ (left of|right of|above|below) \w+|no target)")),
    ("class that must be absent", re.compile(r"^expected \w+<\d+, found")),
)
AXIS = {"left of": "x", "right of": "x", "above": "y", "below": "y"}


def reason_kind(reason: str) -> str:
    """The kind of a failed image's first reason line."""
    first = reason.splitlines()[0] if reason else ""
    return next((kind for kind, pattern in REASON_KINDS if pattern.match(first)), "other")


def arrangement(box: list[float], target: list[float]) -> str:
    """Where `box` sits relative to `target` ([x0, y0, x1, y1]; x right, y down), one relation."""
    dx = (box[0] + box[2] - target[0] - target[2]) / 2
    dy = (box[1] + box[3] - target[1] - target[3]) / 2
    if abs(dx) >= abs(dy):
        return "right of" if dx > 0 else "left of"
    return "below" if dy > 0 else "above"


def main(folder: Path) -> None:
    if not (folder / "results.jsonl").is_file():
        sys.exit(f"error: {folder} has no results.jsonl (run nami eval geneval --out {folder} first)")
    results = read_results(folder)
    if not results:
        sys.exit(f"error: {folder} has no results")
    kinds: dict[str, Counter] = defaultdict(Counter)
    drawn: dict[str, Counter] = defaultdict(Counter)
    for r in results:
        kinds[r["tag"]]["images"] += 1
        if not r["correct"]:
            kinds[r["tag"]][reason_kind(r["reason"])] += 1
        if r["tag"] != "position":
            continue
        include = json.loads(r["metadata"]).get("include", [])
        if len(include) == 2 and "position" in include[1]:
            first, second = include
            details = json.loads(r["details"])
            if details.get(first["class"]) and details.get(second["class"]):
                asked = second["position"][0]
                drawn[asked][arrangement(details[second["class"]][0], details[first["class"]][0])] += 1
    columns = ["images"] + [kind for kind, _ in REASON_KINDS] + ["other"]
    print("| tag | " + " | ".join(columns) + " |")
    print("|---|" + "---:|" * len(columns))
    for tag, counts in kinds.items():
        print(f"| {tag} | " + " | ".join(str(counts[c]) for c in columns) + " |")
    if drawn:
        both = sum(sum(c.values()) for c in drawn.values())
        on_axis = sum(n for asked, c in drawn.items() for rel, n in c.items() if AXIS[rel] == AXIS[asked])
        on_side = sum(c[asked] for asked, c in drawn.items())
        print(f"\nposition, both classes found in {both} images: drawn on the asked axis {on_axis} "
              f"({on_axis / both:.2f}), on the asked side {on_side} ({on_side / max(on_axis, 1):.2f} of those)")
        relations = list(AXIS)
        print("| asked \\ drawn | " + " | ".join(relations) + " |")
        print("|---|" + "---:|" * len(relations))
        for asked in relations:
            print(f"| {asked} | " + " | ".join(str(drawn[asked][rel]) for rel in relations) + " |")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: " + __doc__.strip().splitlines()[2].strip())
    main(Path(sys.argv[1]))
