"""`nami train`: end to end, overfitting, exact resume after SIGKILL, DDP on CPU, phases, errors."""

import json

import pytest
import torch
from safetensors.torch import load_file

from nami_core.config import FlowConfig
from nami_core.data.store import LatentStore
from nami_core.flow.plan import FlowPlan
from nami_core.train.batches import BatchDrawer
from nami_core.train.phases import parse_phases, value_at
from tests.helpers import kill_after_checkpoint, prepare_train_data, run_cli, torchrun_nami, train_cli_args


@pytest.fixture(scope="module")
def shapes_data(tmp_path_factory):
    return prepare_train_data(tmp_path_factory.mktemp("train"))


def train_args(root, out, *extra):
    return train_cli_args(root, out, *extra, batch_size=8, log_every=5)


def cli(args):
    return run_cli(args)[0]


def test_end_to_end_prepare_train_sample(shapes_data, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli(train_args(shapes_data, out, "--steps", "20", "--save-every", "10", "--keep", "1")) == 0
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-00000020"]  # rotated, no temp dirs left
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [5, 10, 15, 20]
    keys = {"loss", "loss_stage", "loss_tau_bins", "images_per_s", "tokens_per_s", "stage_weights", "nan_skipped"}
    assert keys <= set(records[-1]) and len(records[-1]["loss_tau_bins"]) == 10
    final = out / "final"
    assert (final / "transformer" / "diffusion_pytorch_model.ema.safetensors").is_file()
    assert json.loads((final / "scheduler" / "scheduler_config.json").read_text())["resolutions"] == [16, 32, 64]
    image = tmp_path / "a.png"
    assert cli(["sample", "a red circle", "--model", str(final), "--out", str(image), "--steps", "2,2,2"]) == 0
    assert image.is_file()


def test_overfit_halves_every_stage_loss(shapes_data, tmp_path):
    """12 images, uniform ratios, fixed weights: the per-stage loss of the last 20 steps is under half the first 20's."""
    out = tmp_path / "overfit"
    code = cli(train_args(shapes_data, out, "--steps", "120", "--save-every", "1000", "--log-every", "20",
                          "--stage-mix", "0:1:1:1", "--stage-loss-weights", "1,1,1", "--cfg-dropout", "0",
                          "--lr", "3e-3", "--ema-decay", "0", "--timestep-sampling", "uniform"))
    assert code == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    first, last = records[0]["loss_stage"], records[-1]["loss_stage"]
    for k in range(3):
        assert last[k] < 0.5 * first[k], (k, first, last)


def test_resume_after_sigkill_is_exact(shapes_data, tmp_path):
    common = ["--steps", "20", "--save-every", "10", "--batch-size", "32", "--keep", "0", "--ema-decay", "0.9"]
    straight = tmp_path / "straight"
    assert cli(train_args(shapes_data, straight, *common)) == 0

    killed = tmp_path / "killed"
    kill_after_checkpoint(train_args(shapes_data, killed, *common), killed, 10)
    assert cli(train_args(shapes_data, killed, *common, "--resume", "latest")) == 0
    raw = load_file(straight / "final" / "transformer" / "diffusion_pytorch_model.safetensors")
    ema = load_file(straight / "final" / "transformer" / "diffusion_pytorch_model.ema.safetensors")
    assert any(not torch.equal(raw[k], ema[k]) for k in raw), "the EMA must lag the raw weights"
    for name in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.ema.safetensors"):
        a = load_file(straight / "final" / "transformer" / name)
        b = load_file(killed / "final" / "transformer" / name)
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), (name, key)
    steps = [json.loads(line)["step"] for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert steps == [5, 10, 15, 20]


def test_torchrun_two_ranks_on_cpu(shapes_data, tmp_path):
    """Two DDP ranks, two micro-batches a step (the first without a gradient reduction), validation
    drawn by rank 0 while rank 1 waits."""
    out = tmp_path / "ddp"
    result = torchrun_nami(train_args(shapes_data, out, "--steps", "4", "--save-every", "4",
                                      "--gradient-accumulation-steps", "2", "--validation-prompt", "a red circle",
                                      "--validation-every", "2"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert (out / "checkpoints" / "step-00000004" / "trainer_state.json").is_file()
    assert json.loads((out / "train_config.json").read_text())["world_size"] == 2
    assert (out / "final" / "model_index.json").is_file()
    assert sorted(p.name for p in (out / "samples").iterdir()) == ["step-2.png", "step-4.png"]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [4]
    assert sum(records[0]["samples_stage"]) == 4 * 8 * 2 * 2  # steps x batch x micro-batches x ranks


def test_ranks_draw_the_same_stages_but_different_images(shapes_data):
    store = LatentStore(shapes_data / "data")
    plan = FlowPlan("nami", FlowConfig((16, 32, 64)), (1, 2, 3), 4)
    drawers = [BatchDrawer(store, plan, 1, 16, seed=3, rank=r) for r in (0, 1)]
    a, b = (d.draw(7, (1, 1, 1)) for d in drawers)
    assert [g.window for g in a] == [g.window for g in b]
    assert [len(g.r) for g in a] == [len(g.r) for g in b]
    assert any(not torch.equal(x.latents, y.latents) for x, y in zip(a, b))
    again = drawers[0].draw(7, (1, 1, 1))
    assert all(torch.equal(x.latents, y.latents) and torch.equal(x.noise, y.noise) for x, y in zip(a, again))


def test_stage_mix_schedule_switches_phases(shapes_data):
    phases = parse_phases("0:4:2:1,100:0:1:0,200:1:0:3", "--stage-mix", 3)
    assert value_at(phases, 99) == (4, 2, 1) and value_at(phases, 100) == (0, 1, 0) and value_at(phases, 250) == (1, 0, 3)
    store = LatentStore(shapes_data / "data")
    drawer = BatchDrawer(store, FlowPlan("nami", FlowConfig((16, 32, 64)), (1, 2, 3), 4), 1, 70, seed=0)
    counts = {}
    for step in (0, 150, 250):
        stages = torch.cat([drawer.draw_stages(s, value_at(phases, s)) for s in range(step, step + 20)])
        counts[step] = torch.bincount(stages, minlength=3).tolist()
    # 1400 draws per phase: the binomial SD of a share is under 0.014
    assert counts[0][0] / 1400 == pytest.approx(4 / 7, abs=0.05) and counts[0][2] / 1400 == pytest.approx(1 / 7, abs=0.05)
    assert counts[150] == [0, 1400, 0]
    assert counts[250][1] == 0 and counts[250][2] / 1400 == pytest.approx(0.75, abs=0.05)


def test_non_finite_losses_stop_the_run_with_a_checkpoint(shapes_data, tmp_path, capsys):
    out = tmp_path / "nan"
    code = cli(train_args(shapes_data, out, "--steps", "40", "--lr", "1e30", "--max-nan-steps", "3",
                          "--save-every", "1000", "--grad-clip", "1e30"))
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "non-finite losses in a row" in err[0] and "checkpoint" in err[0]
    assert any((out / "checkpoints").iterdir())


@pytest.mark.parametrize(
    "change,message",
    [
        ({"--data": "missing"}, "does not exist"),
        ({"--stages": "32,64,128"}, "differ from the data's stages 16,32,64"),
        ({"--config": None, "--preset": "giant"}, "--preset must be one of nami-2b, nami-0.6b, flux-base-2b, tiny, cpu-bench, got 'giant'"),
        ({"--stage-mix": "0:1:1,100:1:1:1"}, "phase '0:1:1' has 2 values, expected 3"),
        ({"--mode": "turbo"}, "mode must be one of"),
        ({"--fsdp": ""}, "--fsdp needs CUDA GPUs"),
        ({"--text-positions": "shuffled"}, "--text-positions must be one of none, ordered, got 'shuffled'"),
        ({"--sample-cfg": "6,2"}, "--sample-cfg lists 2 values for 3 stages; give one, or one per stage"),
        ({"--sample-cfg": "0"}, "--sample-cfg must be positive"),
    ],
)
def test_bad_train_input_is_one_line(shapes_data, tmp_path, capsys, change, message):
    if "--fsdp" in change and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    args = train_args(shapes_data, tmp_path / "bad", "--steps", "2")
    for flag, value in change.items():
        i = args.index(flag) if flag in args else None
        if value == "":
            args.append(flag)
        elif value is None:
            del args[i : i + 2]
        elif i is None:
            args += [flag, value]
        else:
            args[i + 1] = str(tmp_path / value) if value == "missing" else value
    assert cli(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and message in err[0], err


def test_init_can_switch_to_ordered_text_positions(shapes_data, tmp_path):
    """The text ids own no weights, so a run from a --model may order them; the model it writes keeps that."""
    from nami_core.denoiser import Denoiser
    from nami_core.model.transformer import NamiTransformer

    first = tmp_path / "first"
    assert cli(train_args(shapes_data, first, "--steps", "2", "--ema-decay", "0")) == 0
    second = tmp_path / "second"
    args = train_args(shapes_data, second, "--steps", "2", "--model", str(first / "final"), "--text-positions", "ordered")
    i = args.index("--config")
    del args[i : i + 2]
    assert cli(args) == 0
    before = json.loads((first / "final" / "transformer" / "config.json").read_text())
    after = json.loads((second / "final" / "transformer" / "config.json").read_text())
    assert before["text_positions"] == "none" and after["text_positions"] == "ordered"
    shape = {k: v for k, v in before.items() if not k.startswith("_") and k != "text_positions"}
    assert shape.items() <= after.items()
    assert Denoiser(NamiTransformer.from_pretrained(second / "final" / "transformer"), 4).ordered_text


def test_convert_checkpoint_gives_the_model_training_ends_with(shapes_data, tmp_path, capsys):
    """A checkpoint exported mid-run holds the same raw and EMA weights as RUN/final written at that step."""
    out = tmp_path / "run"
    assert cli(train_args(shapes_data, out, "--steps", "6", "--save-every", "6", "--ema-decay", "0.9",
                          "--sample-cfg", "6,2,2")) == 0
    exported = tmp_path / "exported"
    assert cli(["convert", "checkpoint", str(out / "checkpoints" / "step-00000006"), "--out", str(exported)]) == 0
    for name in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.ema.safetensors"):
        a = load_file(out / "final" / "transformer" / name)
        b = load_file(exported / "transformer" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    raw = load_file(exported / "transformer" / "diffusion_pytorch_model.safetensors")
    ema = load_file(exported / "transformer" / "diffusion_pytorch_model.ema.safetensors")
    assert any(not torch.equal(raw[k], ema[k]) for k in raw)  # the variants really differ
    for part in ("scheduler/scheduler_config.json", "codec/config.json", "model_index.json"):
        assert (exported / part).read_text() == (out / "final" / part).read_text(), part
    assert json.loads((exported / "scheduler" / "scheduler_config.json").read_text())["default_cfg"] == [6.0, 2.0, 2.0]
    image = tmp_path / "mid.png"
    assert cli(["sample", "a red circle", "--model", str(exported), "--out", str(image), "--steps", "1,1,1"]) == 0
    assert image.is_file()


def test_convert_checkpoint_rejects_an_incomplete_folder(tmp_path, capsys):
    broken = tmp_path / "run" / "checkpoints" / "step-00000001"
    broken.mkdir(parents=True)
    code, _, err = run_cli(["convert", "checkpoint", str(broken), "--out", str(tmp_path / "m")], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "not a complete nami training checkpoint" in lines[0], lines
    assert not (tmp_path / "m").exists()


@pytest.mark.slow
def test_compiled_training_matches_eager(shapes_data, tmp_path):
    """`--compile` (regional torch.compile, shape-generic after the first recompile) trains the same model."""
    common = ["--steps", "4", "--save-every", "4", "--ema-decay", "0", "--cfg-dropout", "0"]
    assert cli(train_args(shapes_data, tmp_path / "eager", *common)) == 0
    assert cli(train_args(shapes_data, tmp_path / "compiled", *common, "--compile")) == 0
    name = "diffusion_pytorch_model.safetensors"
    a = load_file(tmp_path / "eager" / "final" / "transformer" / name)
    b = load_file(tmp_path / "compiled" / "final" / "transformer" / name)
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=2e-4, rtol=2e-3)
