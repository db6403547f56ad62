"""`nami train --mode flow-only | flux-base`: short overfit runs, what metrics.jsonl records per stage
window, and the RUN/final model sampling in the trained mode by default.

Everything runs through the CLI (`nami prepare-data`, `nami train`, `nami sample`) on 12 shapes scenes.
"""

import json

import numpy as np
import pytest
from PIL import Image

from tests.helpers import run_cli

MODEL = {"width": 32, "heads": 2, "double_blocks": 1, "single_blocks": 2, "stage_ends": [1, 2, 3],
         "rope_axes": [4, 6, 6]}
STAGES = (16, 32, 64)
PATCH = 4  # the pixel codec's default patch: a 64 px image is 16 x 16 = 256 tokens
TEXT_TOKENS = 12  # --max-text-tokens of the prepared data
STEPS, LOG_EVERY, BATCH = 100, 20, 8


@pytest.fixture(scope="module")
def shapes_data(tmp_path_factory):
    """12 shapes scenes prepared at 16/32/64 px (all stored at 64 px) and a tiny 3-stage model config."""
    root = tmp_path_factory.mktemp("train-modes")
    code = run_cli(["prepare-data", "shapes", "--n", "12", "--seed", "0", "--out", str(root / "data"),
                    "--stages", ",".join(map(str, STAGES)), "--max-text-tokens", str(TEXT_TOKENS)])[0]
    assert code == 0
    (root / "model.json").write_text(json.dumps(MODEL))
    return root


@pytest.fixture(scope="module", params=["flow-only", "flux-base"])
def trained(request, shapes_data):
    """One short overfit run per mode: (mode, run folder, metrics.jsonl records)."""
    mode = request.param
    out = shapes_data / f"run-{mode}"
    weights = "1" if mode == "flux-base" else "1,1,1"  # one fixed loss weight per window the mode trains
    code = run_cli(["train", "--data", str(shapes_data / "data"), "--out", str(out), "--mode", mode,
                    "--config", str(shapes_data / "model.json"), "--stages", ",".join(map(str, STAGES)),
                    "--steps", str(STEPS), "--batch-size", str(BATCH), "--lr", "3e-3", "--log-every", str(LOG_EVERY),
                    "--save-every", "1000", "--stage-mix", "0:1:1:1", "--stage-loss-weights", weights,
                    "--cfg-dropout", "0", "--ema-decay", "0", "--timestep-sampling", "uniform"])[0]
    assert code == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(LOG_EVERY, STEPS + 1, LOG_EVERY))
    return mode, out, records


def test_overfit_loss_goes_down(trained):
    """The mean loss of the last 20 steps is well under that of the first 20, in every trained window.

    Measured (100 steps, 12 images, lr 3e-3, uniform tau; first 20 -> last 20 steps):
    flow-only per window [0.184, 0.283, 0.316] -> [0.059, 0.123, 0.153] (overall 0.256 -> 0.112);
    flux-base, its one window 0.981 -> 0.494."""
    mode, _, records = trained
    first, last = records[0], records[-1]
    assert all(np.isfinite(r["loss"]) and r["nan_skipped"] == 0 for r in records)
    assert last["loss"] < 0.65 * first["loss"], (mode, first["loss"], last["loss"])
    for k, (a, b) in enumerate(zip(first["loss_stage"], last["loss_stage"])):
        assert b < 0.65 * a, (mode, k, first["loss_stage"], last["loss_stage"])


def test_windows_trained_per_mode(trained):
    """flux-base trains one window, at the full resolution; flow-only trains all three stage windows.

    Every metrics line covers 20 steps of 8 samples. Its token rate over its image rate is the mean
    tokens per sample, (resolution / 4)^2 image tokens + 12 text tokens: 268 when every sample is a
    64 px one, 28 / 76 / 268 for a 16 / 32 / 64 px sample of the staged modes."""
    mode, _, records = trained
    full = (STAGES[-1] // PATCH) ** 2 + TEXT_TOKENS
    for r in records:
        tokens_per_sample = r["tokens_per_s"] / r["images_per_s"]
        if mode == "flux-base":
            assert len(r["loss_stage"]) == 1 and r["samples_stage"] == [LOG_EVERY * BATCH]
            assert r["stage_weights"] == [1.0]
            assert tokens_per_sample == pytest.approx(full)
        else:
            assert len(r["loss_stage"]) == 3 and sum(r["samples_stage"]) == LOG_EVERY * BATCH
            assert all(n > 0 for n in r["samples_stage"]) and None not in r["loss_stage"]
            expected = sum(n * ((s // PATCH) ** 2 + TEXT_TOKENS) for n, s in zip(r["samples_stage"], STAGES))
            assert tokens_per_sample == pytest.approx(expected / (LOG_EVERY * BATCH))
            assert tokens_per_sample < full


def _sample(model, png, capsys, *extra):
    code, out, err = run_cli(["sample", "a red circle", "--model", str(model), "--out", str(png), "--seed", "1",
                              "--json", *extra], capsys)
    assert code == 0, err
    with Image.open(png) as img:
        pixels = np.asarray(img.convert("RGB"), dtype=np.int16)
        meta = json.loads(img.text["nami"])
    return json.loads(out), meta, pixels


def test_final_model_samples_in_its_training_mode_by_default(trained, tmp_path, capsys):
    mode, out, _ = trained
    final = out / "final"
    report, meta, default = _sample(final, tmp_path / "default.png", capsys)
    windows = 1 if mode == "flux-base" else 3
    assert meta["mode"] == mode and report["metadata"][0]["mode"] == mode
    assert len(report["stage_seconds"]) == windows and len(meta["steps"]) == windows
    assert meta["resolution"] == STAGES[-1]
    # the default is really that mode (not just its name in the metadata): the same picture as asking for
    # it (same seed, steps and cfg), and a different one from the nami mode
    steps = ",".join(map(str, meta["steps"]))
    _, _, explicit = _sample(final, tmp_path / "explicit.png", capsys, "--mode", mode, "--steps", steps)
    assert np.array_equal(default, explicit)
    nami_steps = steps if windows == 3 else str(meta["steps"][0])
    _, nami_meta, nami = _sample(final, tmp_path / "nami.png", capsys, "--mode", "nami", "--steps", nami_steps)
    assert nami_meta["mode"] == "nami" and np.abs(nami - default).max() > 8
