"""Histograms of a NAMI-1K prompt set: prompt length per source (paper Fig. 6) and topics (Fig. 12)."""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path
from typing import Sequence

from ...files import write_bytes_atomic
from ...output_targets import Inputs, check_out_file
from .prompts import SOURCES, PromptRecord
from .topics import TOPICS

LENGTH_BIN = 10  # words per bar of the length histogram


def length_histogram(records: Sequence[PromptRecord], bin_words: int = LENGTH_BIN) -> dict[str, list[int]]:
    """source -> counts per length bin [1..bin], [bin+1..2 bin], ... up to the longest prompt."""
    top = max((r.words for r in records), default=1)
    bins = max(1, -(-top // bin_words))
    counts = {s: [0] * bins for s in SOURCES}
    for r in records:
        counts[r.source][min(bins - 1, max(0, r.words - 1) // bin_words)] += 1
    return counts


def topic_counts(records: Sequence[PromptRecord]) -> dict[str, int]:
    """topic -> number of prompts, in `TOPICS` order (topics with none included)."""
    found = Counter(r.topic for r in records)
    return {t: found.get(t, 0) for t in TOPICS}


def write_histograms(records: Sequence[PromptRecord], path: str | Path, bin_words: int = LENGTH_BIN,
                     inputs: Inputs | None = None) -> None:
    """One PNG: left, stacked word-count histogram by source; right, prompts per topic. `path` must
    end in .png and be none of `inputs` (the output policy, `output_targets`)."""
    path = check_out_file(path, (".png",), "histogram PNG", inputs, flag="--plot")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lengths = length_histogram(records, bin_words)
    bins = len(next(iter(lengths.values())))
    labels = [f"{k * bin_words + 1}-{(k + 1) * bin_words}" for k in range(bins)]
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.5))
    bottom = [0] * bins
    for source in SOURCES:
        left.bar(range(bins), lengths[source], bottom=bottom, label=f"{source} ({sum(lengths[source])})")
        bottom = [b + c for b, c in zip(bottom, lengths[source])]
    left.set_xticks(range(bins), labels, rotation=45, ha="right")
    left.set_xlabel("prompt length (words)")
    left.set_ylabel("prompts")
    left.set_title(f"Prompt length ({len(records)} prompts)")
    left.legend()
    topics = topic_counts(records)
    right.barh(list(topics)[::-1], list(topics.values())[::-1], color="tab:green")
    right.set_xlabel("prompts")
    right.set_title("Topics")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    write_bytes_atomic(path, buffer.getvalue())
