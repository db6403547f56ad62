"""The bundled nami-shapes model: what ships, that `nami sample` uses it, and a quality floor."""

import json
from collections import Counter

import torch
from PIL import Image
from safetensors import safe_open

from nami_core.modeldir import bundled_model_dir
from tests.helpers import run_cli

BUNDLED = bundled_model_dir()
WEIGHTS = BUNDLED / "transformer" / "diffusion_pytorch_model.safetensors"
SUITE = BUNDLED.parent / "geneval" / "shapes_suite.jsonl"
# Measured: the first two prompts of each tag, 2 images each, default settings, give OVERALL_MEASURED
# on 2 AMD EPYC cores. The floor leaves room for float differences between CPUs; a random model scores 0.
OVERALL_MEASURED = 0.917
OVERALL_FLOOR = 0.6


def test_bundled_model_is_a_small_nested_pixel_model():
    assert WEIGHTS.is_file(), f"the bundled model is missing: {WEIGHTS}"
    size = sum(p.stat().st_size for p in BUNDLED.rglob("*") if p.is_file())
    assert size <= 25 * 2**20, size
    with safe_open(str(WEIGHTS), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}
    config = json.loads((BUNDLED / "transformer" / "config.json").read_text())
    depth = config["num_layers"] + config["num_single_layers"]
    ends = config["stage_ends"]
    assert len(ends) == 3 and ends[-1] == depth and ends[0] < ends[1] < ends[2]  # nested stage modules
    scheduler = json.loads((BUNDLED / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["resolutions"] == [16, 32, 64] and scheduler["default_mode"] == "nami"
    index = json.loads((BUNDLED / "model_index.json").read_text())
    assert index["codec"][1] == "PixelCodec"
    text = json.loads((BUNDLED / "text_encoder" / "config.json").read_text())
    assert text["spec"] == "minilm"


def test_sample_without_model_uses_the_bundled_model(tmp_path, capsys):
    target = tmp_path / "triangles.png"
    code, _, err = run_cli(["sample", "a photo of three purple triangles", "--out", str(target)], capsys)
    assert code == 0, err
    with Image.open(target) as img:
        assert img.size == (64, 64)
        meta = json.loads(img.text["nami"])
    assert meta["model"] == str(BUNDLED) and meta["mode"] == "nami"


def test_bundled_model_scores_above_its_floor(tmp_path, capsys):
    seen = Counter()
    subset = []
    for line in map(json.loads, SUITE.read_text().splitlines()):
        seen[line["tag"]] += 1
        if seen[line["tag"]] <= 2:
            subset.append(line)
    metadata = tmp_path / "subset.jsonl"
    metadata.write_text("".join(json.dumps(line) + "\n" for line in subset))
    out = tmp_path / "eval"
    code, _, err = run_cli(["eval", "geneval", "--metadata", str(metadata), "--out", str(out),
                                 "--images-per-prompt", "2"], capsys)
    assert code == 0, err
    overall = json.loads((out / "summary.json").read_text())["overall"]
    assert overall >= OVERALL_FLOOR, (overall, OVERALL_MEASURED)
