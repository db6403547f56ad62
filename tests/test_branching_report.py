"""examples/nami-shapes/branching.py: the sampler branched at each jump, and its settled count."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from nami_core.data.shapes import render, scene_for_metadata
from nami_core.eval.detectors import get_detector
from tests.helpers import build_tiny_pipeline

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "nami-shapes" / "branching.py"
spec = importlib.util.spec_from_file_location("branching", SCRIPT)
branching = importlib.util.module_from_spec(spec)
sys.modules["branching"] = branching  # dataclasses look their module up there
spec.loader.exec_module(branching)


@pytest.fixture(scope="module")
def pipe():
    return build_tiny_pipeline()


def test_branch_zero_is_the_plain_sample_and_other_branches_differ(pipe):
    plain = pipe("a photo of a red circle", seed=5, output_type="latent").images
    finished = branching.branch_latents(pipe, "a photo of a red circle", 5, branches=3)
    assert len(finished) == 2  # one branch point per jump of the 3-window plan
    for latents in finished:
        assert latents.shape == (3, 3, 64, 64)
        torch.testing.assert_close(latents[:1], plain, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(latents[1], latents[0], atol=1e-3)
        assert not torch.allclose(latents[2], latents[1], atol=1e-3)


def test_branching_later_shares_more_of_the_trajectory(pipe):
    """After the last window's jump only that window's noise differs, so branches stay closer."""
    early, late = branching.branch_latents(pipe, "a photo of two squares", 1, branches=4, cfg=1.0)
    spread = [float((z[1:] - z[:1]).abs().mean()) for z in (early, late)]
    assert spread[1] < spread[0]


def test_branch_seeds_are_distinct():
    seeds = {branching.branch_seed(s, j, b) for s in range(50) for j in range(3) for b in range(1, 8)}
    assert len(seeds) == 50 * 3 * 7


def test_outcomes_read_a_rendered_scene(pipe):
    meta = {"tag": "two_object", "prompt": "a photo of a circle and a square",
            "include": [{"class": "circle", "count": 1}, {"class": "square", "count": 1}]}
    shapes = scene_for_metadata(meta, np.random.default_rng(0))
    pixels = torch.from_numpy(np.asarray(render(shapes), dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)
    latents = pipe.codec.encode(pixels[None].repeat(2, 1, 1, 1))
    got = branching.outcomes(pipe, latents, meta, get_detector("shapes"))
    assert got == [branching.Outcome(("circle", "square"), True)] * 2
    wrong = dict(meta, include=[{"class": "triangle", "count": 1}])
    assert branching.outcomes(pipe, latents[:1], wrong, get_detector("shapes"))[0].correct is False


def test_settled_groups_and_summary():
    O = branching.Outcome
    same = [O(("circle", "circle"), False), O(("circle", "circle"), False)]
    split = [O(("circle", "square"), True), O(("circle", "circle"), False)]
    # the same classes settle a group even where the rules would judge them differently
    assert branching.is_settled(same) and not branching.is_settled(split)
    rows = branching.summarize([[same, split], [same, same]])
    assert rows == [{"jump": 0, "groups": 2, "settled": 1, "images": 4, "correct": 1},
                    {"jump": 1, "groups": 2, "settled": 2, "images": 4, "correct": 0}]


@pytest.mark.parametrize("args, message", [
    (["--tag", "no_such_tag"], "no prompts with tag 'no_such_tag'"),
    (["--metadata", "missing.jsonl"], "missing.jsonl"),
    (["--model", "no/such/dir"], "no/such/dir is not a model directory"),
    (["--branches", "1"], "--branches must be at least 2"),
])
def test_cli_rejects_bad_input_in_one_line(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        branching.main(args + ["--prompts", "1"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
