"""examples/nami-shapes/failures.py: failure kinds read off the rule engine's own reasons."""

import importlib.util
import json
from pathlib import Path

import pytest

from nami_core.eval.geneval import Detection, evaluate_image

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "nami-shapes" / "failures.py"
spec = importlib.util.spec_from_file_location("failures", SCRIPT)
failures = importlib.util.module_from_spec(spec)
spec.loader.exec_module(failures)

LEFT, RIGHT, TOP, BOTTOM = (2, 20, 14, 32), (40, 20, 52, 32), (20, 2, 32, 14), (20, 40, 32, 52)
CENTRE = (20, 20, 32, 32)


def det(cls, box, color="red"):
    """A confident detection: its score 0.95 clears the counting threshold (0.9) too."""
    return Detection(cls, 0.95, tuple(float(v) for v in box), color=color)


def position_meta(relation):
    """'a photo of a square <relation> a circle': include[1] (square) relates to include[0] (circle)."""
    return {"tag": "position", "prompt": f"a photo of a square {relation} a circle",
            "include": [{"class": "circle", "count": 1}, {"class": "square", "count": 1, "position": [relation, 0]}]}


def record(detections, meta):
    correct, reason, details = evaluate_image(detections, meta)
    return {"filename": "x.png", "tag": meta["tag"], "prompt": meta["prompt"], "correct": correct,
            "reason": reason, "metadata": json.dumps(meta), "details": json.dumps(details)}


@pytest.mark.parametrize("detections, meta, kind", [
    ([], {"tag": "single_object", "include": [{"class": "circle", "count": 1}]}, "class missing or short"),
    ([det("circle", LEFT, "blue")], {"tag": "colors", "include": [{"class": "circle", "count": 1, "color": "red"}]},
     "wrong colour"),
    ([det("circle", LEFT), det("square", RIGHT)], position_meta("left of"), "wrong relation"),
    ([det("circle", LEFT), det("circle", RIGHT), det("circle", TOP)],
     {"tag": "counting", "include": [{"class": "circle", "count": 2}], "exclude": [{"class": "circle", "count": 3}]},
     "class that must be absent"),
])
def test_reason_kind_names_each_rule_of_the_engine(detections, meta, kind):
    meta = {"prompt": "p", **meta}
    correct, reason, _ = evaluate_image(detections, meta)
    assert correct is False
    assert failures.reason_kind(reason) == kind


@pytest.mark.parametrize("box, relation", [(LEFT, "left of"), (RIGHT, "right of"), (TOP, "above"), (BOTTOM, "below")])
def test_arrangement_against_a_centred_target(box, relation):
    assert failures.arrangement(list(box), list(CENTRE)) == relation


def test_report_counts_kinds_and_the_position_axis_and_side(tmp_path, capsys):
    rows = [
        record([det("circle", CENTRE), det("square", RIGHT)], position_meta("right of")),  # correct
        record([det("circle", CENTRE), det("square", RIGHT)], position_meta("left of")),  # right axis, wrong side
        record([det("circle", CENTRE), det("square", TOP)], position_meta("left of")),  # wrong axis
        record([det("circle", CENTRE)], position_meta("above")),  # square missing: not in the axis table
    ]
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    failures.main(tmp_path)
    out = capsys.readouterr().out
    assert "| position | 4 | 0 | 1 | 2 | 0 | 0 |" in out
    assert "both classes found in 3 images: drawn on the asked axis 2 (0.67), on the asked side 1 (0.50 of those)" in out
    assert "| left of | 0 | 1 | 1 | 0 |" in out and "| right of | 0 | 1 | 0 | 0 |" in out


def test_report_refuses_a_folder_without_results(tmp_path):
    with pytest.raises(SystemExit, match="has no results.jsonl"):
        failures.main(tmp_path)
