"""`nami train` and `nami convert checkpoint` under faults: damaged checkpoints, runs ending on
non-finite weights, two runs on one folder, settings that cannot work, a full disk. Each refusal is
one `error:` line, exit 2, and nothing written before is lost."""

import errno
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import prepare_train_data, run_cli, train_cli_args


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return prepare_train_data(tmp_path_factory.mktemp("faults"))


def train_args(root, out, *extra):
    return train_cli_args(root, out, *extra, batch_size=4, log_every=2)


def one_error(err: str) -> str:
    """The one error line of a run's stderr (its progress lines may come before it), no traceback."""
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and err.rstrip().endswith(errors[0]) and "Traceback" not in err, err
    return errors[0]


@pytest.fixture(scope="module")
def finished_run(root, tmp_path_factory):
    """A 4-step run with checkpoints at steps 2 and 4 (both kept)."""
    out = tmp_path_factory.mktemp("run") / "run"
    code, _, _ = run_cli(train_args(root, out, "--steps", "4", "--save-every", "2", "--keep", "0", "--ema-decay", "0.9"))
    assert code == 0
    return out


def copy_run(finished_run, tmp_path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    shutil.rmtree(run / "final")
    return run


def step_dir(run: Path, step: int) -> Path:
    return run / "checkpoints" / f"step-{step:08d}"


def truncate(path: Path, keep: int = 100) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:keep])


def overwrite_bytes(path: Path) -> None:
    """Flip 16 bytes in the middle of the tensor data, keeping the size (a silent corruption)."""
    data = bytearray(path.read_bytes())
    middle = len(data) - len(data) // 4
    data[middle:middle + 16] = bytes(255 - b for b in data[middle:middle + 16])
    path.write_bytes(bytes(data))


DAMAGE = {
    "truncated model": (lambda c: truncate(c / "model.safetensors"), "model.safetensors has 100 bytes"),
    "altered model bytes": (lambda c: overwrite_bytes(c / "model.safetensors"),
                            "model.safetensors does not match its checksum"),
    "missing model": (lambda c: (c / "model.safetensors").unlink(), "model.safetensors is missing"),
    "truncated optimizer": (lambda c: truncate(c / "optimizer.bin"), "optimizer.bin has 100 bytes"),
    "empty trainer state": (lambda c: (c / "trainer_state.json").write_text("{}"),
                            lambda c: f"trainer_state.json has 2 bytes, {written_bytes(c, 'trainer_state.json')} were written"),
}


def written_bytes(checkpoint: Path, name: str) -> int:
    """The size checksums.json recorded for `name` when the checkpoint was written: the trainer
    state's size follows the float values it holds, which differ between CPUs, so the expected
    size is read from the record, never written down here."""
    recorded = json.loads((checkpoint / "checksums.json").read_text())["files"][name]["bytes"]
    assert recorded == len((checkpoint / name).read_bytes())  # the record is the file as it was written
    return recorded


def damage_reason(kind: str, checkpoint: Path) -> tuple:
    """(damage, the reason the refusal must give), the reason read before the damage is done."""
    damage, reason = DAMAGE[kind]
    return damage, reason(checkpoint) if callable(reason) else reason


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_resume_latest_skips_a_damaged_checkpoint(finished_run, tmp_path, capsys, kind):
    run = copy_run(finished_run, tmp_path)
    damage, reason = damage_reason(kind, step_dir(run, 4))
    damage(step_dir(run, 4))
    code, _, err = run_cli([*train_args_for(run), "--steps", "5", "--resume", "latest"], capsys)
    assert code == 0, err
    notes = [line for line in err.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "skipped damaged checkpoint step-00000004" in notes[0] and reason in notes[0], notes
    assert f"resuming from {step_dir(run, 2)}" in notes[0]
    assert json.loads((step_dir(run, 5) / "trainer_state.json").read_text())["step"] == 5
    assert (run / "final").is_dir()


def train_args_for(run: Path) -> list[str]:
    """The arguments of the run in `finished_run` (its data and config are recorded in it)."""
    record = json.loads((run / "train_config.json").read_text())["train"]
    return ["train", "--data", record["data"], "--out", str(run), "--config", record["config_file"],
            "--stages", "16,32,64", "--batch-size", "4", "--lr", "1e-3", "--log-every", "2",
            "--save-every", "1", "--keep", "0", "--ema-decay", "0.9"]


@pytest.mark.parametrize("kind", ["truncated model", "altered model bytes", "truncated optimizer"])
def test_an_explicit_damaged_checkpoint_is_one_line(finished_run, tmp_path, capsys, kind):
    run = copy_run(finished_run, tmp_path)
    damage, reason = damage_reason(kind, step_dir(run, 4))
    damage(step_dir(run, 4))
    before = (run / "metrics.jsonl").read_text()
    code, _, err = run_cli([*train_args_for(run), "--steps", "6", "--resume", str(step_dir(run, 4))], capsys)
    line = one_error(err)
    assert code == 2 and reason in line and "step-00000004" in line, line
    assert (run / "metrics.jsonl").read_text() == before
    code, _, err = run_cli(["convert", "checkpoint", str(step_dir(run, 4)), "--out", str(tmp_path / "m")], capsys)
    line = one_error(err)
    assert code == 2 and reason in line, line
    assert not (tmp_path / "m").exists()


def test_resume_latest_with_every_checkpoint_damaged_is_one_line(finished_run, tmp_path, capsys):
    run = copy_run(finished_run, tmp_path)
    truncate(step_dir(run, 4) / "model.safetensors")
    truncate(step_dir(run, 2) / "optimizer.bin")
    code, _, err = run_cli([*train_args_for(run), "--steps", "6", "--resume", "latest"], capsys)
    line = one_error(err)
    assert code == 2 and "no intact checkpoint" in line and "step-00000004" in line and "model.safetensors" in line


def test_checkpoints_without_a_manifest_are_checked_by_structure(finished_run, tmp_path, capsys):
    """Checkpoints written before checksums.json existed: a truncated safetensors file is still found."""
    run = copy_run(finished_run, tmp_path)
    for step in (2, 4):
        (step_dir(run, step) / "checksums.json").unlink()
    model = step_dir(run, 4) / "model.safetensors"
    half = model.stat().st_size // 2
    truncate(model, keep=half)
    code, _, err = run_cli([*train_args_for(run), "--steps", "5", "--resume", "latest"], capsys)
    assert code == 0, err
    assert f"skipped damaged checkpoint step-00000004 (model.safetensors has {half} bytes, its header needs" in err


def test_a_run_ending_with_non_finite_weights_writes_no_final(root, tmp_path, capsys):
    """A huge learning rate makes the weights infinite after one step; the rest are skipped."""
    out = tmp_path / "inf"
    code, _, err = run_cli(train_args(root, out, "--steps", "4", "--lr", "1e38", "--grad-clip", "1e30",
                                      "--save-every", "2"), capsys)
    line = one_error(err)
    assert code == 2 and "training ended at step 4 with non-finite weights" in line, line
    assert "final was not written" in line and "3 non-finite steps were skipped" in line
    assert not (out / "final").exists() and not (out / ".lock").exists()
    records = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == 4 and records[-1]["nan_skipped"] == 3


def test_a_time_budget_stop_between_log_steps_writes_its_metrics(root, tmp_path, capsys):
    out = tmp_path / "budget"
    code, _, err = run_cli(train_args(root, out, "--steps", "100000", "--log-every", "1000", "--time-budget", "0.001"),
                           capsys)
    assert code == 0, err
    records = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]
    saved = json.loads(next((out / "checkpoints").iterdir()).joinpath("trainer_state.json").read_text())["step"]
    assert len(records) == 1 and records[0]["step"] == saved < 1000


def write_lock(run: Path, pid: int, host: str) -> None:
    run.mkdir(parents=True, exist_ok=True)
    (run / ".lock").write_text(json.dumps({"pid": pid, "host": host, "since": "2026-01-01T00:00:00"}))


def test_a_run_folder_in_use_is_refused_and_left_alone(finished_run, tmp_path, capsys):
    run = copy_run(finished_run, tmp_path)
    write_lock(run, os.getpid(), socket.gethostname())  # this very process: alive
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    code, _, err = run_cli([*train_args_for(run), "--steps", "6", "--resume", "latest"], capsys)
    line = one_error(err)
    assert code == 2 and f"is in use by another nami train (pid {os.getpid()} on {socket.gethostname()}" in line
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_a_lock_from_another_host_is_never_taken_over(tmp_path, root, capsys):
    out = tmp_path / "run"
    write_lock(out, 1, "some-other-host")
    code, _, err = run_cli(train_args(root, out, "--steps", "1"), capsys)
    assert code == 2 and "pid 1 on some-other-host" in one_error(err)
    assert sorted(p.name for p in out.iterdir()) == [".lock"]


def test_a_stale_lock_is_taken_over_with_a_note(root, tmp_path, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "run"
    write_lock(out, dead.pid, socket.gethostname())
    code, _, err = run_cli(train_args(root, out, "--steps", "2"), capsys)
    assert code == 0, err
    assert f"note: taking over {out / '.lock'}: the run that held it (pid {dead.pid} on" in err
    assert (out / "final").is_dir() and not (out / ".lock").exists()


def test_two_runs_started_on_one_folder(root, tmp_path, capsys):
    """The second run is refused while the first trains; the first finishes untouched."""
    out = tmp_path / "shared"
    args = train_args(root, out, "--steps", "200", "--save-every", "50")
    first = subprocess.Popen([sys.executable, "-m", "nami_cli.main", *args[:]], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / "metrics.jsonl").exists() and first.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    code, _, err = run_cli(train_args(root, out, "--steps", "2"), capsys)
    assert code == 2 and f"(pid {first.pid} on" in one_error(err)
    _, first_err = first.communicate(timeout=600)
    assert first.returncode == 0, first_err
    records = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(2, 201, 2))
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [f"step-{s:08d}" for s in (100, 150, 200)]


def test_settings_are_checked_before_any_step(root, tmp_path, capsys, monkeypatch):
    """--sample-steps is used only when the model is written, at the end: it is checked first."""
    out = tmp_path / "early"
    started = time.monotonic()
    code, _, err = run_cli(train_args(root, out, "--steps", "1000", "--sample-steps", "1,2"), capsys)
    line = one_error(err)
    assert code == 2 and "--sample-steps lists 2 values for 3 stages; give one, or one per stage" in line
    assert time.monotonic() - started < 30 and not out.exists()


def test_a_batch_that_cannot_fit_is_refused_with_the_estimate(root, tmp_path, capsys, monkeypatch):
    from nami_core.train import memory_guard

    monkeypatch.setattr(memory_guard, "available_bytes", lambda device: (4 << 30, 0))
    out = tmp_path / "huge"
    code, _, err = run_cli(train_args(root, out, "--steps", "2", "--batch-size", "100000"), capsys)
    line = one_error(err)
    assert code == 2 and "--batch-size 100000 needs about" in line and "but cpu has 4.0 GiB available" in line
    needed = float(line.split("needs about ")[1].split(" GiB")[0].replace(",", ""))
    assert needed > 4.0 and not out.exists()
    code, _, err = run_cli(train_args(root, tmp_path / "small", "--steps", "1"), capsys)
    assert code == 0, err  # the same limit lets a batch of 4 through


EXISTING = "EXISTING_FILE"


@pytest.mark.parametrize(
    "change,message",
    [
        ({"--stage-mix": "0:nan:1:1"}, "--stage-mix: phase '0:nan:1:1' holds a value that is not a finite number"),
        ({"--stage-mix": "0:inf:1:1"}, "--stage-mix: phase '0:inf:1:1' holds a value that is not a finite number"),
        ({"--stage-mix": ""}, "--stage-mix is empty; leave it out for the default"),
        ({"--lr": "nan"}, "Invalid value for --lr: nan is not a finite number"),
        ({"--lr": None, "--lr-schedule": "0:nan"},  # the base --lr left out: the two say one thing
         "--lr-schedule: phase '0:nan' holds a value that is not a finite number"),
        ({"--stage-loss-weights": "nan,1,1"}, "--stage-loss-weights must hold finite numbers, got 'nan,1,1'"),
        ({"--grad-clip": "nan"}, "Invalid value for --grad-clip: nan is not a finite number"),
        ({"--grad-clip": "0"}, "--grad-clip must be a positive gradient norm (0 would zero every update), got 0"),
        ({"--patch-size": "0"}, "--patch-size must be at least 1, got 0"),
        ({"--max-nan-steps": "-1"}, "--max-nan-steps must be 0 or more, got -1"),
        ({"--time-budget": "nan"}, "Invalid value for --time-budget: nan is not a finite number"),
        ({"--time-budget": "0"}, "--time-budget must be a positive number of minutes, got 0"),
        ({"--seed": "-1"}, "--seed"),
        ({"--out": EXISTING}, "is a file, expected a folder"),
    ],
)
def test_bad_values_are_refused_before_anything_is_written(root, tmp_path, capsys, change, message):
    existing = tmp_path / EXISTING
    existing.write_text("keep me")
    out = tmp_path / "run"
    args = train_args(root, out, "--steps", "2")
    for flag, value in change.items():
        value = str(existing) if value == EXISTING else value
        if value is None:
            del args[args.index(flag):args.index(flag) + 2]
        elif flag in args:
            args[args.index(flag) + 1] = value
        else:
            args += [flag, value]
    code, _, err = run_cli(args, capsys)
    line = one_error(err)
    assert code == 2 and message in line, line
    assert existing.read_text() == "keep me" and not out.exists()


def test_no_preset_or_config_says_it_trains_tiny(root, tmp_path, capsys):
    args = train_args(root, tmp_path / "tiny", "--steps", "1", "--batch-size", "2")
    i = args.index("--config")
    del args[i:i + 2]
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    assert "note: no --preset, --config or --model given: training the `tiny` preset" in err


def test_convert_checkpoint_does_not_replace_a_file(finished_run, tmp_path, capsys):
    target = tmp_path / "model"
    target.write_text("a file")
    code, _, err = run_cli(["convert", "checkpoint", str(step_dir(finished_run, 4)), "--out", str(target)], capsys)
    assert code == 2 and f"--out {target} is a file, expected a folder" in one_error(err)
    assert target.read_text() == "a file"


def test_a_full_disk_during_a_checkpoint_keeps_the_earlier_ones(root, tmp_path, capsys, monkeypatch):
    from accelerate import Accelerator

    out = tmp_path / "full"
    save_state = Accelerator.save_state

    def fill_up_at_step_4(self, output_dir, **kwargs):
        if "00000004" in str(output_dir):
            Path(output_dir, "model.safetensors").write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return save_state(self, output_dir, **kwargs)

    monkeypatch.setattr(Accelerator, "save_state", fill_up_at_step_4)
    code, _, err = run_cli(train_args(root, out, "--steps", "4", "--save-every", "2", "--keep", "0"), capsys)
    line = one_error(err)
    assert code == 2 and f"no space left on device writing {step_dir(out, 4)}" in line
    assert "it needs" in line and "(files written before are intact)" in line
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-00000002"]
    state = load_file(step_dir(out, 2) / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in state.values())
    assert not (out / ".lock").exists()
