"""Beyond one machine: `accelerate launch --num_machines 2 --machine_rank R --main_process_ip ...`
as the README gives it, with two "machines" on localhost (one process each, gloo), trains and
checkpoints; the run then resumes on one machine."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import prepare_train_data, run_cli, train_cli_args


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(machine_rank: int, port: int, args: list[str]) -> subprocess.Popen:
    """`accelerate launch` of `nami ARGS` as machine `machine_rank` of 2, one process each."""
    accelerate = Path(sys.executable).with_name("accelerate")
    nami = Path(sys.executable).with_name("nami")
    if not accelerate.exists() or not nami.exists():
        pytest.skip("accelerate or the nami script is not installed")
    command = [str(accelerate), "launch", "--multi_gpu", "--num_machines", "2", "--num_processes", "2",
               "--machine_rank", str(machine_rank), "--main_process_ip", "127.0.0.1", "--main_process_port",
               str(port), "--mixed_precision", "no", "--dynamo_backend", "no", str(nami), *args]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.slow  # about 60 s on 2 busy cores: three Python processes per "machine" import torch
def test_two_machines_train_and_checkpoint_then_one_resumes(tmp_path, capsys):
    root = prepare_train_data(tmp_path)
    out = tmp_path / "run"
    args = train_cli_args(root, out, "--steps", "4", "--save-every", "2", "--keep", "0",
                          "--gradient-accumulation-steps", "2", batch_size=2, log_every=2)
    port = free_port()
    machines = [launch(rank, port, args) for rank in (0, 1)]
    results = [m.communicate(timeout=600) for m in machines]
    for machine, (_, err) in zip(machines, results):
        assert machine.returncode == 0, err[-3000:]
    assert json.loads((out / "train_config.json").read_text())["world_size"] == 2
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000002", "step-00000004"]
    assert sorted(p.name for p in (out / "checkpoints" / "step-00000004").glob("random_states_*")) == [
        "random_states_0.pkl", "random_states_1.pkl"]  # each machine's process saved its own
    code, _, err = run_cli(train_cli_args(root, out, "--steps", "6", "--resume", "latest", batch_size=2,
                                          log_every=2), capsys)
    assert code == 0, err
    assert "resuming" not in err or "step-00000004" in err
    state = json.loads((out / "checkpoints" / "step-00000006" / "trainer_state.json").read_text())
    assert state["step"] == 6 and json.loads((out / "train_config.json").read_text())["world_size"] == 1
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [2, 4, 6]


# The launch environment (`torchrun` / `accelerate launch` variables, accelerate's own ACCELERATE_*)
# read by hand, one error line naming the variable, before accelerate parses it.
LAUNCH_ENVIRONMENTS = [({"RANK": "abc"}, "the environment variable RANK='abc' must be an integer of at least 0"),
                       ({"WORLD_SIZE": "0"}, "WORLD_SIZE='0' must be an integer of at least 1"),
                       ({"LOCAL_RANK": "-1"}, "LOCAL_RANK='-1' must be an integer of at least 0"),
                       ({"LOCAL_WORLD_SIZE": "two"}, "LOCAL_WORLD_SIZE='two' must be an integer"),
                       ({"ACCELERATE_GRADIENT_ACCUMULATION_STEPS": "x"},
                        "accelerate cannot start: invalid literal for int() with base 10: 'x' (its settings from the "
                        "environment: ACCELERATE_GRADIENT_ACCUMULATION_STEPS=x")]


@pytest.mark.parametrize("env, message", LAUNCH_ENVIRONMENTS, ids=lambda x: "-".join(x) if isinstance(x, dict) else "")
def test_a_launch_environment_that_is_no_number_is_one_error(monkeypatch, env, message):
    from nami_core.errors import NamiError
    from nami_core.train.loop import start_accelerator

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(NamiError, match=re.escape(message)):
        start_accelerator({"cpu": True})
