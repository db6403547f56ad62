"""CLIPScore and FID: the formulas on hand-computed numbers, the 299 px resize, the commands, missing weights."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from nami_core.errors import NamiError
from nami_core.eval import fid
from nami_core.eval.clipscore import clip_score, prompted_images
from nami_core.png import save_png
from tests.test_eval_tiny_models import build_tiny_clip
from tests.helpers import run_cli



# -- FID ------------------------------------------------------------------------------------------------


def test_frechet_distance_of_known_gaussians():
    # |(1, 1)|^2 + tr(I + 4I - 2 (4I)^(1/2)) = 2 + (2 + 8 - 8) = 4
    assert fid.frechet_distance(np.zeros(2), np.eye(2), np.ones(2), 4 * np.eye(2)) == pytest.approx(4.0)
    # equal means: tr(diag(1, 4) + diag(9, 1) - 2 diag(3, 2)) = 15 - 10 = 5
    assert fid.frechet_distance(np.zeros(2), np.diag([1.0, 4.0]), np.zeros(2), np.diag([9.0, 1.0])) == pytest.approx(5.0)
    # a rotated covariance: S2 = R S1 R^T with S1 = diag(4, 1), R a 90 degree turn -> S2 = diag(1, 4)
    assert fid.frechet_distance(np.zeros(2), np.diag([4.0, 1.0]), np.zeros(2), np.diag([1.0, 4.0])) == pytest.approx(
        5 + 5 - 2 * 2 * 2)
    assert fid.frechet_distance(np.array([3.0]), np.array([[2.0]]), np.array([3.0]), np.array([[2.0]])) == pytest.approx(0)


def test_feature_statistics_use_the_unbiased_covariance():
    mean, cov = fid.feature_statistics(np.array([[0.0, 0.0], [2.0, 0.0], [4.0, 3.0]]))
    assert mean.tolist() == [2.0, 1.0]
    # deviations (-2, -1), (0, -1), (2, 2): xx 8 / 2, xy (2 + 0 + 4) / 2, yy (1 + 1 + 4) / 2
    assert cov.tolist() == [[4.0, 3.0], [3.0, 3.0]]
    with pytest.raises(NamiError, match="at least 2 images"):
        fid.feature_statistics(np.zeros((1, 2)))


def test_inception_input_is_bilinear_without_antialiasing():
    columns = (np.arange(897) % 2 * 255).astype(np.uint8)
    image = Image.fromarray(np.repeat(np.repeat(columns[None, :, None], 299, axis=0), 3, axis=2))
    pixels = fid.inception_input(image)
    assert tuple(pixels.shape) == (3, 299, 299)
    # output column i samples source column 3 i + 1 exactly (half-pixel centres); antialiasing would blur it
    expected = torch.tensor([255.0 if (3 * i + 1) % 2 else 0.0 for i in range(299)])
    assert torch.equal(pixels[0, 0], expected)
    same = Image.new("RGB", (299, 299), (1, 2, 3))
    assert torch.equal(fid.inception_input(same)[:, 5, 7], torch.tensor([1.0, 2.0, 3.0]))


class MeanColour(torch.nn.Module):
    """Stands in for the TorchScript Inception: features = the mean red and green pixel values."""

    def forward(self, img: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        return img.mean(dim=(2, 3))[:, :2]


@pytest.fixture
def fake_inception(tmp_path):
    path = tmp_path / "inception-2015-12-05.pt"
    torch.jit.save(torch.jit.script(MeanColour()), str(path))
    return path


def colour_folder(folder, colours):
    folder.mkdir()
    for i, colour in enumerate(colours):
        Image.new("RGB", (40, 30), colour).save(folder / f"{i}.png")
    return folder


def test_cli_fid_end_to_end(tmp_path, capsys, fake_inception):
    real = colour_folder(tmp_path / "real", [(0, 0, 0), (2, 0, 0)])  # features (0, 0), (2, 0)
    fake = colour_folder(tmp_path / "fake", [(0, 10, 0), (0, 12, 0)])  # features (0, 10), (0, 12)
    out = tmp_path / "fid.json"
    code, stdout, err = run_cli(["eval", "fid", str(real), str(fake), "--inception", str(fake_inception),
                                 "--json", str(out), "--device", "cpu"], capsys)
    assert code == 0, err
    # |(1, 0) - (0, 11)|^2 = 122; covariances diag(2, 0) and diag(0, 2), product 0: 122 + 2 + 2 = 126
    assert stdout.strip() == "fid 126.0000"
    result = json.loads(out.read_text())
    assert result["fid"] == pytest.approx(126.0, abs=1e-3) and result["real_images"] == 2


def test_cli_fid_missing_or_corrupt_weights(tmp_path, capsys):
    real = colour_folder(tmp_path / "real", [(0, 0, 0), (2, 0, 0)])
    fake = colour_folder(tmp_path / "fake", [(0, 0, 0), (2, 0, 0)])
    code, stdout, err = run_cli(["eval", "fid", str(real), str(fake), "--inception", str(tmp_path / "none.pt")], capsys)
    assert code == 2 and stdout == "" and err.count("\n") == 1
    assert "--inception: " in err and "does not exist; download inception-2015-12-05.pt" in err
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"definitely not torchscript")
    code, _, err = run_cli(["eval", "fid", str(real), str(fake), "--inception", str(corrupt)], capsys)
    assert code == 2 and err.startswith(f"error: --inception: cannot load {corrupt} as TorchScript") and err.count("\n") == 1


class NaNFeatures(torch.nn.Module):
    def forward(self, img: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        return img.mean(dim=(2, 3)) * float("nan")


class OneNumber(torch.nn.Module):
    def forward(self, img: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        return img.sum()


class Fails(torch.nn.Module):
    def forward(self, img: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        return img.view(-1, 7, 5)


@pytest.mark.parametrize("network, message", [
    (NaNFeatures, "the network returns non-finite features"),  # scipy's sqrtm raised LinAlgError
    (OneNumber, "the network returns () for 2 images, not one feature row per image"),
    (Fails, "the network fails on a batch ("),
], ids=["nan", "scalar", "raises"])
def test_cli_fid_with_an_inception_file_that_is_no_feature_network(tmp_path, capsys, network, message):
    path = tmp_path / "other.pt"
    torch.jit.save(torch.jit.script(network()), str(path))
    real = colour_folder(tmp_path / "real", [(0, 0, 0), (2, 0, 0)])
    fake = colour_folder(tmp_path / "fake", [(0, 0, 0), (2, 0, 0)])
    code, stdout, err = run_cli(["eval", "fid", str(real), str(fake), "--inception", str(path), "--device", "cpu"],
                                capsys)
    assert code == 2 and stdout == "" and err.count("\n") == 1 and f"error: --inception: {message}" in err, err


def test_cli_fid_needs_two_images(tmp_path, capsys, fake_inception):
    one = colour_folder(tmp_path / "one", [(0, 0, 0)])
    other = colour_folder(tmp_path / "other", [(0, 0, 0), (2, 0, 0)])
    code, _, err = run_cli(["eval", "fid", str(other), str(one), "--inception", str(fake_inception),
                            "--json", str(tmp_path / "fid.json")], capsys)
    assert code == 2 and "holds 1 image(s); FID needs at least 2" in err
    assert not (tmp_path / "fid.json").exists()


# -- CLIPScore ------------------------------------------------------------------------------------------


def test_clip_score_is_100_times_the_clipped_cosine():
    assert clip_score(torch.tensor([0.3, -0.2, 1.0, 0.0])).tolist() == pytest.approx([30.0, 0.0, 100.0, 0.0])


def test_prompts_come_from_the_png_chunk_or_a_txt_file(tmp_path):
    save_png(Image.new("RGB", (8, 8)), tmp_path / "a.png", {"prompt": "a red circle", "seed": 1})
    Image.new("RGB", (8, 8)).save(tmp_path / "b.jpg")
    (tmp_path / "b.txt").write_text("a blue square\n")
    assert [(p.name, t) for p, t in prompted_images(tmp_path)] == [("a.png", "a red circle"), ("b.jpg", "a blue square")]
    Image.new("RGB", (8, 8)).save(tmp_path / "c.png")
    with pytest.raises(NamiError, match="c.png has no prompt: neither a nami PNG chunk nor c.txt beside it"):
        prompted_images(tmp_path)


def test_cli_clipscore_end_to_end(tmp_path, capsys):
    from nami_core.eval.clip_model import ClipEncoder

    clip = build_tiny_clip(tmp_path / "clip")
    images = tmp_path / "images"
    images.mkdir()
    save_png(Image.new("RGB", (32, 32), (200, 0, 0)), images / "0.png", {"prompt": "a red circle"})
    Image.new("RGB", (40, 24), (0, 0, 200)).save(images / "1.jpg")
    (images / "1.txt").write_text("a blue square " * 40)  # 120 words: over 77 tokens
    code, stdout, err = run_cli(["eval", "clipscore", str(images), "--clip", str(clip), "--json",
                                 str(tmp_path / "cs.json"), "--device", "cpu"], capsys)
    assert code == 0, err
    assert "warning: 1 prompt(s) exceed CLIP's 77 tokens and were truncated" in err
    encoder = ClipEncoder(clip)
    with pytest.warns(UserWarning):
        texts = encoder.text_features(["a red circle", "a blue square " * 40])
    pics = encoder.image_features([Image.open(images / "0.png").convert("RGB"), Image.open(images / "1.jpg").convert("RGB")])
    expected = (100 * (pics * texts).sum(-1).clamp(min=0)).tolist()
    result = json.loads((tmp_path / "cs.json").read_text())
    assert result["per_image"] == pytest.approx({"0.png": expected[0], "1.jpg": expected[1]}, abs=1e-4)
    assert stdout.strip().splitlines()[-1] == f"clipscore {sum(expected) / 2:.4f}"


def test_cli_clipscore_missing_clip(tmp_path, capsys):
    save_png(Image.new("RGB", (8, 8)), tmp_path / "a.png", {"prompt": "a cat"})
    code, stdout, err = run_cli(["eval", "clipscore", str(tmp_path), "--clip", str(tmp_path / "none")], capsys)
    assert code == 2 and stdout == "" and err.count("\n") == 1
    assert "--clip (a CLIP model): " in err and "does not exist" in err
