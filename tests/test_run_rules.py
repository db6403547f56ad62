"""Resume states what it does, values that mean nothing are refused, counts that size memory are
bounded before anything is built, and stored paths work from any folder and say where they came from.

Reproductions of issue 33: 20 (a checkpoint past --steps), 21 (`--stage-loss-weights 0,0,0`), 22
(`--resume latest` with nothing to resume), 23 and 31 (`--scale 1e300`, `--lora L:1e300`), 25 (empty
`--scene-mix`, `info --stages`), 33 and 34 (`--n 1e9`, `--steps 1e12`), 35 (a relative `--data`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from nami_core.errors import NamiError
from tests.helpers import (build_tiny_pipeline, finished_run, one_error, prepare_train_data, run_cli,
                          save_tiny_adapter, snapshot, train_cli_args)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return prepare_train_data(tmp_path_factory.mktemp("rules"))


@pytest.fixture(scope="module")
def run(root):
    """A finished 4-step run, checkpoints at 2 and 4."""
    return finished_run(root, root / "run", "--steps", "4", "--save-every", "2", "--keep", "0", "--ema-decay", "0")


def train(root, out, capsys, *extra):
    return run_cli(train_cli_args(root, out, *extra, batch_size=4), capsys)


# -- resume -------------------------------------------------------------------------------------------------


def test_a_checkpoint_past_steps_is_one_line(root, run, capsys):
    """20: a checkpoint at step 4 resumed with --steps 2 said "done at step 4"."""
    before = snapshot(run)
    code, _, err = train(root, run, capsys, "--steps", "2", "--resume", "latest", "--ema-decay", "0")
    checkpoint = run / "checkpoints" / "step-00000004"
    assert code == 2 and one_error(err) == (f"error: --resume {checkpoint} is at step 4, past --steps 2; give --steps "
                                            "above 4 to train on (`nami convert checkpoint` turns it into a model as "
                                            "it is)")
    assert snapshot(run) == before


def test_resume_latest_with_nothing_to_resume_says_so(root, tmp_path, capsys):
    """22: it started from 0 without a word."""
    out = tmp_path / "new"
    code, _, err = train(root, out, capsys, "--steps", "1", "--resume", "latest")
    assert code == 0, err
    assert f"note: --resume latest: {out} has no checkpoint yet; starting at step 0" in err.splitlines()


def test_resume_of_a_path_that_does_not_exist_is_one_line(root, tmp_path, capsys):
    missing = tmp_path / "run" / "checkpoints" / "step-00000009"
    code, _, err = train(root, tmp_path / "run", capsys, "--steps", "1", "--resume", str(missing))
    assert code == 2 and one_error(err) == (f"error: --resume {missing} does not exist; give a checkpoint folder "
                                            "RUN/checkpoints/step-N, or latest")


def test_an_existing_run_is_not_restarted_without_resume(root, run, capsys):
    before = snapshot(run)
    code, _, err = train(root, run, capsys, "--steps", "8", "--ema-decay", "0")
    assert code == 2 and one_error(err) == (f"error: {run} already holds a training run (checkpoints up to step 4); "
                                            "pass --resume latest to continue it, or choose another --out to start "
                                            "anew (nothing was changed)")
    assert snapshot(run) == before


# -- values that mean nothing ------------------------------------------------------------------------------


def test_stage_loss_weights_that_train_nothing_are_refused(root, tmp_path, capsys):
    """21: `--stage-loss-weights 0,0,0` trained nothing, exit 0."""
    code, _, err = train(root, tmp_path / "run", capsys, "--steps", "2", "--stage-loss-weights", "0,0,0")
    assert code == 2 and one_error(err) == ("error: --stage-loss-weights 0,0,0 are all 0: no stage would train; give "
                                            "at least one positive weight, or auto")
    assert not (tmp_path / "run").exists()


def test_empty_lists_are_refused_not_taken_as_the_default(tmp_path, capsys):
    """25: `--scene-mix ''` and `info --stages ''` took the default."""
    code, _, err = run_cli(["prepare-data", "shapes", "--n", "2", "--out", str(tmp_path / "d"), "--stages", "16",
                            "--scene-mix", ""], capsys)
    assert code == 2 and one_error(err) == "error: --scene-mix is empty; leave it out for the default (relation:1,objects:3)"
    code, _, err = run_cli(["info", "--preset", "tiny", "--stages", ""], capsys)
    assert code == 2 and one_error(err) == "error: --stages is empty"
    assert list(tmp_path.iterdir()) == []


# -- scales that overflow ------------------------------------------------------------------------------------


@pytest.fixture
def model_and_adapter(tmp_path):
    model = tmp_path / "model"
    build_tiny_pipeline().save_pretrained(model)
    return model, save_tiny_adapter(tmp_path / "adapter")


@pytest.mark.parametrize("scale", ["1e300", "-101", "inf"])
def test_lora_scales_are_bounded(model_and_adapter, tmp_path, capsys, scale):
    """23 and 31: `--scale 1e300` wrote inf/NaN tensors; `--lora L:1e300` drew them."""
    model, adapter = model_and_adapter
    code, _, err = run_cli(["convert", "lora", str(adapter), "--model", str(model), "--out", str(tmp_path / "m"),
                            "--merge", "--scale", scale], capsys)
    shown = {"1e300": "1e+300", "-101": "-101"}.get(scale)
    if shown is None:  # inf is refused as an option value, before the command runs
        assert code == 2 and "inf is not a finite number" in one_error(err)
    else:
        assert code == 2 and one_error(err) == (f"error: --scale: the scale must be at most 100 in size (usual scales are "
                                                f"0 to 2), got {shown}")
    code, _, err = run_cli(["sample", "a cat", "--model", str(model), "--lora", f"{adapter}:{scale}",
                            "--out", str(tmp_path / "s")], capsys)
    assert code == 2 and f"--lora {adapter}:{scale}: the scale must" in one_error(err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter", "model"]


def test_a_merge_whose_weights_overflow_writes_nothing(tmp_path):
    """Within the bound, an adapter can still overflow a float16 model: the result is checked."""
    from safetensors.torch import load_file, save_file

    from nami_core.modeldir import merge_lora

    model = tmp_path / "model"
    pipe = build_tiny_pipeline()
    pipe.transformer.to(torch.float16)
    pipe.save_pretrained(model)
    adapter = save_tiny_adapter(tmp_path / "adapter")
    weights = adapter / "pytorch_lora_weights.safetensors"
    save_file({k: v * 3000 for k, v in load_file(weights).items()}, str(weights))
    with pytest.raises(NamiError, match=r"merging .* at scale 100 gives non-finite weights \(\d+ of \d+ tensors, e\.g\. "
                                        r".*, in torch.float16\); nothing was written"):
        merge_lora(model, adapter, tmp_path / "merged", scale=100)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter", "model"]


def test_non_finite_pixels_are_never_written_as_a_picture():
    pipe = build_tiny_pipeline()
    latents = torch.zeros(2, 3, 8, 8)
    latents[1, 0, 0, 0] = float("nan")
    with pytest.raises(NamiError, match=r"1 of 2 sampled image\(s\) came out non-finite"):
        pipe.decode(latents)
    assert np.isfinite(pipe.decode(latents[:1], "np")).all()


# -- counts that size memory -----------------------------------------------------------------------------------


@pytest.mark.parametrize("extra, message", [
    (["--n", "1000000000"], "--n must be at most 100,000, got 1000000000"),  # 33: built 10^9 seeds
    (["--steps", "1000000000000"], "--steps must be at most 10000 in all (usual: 10 to 100), got 1000000000000"),  # 34
    (["--steps", "5000,5000,5000"], "--steps must be at most 10000 in all (usual: 10 to 100), got 15000"),
])
def test_sample_counts_are_bounded_before_the_model_loads(tiny_model_dir, tmp_path, capsys, monkeypatch, extra,
                                                          message):
    import nami_core.modeldir as modeldir

    def never(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(modeldir, "load_pipeline", never)
    code, _, err = run_cli(["sample", "a cat", "--model", str(tiny_model_dir), "--out", str(tmp_path / "s"), *extra],
                           capsys)
    assert code == 2 and one_error(err) == f"error: {message}"


# -- stored paths ----------------------------------------------------------------------------------------------


def test_a_run_records_absolute_paths_and_old_relative_ones_say_where_they_came_from(root, tmp_path, capsys,
                                                                                     monkeypatch):
    """35: a run trained with a relative --data could not be converted from another folder."""
    monkeypatch.chdir(root)
    code, _, err = run_cli(["train", "--data", "data", "--out", str(tmp_path / "run"), "--config", "model.json",
                            "--stages", "16,32,64", "--batch-size", "4", "--steps", "1"], capsys)
    assert code == 0, err
    record = json.loads((tmp_path / "run" / "train_config.json").read_text())["train"]
    assert record["data"] == str(root / "data") and record["config_file"] == str(root / "model.json")
    monkeypatch.chdir(tmp_path)
    step = tmp_path / "run" / "checkpoints" / "step-00000001"
    code, _, err = run_cli(["convert", "checkpoint", str(step), "--out", str(tmp_path / "m")], capsys)
    assert code == 0, err
    config = tmp_path / "run" / "train_config.json"
    data = json.loads(config.read_text())
    data["train"]["data"] = "data"  # as runs recorded it before paths were made absolute
    config.write_text(json.dumps(data))
    code, _, err = run_cli(["convert", "checkpoint", str(step), "--out", str(tmp_path / "m2")], capsys)
    assert code == 2 and one_error(err) == (f"error: data does not exist: it is the --data recorded in {config}, "
                                            "relative to the folder training ran in: run this command from there, or "
                                            "give the path absolute in that file")
    monkeypatch.chdir(root)  # from the folder it was trained in, the old run converts
    code, _, err = run_cli(["convert", "checkpoint", str(step), "--out", str(tmp_path / "m2")], capsys)
    assert code == 0, err
