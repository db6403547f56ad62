"""GenEval's CLIP colour classifier: the masked crop, the templates, the zero-shot weights, the argmax."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from nami_core.eval.clip_colors import (BACKGROUND, TEMPLATES, ClipColorClassifier, class_prompts, object_crop,
                                        zero_shot_weights)
from nami_core.eval.geneval import GENEVAL_COLORS
from tests.test_eval_tiny_models import build_tiny_clip


def test_templates_and_colours_are_genevals():
    assert GENEVAL_COLORS == ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")
    prompts = class_prompts("fire hydrant")
    assert len(prompts) == 10
    assert prompts[4] == ["a photo of a blue fire hydrant", "a photo of a blue-colored fire hydrant",
                          "a photo of a blue object"]
    assert len(TEMPLATES) == 3 and BACKGROUND == (153, 153, 153)


def test_object_is_pasted_on_grey_through_its_mask_then_cropped_to_its_box():
    pixels = np.zeros((6, 8, 3), dtype=np.uint8)
    pixels[..., 0] = 200
    mask = np.zeros((6, 8), dtype=bool)
    mask[2:4, 3:5] = True
    crop = object_crop(Image.fromarray(pixels), (2, 1, 6, 5), mask)
    assert crop.size == (4, 4)  # box (2, 1) - (6, 5)
    out = np.asarray(crop)
    assert (out[1:3, 1:3] == (200, 0, 0)).all()  # the masked object
    assert (out[0] == BACKGROUND).all() and (out[:, 3] == BACKGROUND).all()  # the rest became #999999
    # no mask: crop only; PIL rounds the box half to even, (0.4, 0.6, 3.4, 2.5) -> (0, 1, 3, 2)
    whole = object_crop(Image.fromarray(pixels), (0.4, 0.6, 3.4, 2.5), None)
    assert whole.size == (3, 1) and (np.asarray(whole) == (200, 0, 0)).all()
    with pytest.raises(ValueError, match="does not match the image size"):
        object_crop(Image.fromarray(pixels), (0, 0, 2, 2), mask[:5])


def test_zero_shot_weights_average_unit_template_embeddings():
    # colour 0: templates (3, 0) and (0, 1) -> unit (1, 0), (0, 1) -> mean (.5, .5) -> (.7071, .7071)
    # colour 1: templates (0, 2) twice -> (0, 1)
    text = torch.tensor([[[3.0, 0.0], [0.0, 1.0]], [[0.0, 2.0], [0.0, 2.0]]])
    weights = zero_shot_weights(text)
    assert weights.shape == (2, 2)
    assert torch.allclose(weights, torch.tensor([[0.70710678, 0.0], [0.70710678, 1.0]]), atol=1e-6)


def test_classifier_takes_the_argmax_over_colours(tmp_path, monkeypatch):
    classifier = ClipColorClassifier(build_tiny_clip(tmp_path / "clip"), colors=("red", "green", "blue"))
    asked = []

    def text_features(texts):
        asked.extend(texts)
        # per colour, its three templates embed on that colour's axis
        return torch.eye(3).repeat_interleave(3, dim=0)

    monkeypatch.setattr(classifier.encoder, "text_features", text_features)
    monkeypatch.setattr(classifier.encoder, "image_features",
                        lambda crops: torch.tensor([[0.1, 0.2, 0.9], [0.8, 0.1, 0.1]])[:len(crops)])
    image = Image.new("RGB", (10, 10))
    mask = np.ones((10, 10), dtype=bool)
    assert classifier.classify(image, [((0, 0, 5, 5), mask), ((5, 5, 10, 10), None)], "car") == ["blue", "red"]
    assert asked[:3] == ["a photo of a red car", "a photo of a red-colored car", "a photo of a red object"]
    assert len(asked) == 9
    classifier.classify(image, [((0, 0, 5, 5), mask)], "car")
    assert len(asked) == 9  # the class's text classifier is cached
    assert classifier.classify(image, [], "car") == []


def test_classifier_runs_on_a_tiny_clip(tmp_path):
    classifier = ClipColorClassifier(build_tiny_clip(tmp_path / "clip"))
    image = Image.new("RGB", (20, 16), (200, 30, 30))
    mask = np.zeros((16, 20), dtype=bool)
    mask[4:12, 5:15] = True
    names = classifier.classify(image, [((5, 4, 15, 12), mask), ((0, 0, 20, 16), None)], "car")
    assert len(names) == 2 and all(n in GENEVAL_COLORS for n in names)
    assert classifier.weights("car").shape == (8, 10)
