"""Scoring NAMI-1K annotations: average the annotators, weight the dimensions, measure agreement.

* An image's score on a dimension is the mean over the annotators who gave one (null = not given).
* A model's score on a dimension is the mean over its images that have a score on it.
* overall = 0.3 relevance + 0.3 coherence + 0.2 aesthetics + 0.2 realism (the paper's weights),
  taken on the model's dimension means; the same per source (open / human / generated).
* agreement: Krippendorff's alpha (interval) per dimension over all images scored by at least two
  annotators (`agreement.krippendorff_alpha_interval`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ...errors import NamiError
from ...user_files import read_json
from .agreement import krippendorff_alpha_interval
from .annotate import DIMENSIONS
from .prompts import SOURCES

WEIGHTS = {"relevance": 0.3, "coherence": 0.3, "aesthetics": 0.2, "realism": 0.2}
FORMAT = "nami1k-annotations/1"


@dataclass
class Annotation:
    """One annotator's export: key -> the item's fields and its scores (None where not given)."""

    annotator: str
    path: Path
    items: dict[str, dict]


def read_annotation(path: str | Path) -> Annotation:
    path = Path(path)
    data = read_json(path, "annotation file")  # strict: a key given twice is refused, not overwritten
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise NamiError(f"{path} is not a NAMI-1K annotation export (format {FORMAT!r})")
    annotator = data.get("annotator")
    if not isinstance(annotator, str) or not annotator.strip():
        raise NamiError(f"{path}: annotator must be a non-empty string")
    rows = data.get("items")
    if not isinstance(rows, list):
        raise NamiError(f"{path}: items must be a list of scored images, got {json.dumps(rows)[:40]}")
    items = {}
    for n, row in enumerate(rows):
        where = f"{path}: items[{n}]"
        if not isinstance(row, dict) or not isinstance(row.get("key"), str) or not isinstance(row.get("model"), str):
            raise NamiError(f"{where} needs a key and a model")
        if row.get("source") not in SOURCES:
            raise NamiError(f"{where}: source must be one of {', '.join(SOURCES)}")
        for dim in DIMENSIONS:
            value = row.get(dim)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not 0 <= value <= 100):
                raise NamiError(f"{where}: {dim} must be a number from 0 to 100 or null, got {value!r}")
        if row["key"] in items:
            raise NamiError(f"{where}: the image {row['key']!r} is scored twice in one file (which scores count?)")
        items[row["key"]] = row
    if not items:
        raise NamiError(f"{path} holds no items")
    return Annotation(annotator.strip(), path, items)


def read_annotations(paths: Sequence[str | Path]) -> list[Annotation]:
    annotations = [read_annotation(p) for p in paths]
    seen: dict[str, Path] = {}
    for a in annotations:
        if a.annotator in seen:
            raise NamiError(f"annotator {a.annotator!r} appears in both {seen[a.annotator]} and {a.path}")
        seen[a.annotator] = a.path
    return annotations


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def weighted_overall(means: dict[str, float]) -> float:
    return sum(WEIGHTS[d] * means[d] for d in DIMENSIONS)


def image_scores(annotations: Sequence[Annotation]) -> dict[str, dict]:
    """key -> {model, source, <dimension>: mean over annotators (NaN when nobody scored it)}."""
    merged: dict[str, dict] = {}
    for a in annotations:
        for key, row in a.items.items():
            entry = merged.setdefault(key, {"model": row["model"], "source": row["source"],
                                            **{d: [] for d in DIMENSIONS}})
            for d in DIMENSIONS:
                if row.get(d) is not None:
                    entry[d].append(float(row[d]))
    return {key: {"model": e["model"], "source": e["source"], **{d: _mean(e[d]) for d in DIMENSIONS}}
            for key, e in merged.items()}


def model_table(images: dict[str, dict], model: str, source: str | None = None) -> dict:
    """Dimension means, overall and image count of one model (optionally one source)."""
    rows = [r for r in images.values() if r["model"] == model and (source is None or r["source"] == source)]
    means = {d: _mean([r[d] for r in rows if not math.isnan(r[d])]) for d in DIMENSIONS}
    return {**means, "overall": weighted_overall(means), "images": len(rows)}


def score_annotations(annotations: Sequence[Annotation], models: Sequence[str] | None = None) -> dict:
    """{"models": {model: table}, "sources": {model: {source: table}}, "agreement": {dim: alpha}, ...}."""
    images = image_scores(annotations)
    present = sorted({r["model"] for r in images.values()})
    if models:
        missing = [m for m in models if m not in present]
        if missing:
            raise NamiError(f"model {missing[0]!r} has no annotated images; annotated models: {', '.join(present)}")
        chosen = list(models)
    else:
        chosen = present
    agreement = {}
    for d in DIMENSIONS:
        units = [[float(a.items[k][d]) for a in annotations if k in a.items and a.items[k].get(d) is not None]
                 for k in images if images[k]["model"] in chosen]
        agreement[d] = krippendorff_alpha_interval(units)
    return {
        "weights": dict(WEIGHTS),
        "annotators": [a.annotator for a in annotations],
        "models": {m: model_table(images, m) for m in chosen},
        "sources": {m: {s: model_table(images, m, s) for s in SOURCES} for m in chosen},
        "agreement": agreement,
        "agreement_metric": "Krippendorff's alpha (interval)",
    }
