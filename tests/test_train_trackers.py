"""`--report-to`: accelerate's trackers get the metrics and the validation grids besides
RUN/metrics.jsonl; a tracker that is not installed is one error line before any work."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.helpers import one_error, prepare_train_data, run_cli, train_cli_args
from tests.test_cli_refusals import ROOT, RUN


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return prepare_train_data(tmp_path_factory.mktemp("trackers"))


def events(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0})
    accumulator.Reload()
    return accumulator


def test_tensorboard_gets_the_metrics_and_the_grids_and_a_resume_replaces_what_came_after_the_checkpoint(
        data, tmp_path, capsys):
    pytest.importorskip("tensorboard")
    out = tmp_path / "tb"
    common = ["--report-to", "tensorboard", "--save-every", "2", "--keep", "0", "--validation-prompt", "a red circle",
              "--validation-every", "2"]
    assert run_cli(train_cli_args(data, out, "--steps", "3", *common, batch_size=4, log_every=1), capsys)[0] == 0
    shutil.rmtree(out / "checkpoints" / "step-00000003")  # as if killed after step 3 was logged
    shutil.rmtree(out / "final")
    code, _, err = run_cli(train_cli_args(data, out, "--steps", "4", *common, "--resume", "latest", batch_size=4,
                                          log_every=1), capsys)
    assert code == 0, err
    board = events(out / "logs" / "nami")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [e.step for e in board.Scalars("loss")] == [r["step"] for r in records] == [1, 2, 3, 4]
    assert [e.value for e in board.Scalars("loss")] == pytest.approx([r["loss"] for r in records], rel=1e-6)
    assert [e.value for e in board.Scalars("lr")] == pytest.approx([r["lr"] for r in records], rel=1e-6)
    for tag in ("loss_stage/1", "stage_mix/3", "images_per_s"):
        assert len(board.Scalars(tag)) == 4, tag
    grids = board.Images("validation")
    from PIL import Image

    assert [g.step for g in grids] == [2, 4]
    assert (grids[0].width, grids[0].height) == Image.open(out / "samples" / "step-2.png").size


def test_wandb_offline_needs_no_network(data, tmp_path, capsys, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "wandb"
    code, _, err = run_cli(train_cli_args(data, out, "--steps", "2", "--report-to", "wandb", "--validation-prompt",
                                          "a red circle", batch_size=4, log_every=1), capsys)
    assert code == 0, err
    assert list((out / "logs" / "wandb").glob("offline-run-*/run-*.wandb"))


def test_a_tracker_that_is_not_installed_is_one_line_before_any_work(data, tmp_path, capsys, monkeypatch):
    import nami_core.packages

    monkeypatch.setattr(nami_core.packages, "installed", lambda module: False)
    for value, message in (("tensorboard", "--report-to tensorboard needs tensorboard, which is not installed; "
                                           "pip install 'nami[tensorboard]'"),
                           ("wandb", "--report-to wandb needs wandb, which is not installed; pip install wandb"),
                           ("all", "--report-to all: none of tensorboard, wandb is installed")):
        out = tmp_path / value
        code, _, err = run_cli(train_cli_args(data, out, "--steps", "1", "--report-to", value), capsys)
        assert code == 2 and one_error(err).startswith("error: " + message), err
        assert not out.exists()


def test_a_missing_tracker_is_refused_without_importing_torch(tmp_path):
    """As the console runs it, where wandb is not installed: one line, before torch or accelerate load."""
    if "wandb" in sys.modules or __import__("importlib").util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed")
    out = subprocess.run([sys.executable, "-c", RUN, "train", "--data", "d", "--out", "o", "--stages", "16,32,64",
                          "--report-to", "wandb"], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                         env={"PYTHONPATH": str(ROOT), "PATH": os.environ.get("PATH", "/usr/bin:/bin")})
    assert out.returncode == 2 and out.stderr.strip() == ("error: --report-to wandb needs wandb, which is not "
                                                          "installed; pip install wandb")
    assert out.stdout.split() == ["False", "False"]
