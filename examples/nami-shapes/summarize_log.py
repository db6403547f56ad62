"""Summarise a run's metrics.jsonl as a Markdown table (every N steps).

    python examples/nami-shapes/summarize_log.py runs/nami-shapes/metrics.jsonl 1000
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(path: Path, every: int) -> None:
    if not path.is_file():
        sys.exit(f"error: no metrics file at {path}")
    if every < 1:
        sys.exit(f"error: EVERY must be at least 1, got {every}")
    try:
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except json.JSONDecodeError as exc:
        sys.exit(f"error: {path} is not JSON lines ({exc.msg} at line {exc.lineno})")
    if not records:
        sys.exit(f"error: {path} has no records")
    interval = records[1]["step"] - records[0]["step"] if len(records) > 1 else records[0]["step"]
    elapsed = 0.0
    stages = len(records[0]["loss_stage"])
    print("| step | hours | loss | " + " | ".join(f"stage {k + 1}" for k in range(stages)) + " | images/s |")
    print("|---:|---:|---:|" + "---:|" * stages + "---:|")
    for r in records:
        elapsed += r["seconds_per_step"] * interval
        if r["step"] % every == 0 or r is records[-1]:
            losses = " | ".join("-" if v is None else f"{v:.4f}" for v in r["loss_stage"])
            print(f"| {r['step']} | {elapsed / 3600:.2f} | {r['loss']:.4f} | {losses} | {r['images_per_s']:.1f} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("metrics", type=Path, help="a run's metrics.jsonl")
    parser.add_argument("every", type=int, nargs="?", default=1000, help="one row every EVERY steps (and the last)")
    args = parser.parse_args()
    main(args.metrics, args.every)
