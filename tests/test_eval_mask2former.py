"""The mask2former detector: GenEval's mmdet pre/post-processing on hand-made logits, the detector, the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nami_core.errors import NamiError
from nami_core.eval import geneval as ge
from nami_core.eval.coco import GENEVAL_OBJECT_NAMES
from nami_core.eval.detectors import DetectorOptions, get_detector
from nami_core.eval.detectors import mask2former as m2f
from tests.test_eval_tiny_models import build_tiny_clip, build_tiny_mask2former
from tests.helpers import run_cli

OFFICIAL = Path("/work/shared/geneval")


@pytest.fixture(scope="module")
def tiny_m2f(tmp_path_factory):
    return build_tiny_mask2former(tmp_path_factory.mktemp("m2f") / "model")


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    return build_tiny_clip(tmp_path_factory.mktemp("clip") / "model")



# -- class names ------------------------------------------------------------------------------------------


@pytest.mark.skipif(not (OFFICIAL / "object_names.txt").exists(), reason="GenEval's object_names.txt not present")
def test_class_names_are_genevals_in_order():
    names = [line.strip() for line in (OFFICIAL / "object_names.txt").read_text().splitlines() if line.strip()]
    assert list(GENEVAL_OBJECT_NAMES) == names and len(names) == 80
    assert GENEVAL_OBJECT_NAMES[0] == "person" and GENEVAL_OBJECT_NAMES[79] == "toothbrush"


# -- pre-processing ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("size, expected", [
    ((512, 512), (800, 800)),      # 800 / 512 limits
    ((1024, 1024), (800, 800)),
    ((64, 48), (1067, 800)),       # min(1333 / 64, 800 / 48) = 16.667: 64 * 16.667 + 0.5 -> 1067
    ((2666, 100), (1333, 50)),     # min(1333 / 2666, 800 / 100) = 0.5
    ((100, 300), (444, 1333)),     # portrait: min(1333 / 300, 800 / 100) = 4.443: 444.8 -> 444
])
def test_keep_ratio_size(size, expected):
    assert m2f.rescale_size(*size) == expected


def test_preprocess_resizes_pads_with_128_and_normalises():
    pixels, resized = m2f.preprocess(Image.new("RGB", (64, 48), (200, 100, 50)))
    assert resized == (800, 1067) and tuple(pixels.shape) == (1, 3, 800, 1088)  # 1067 padded to 34 * 32
    inside = pixels[0, :, 400, 500]
    expected = torch.tensor([(200 - 123.675) / 58.395, (100 - 116.28) / 57.12, (50 - 103.53) / 57.375])
    assert torch.allclose(inside, expected, atol=1e-5)
    pad = pixels[0, :, 10, 1080]
    assert torch.allclose(pad, torch.tensor([(128 - 123.675) / 58.395, (128 - 116.28) / 57.12,
                                             (128 - 103.53) / 57.375]), atol=1e-5)


def test_preprocess_rounds_the_resized_image_to_whole_values():
    image = Image.fromarray(np.array([[[0, 0, 0], [255, 255, 255]]], dtype=np.uint8))  # 2 x 1 pixels
    pixels, resized = m2f.preprocess(image, scale=(8, 4))  # factor min(8 / 2, 4 / 1) = 4 -> 8 x 4
    assert resized == (4, 8)
    values = (pixels[0, 0, 0, :8] * 58.395 + 123.675).numpy()
    assert np.allclose(values, np.round(values), atol=1e-3)
    # half-pixel centres without antialiasing: columns 0-1 stay 0, 6-7 stay 255, the ramp between
    assert np.allclose(values, [0, 0, 32, 96, 159, 223, 255, 255], atol=1e-3)


def test_upsample_crops_the_padding_then_resizes_to_the_original():
    low = torch.zeros(2, 4, 4)
    low[:, :, 2:] = 10.0  # the right half of the padded input, outside the 3-column wide image
    out = m2f.upsample_mask_logits(low, padded=(8, 8), resized=(8, 3), original=(4, 5))
    assert tuple(out.shape) == (2, 4, 5)
    assert float(out.max()) < 10.0 and float(out[:, :, 0].max()) == 0.0


# -- post-processing on crafted logits --------------------------------------------------------------------


def crafted():
    """2 queries, 3 classes + "no object"; probabilities q0 = (.6, .2, .1 | .1), q1 = (.1, .1, .7 | .1)."""
    class_logits = torch.log(torch.tensor([[6.0, 2.0, 1.0, 1.0], [1.0, 1.0, 7.0, 1.0]]))
    masks = torch.full((2, 4, 5), -2.0)
    masks[0, 1:3, 1:4] = math.log(3.0)  # sigmoid 0.75 on a 2 x 3 block
    masks[1] = 0.0  # logit 0 is not > 0: outside the binary mask
    masks[1, 0, 4] = math.log(4.0)  # sigmoid 0.8
    masks[1, 3, 0] = math.log(9.0)  # sigmoid 0.9
    return class_logits, masks


def test_instance_postprocess_scores_order_and_boxes():
    found = m2f.instance_postprocess(*crafted(), max_per_image=3)
    # top 3 of the flattened probabilities: (q1, class 2) .7, (q0, class 0) .6, (q0, class 1) .2
    assert found.labels.tolist() == [2, 0, 1]
    # score = class probability x mean sigmoid inside the mask: .7 x (.8 + .9) / 2, .6 x .75, .2 x .75
    assert found.scores.tolist() == pytest.approx([0.595, 0.45, 0.15], abs=1e-6)
    # q1's mask holds (row 0, col 4) and (row 3, col 0): box (0, 0, 4 + 1, 3 + 1); q0's rows 1-2, cols 1-3
    assert found.boxes.tolist() == [[0, 0, 5, 4], [1, 1, 4, 3], [1, 1, 4, 3]]
    assert found.masks.shape == (3, 4, 5) and int(found.masks[0].sum()) == 2 and int(found.masks[1].sum()) == 6


def test_instance_postprocess_ties_keep_the_lower_flat_index():
    found = m2f.instance_postprocess(*crafted(), max_per_image=4)
    # the fourth place is a three-way tie at .1: (q0, 2) has flat index 2, before (q1, 0) = 3 and (q1, 1) = 4
    assert found.labels.tolist() == [2, 0, 1, 2]
    assert found.scores[3].item() == pytest.approx(0.1 * 0.75, abs=1e-6)


def test_empty_mask_scores_zero_and_has_a_zero_box():
    class_logits = torch.log(torch.tensor([[8.0, 1.0, 1.0]]))
    found = m2f.instance_postprocess(class_logits, torch.full((1, 3, 3), -1.0), max_per_image=1)
    assert found.scores.tolist() == [0.0] and found.boxes.tolist() == [[0, 0, 0, 0]]


# -- the detector -----------------------------------------------------------------------------------------


def test_detector_on_a_tiny_model(tiny_m2f):
    detector = get_detector(f"mask2former:{tiny_m2f}")
    assert detector.name == "mask2former" and detector.classes == GENEVAL_OBJECT_NAMES
    image = Image.new("RGB", (40, 30), (90, 140, 200))
    found = detector.detect(image)
    assert len(found) == 100  # 10 queries x 80 classes, top 100
    assert all(d.cls in GENEVAL_OBJECT_NAMES and 0 <= d.score <= 1 and d.color is None for d in found)
    assert all(d.mask.shape == (30, 40) and d.mask.dtype == bool for d in found)
    assert all(0 <= d.box[0] <= d.box[2] <= 40 and 0 <= d.box[1] <= d.box[3] <= 30 for d in found)
    instances = detector.instances(image)
    assert [d.score for d in found] == pytest.approx(instances.scores.tolist())


class FixedColors:
    def __init__(self):
        self.calls = []

    def classify(self, image, objects, classname):
        self.calls.append((classname, len(objects)))
        return ["blue"] * len(objects)


def test_colours_are_named_only_for_detections_genevals_rules_can_see():
    detector = m2f.Mask2FormerDetector.__new__(m2f.Mask2FormerDetector)
    detector.colors, detector.threshold, detector.max_objects = FixedColors(), 0.3, 2
    dets = [ge.Detection("cat", s, (0, 0, 1, 1)) for s in (0.9, 0.31, 0.95, 0.3)] + [ge.Detection("dog", 0.5, (0, 0, 1, 1))]
    detector.name_colors(Image.new("RGB", (4, 4)), dets)
    # cats above 0.3: 0.95, 0.9, 0.31; only the top two (max_objects) are classified; the dog too
    assert [d.color for d in dets] == ["blue", None, "blue", None, "blue"]
    assert sorted(detector.colors.calls) == [("cat", 2), ("dog", 1)]


def test_detector_errors(tmp_path, tiny_m2f):
    with pytest.raises(NamiError, match="needs its model folder: --detector mask2former:PATH"):
        get_detector("mask2former")
    with pytest.raises(NamiError, match="mask2former detector: .* does not exist; save a transformers Mask2Former"):
        get_detector(f"mask2former:{tmp_path / 'none'}")
    three = build_tiny_mask2former(tmp_path / "three", num_labels=3)
    with pytest.raises(NamiError, match="predicts 3 classes; GenEval needs a COCO-instance model with 80"):
        get_detector(f"mask2former:{three}")
    with pytest.raises(NamiError, match="--clip is for the mask2former detector"):
        get_detector("shapes", DetectorOptions(clip=str(tiny_m2f)))


# -- the command ------------------------------------------------------------------------------------------


def official_subset(tmp_path):
    lines = ge.read_metadata(OFFICIAL / "evaluation_metadata.jsonl")
    chosen = [next(l for l in lines if l["tag"] == "single_object"), next(l for l in lines if l["tag"] == "colors")]
    out = tmp_path / "run"
    ge.write_prompt_folders(out, chosen)
    for i in range(len(chosen)):
        Image.new("RGB", (32, 32), (120, 60, 30)).save(ge.sample_path(out, i, 0))
    metadata = tmp_path / "subset.jsonl"
    ge.write_metadata(metadata, chosen)
    return out, metadata


@pytest.mark.skipif(not (OFFICIAL / "evaluation_metadata.jsonl").exists(), reason="GenEval metadata not present")
def test_cli_geneval_with_mask2former_and_clip(tmp_path, capsys, tiny_m2f, tiny_clip):
    out, metadata = official_subset(tmp_path)
    code, stdout, err = run_cli(["eval", "geneval", "--out", str(out), "--skip-generation", "--metadata", str(metadata),
                                 "--detector", f"mask2former:{tiny_m2f}", "--clip", str(tiny_clip), "--device", "cpu"],
                                capsys)
    assert code == 0, err
    assert "GenEval (mask2former detector)" in stdout
    assert stdout.rstrip().splitlines()[-1] == "overall 0.000"  # a random model finds nothing above 0.3
    records = ge.read_results(out)
    assert [r["tag"] for r in records] == ["single_object", "colors"]
    assert all(r["correct"] is False and r["reason"].startswith("expected ") for r in records)
    assert json.loads((out / "summary.json").read_text())["overall"] == 0.0


@pytest.mark.skipif(not (OFFICIAL / "evaluation_metadata.jsonl").exists(), reason="GenEval metadata not present")
def test_cli_colour_prompts_need_clip(tmp_path, capsys, tiny_m2f):
    out, metadata = official_subset(tmp_path)
    code, stdout, err = run_cli(["eval", "geneval", "--out", str(out), "--skip-generation", "--metadata", str(metadata),
                                 "--detector", f"mask2former:{tiny_m2f}", "--device", "cpu"], capsys)
    assert code == 2 and stdout == "" and err.count("\n") == 1
    assert "asks for colours" in err and "needs --clip PATH" in err
    assert not (out / "results.jsonl").exists()


def test_cli_corrupt_detector_weights(tmp_path, capsys):
    folder = build_tiny_mask2former(tmp_path / "broken")
    (folder / "model.safetensors").write_bytes(b"not a safetensors file")
    code, _, err = run_cli(["eval", "geneval", "--out", str(tmp_path / "run"), "--skip-generation",
                            "--detector", f"mask2former:{folder}", "--device", "cpu"], capsys)
    assert code == 2 and err.startswith(f"error: mask2former detector: cannot load {folder}") and err.count("\n") == 1
